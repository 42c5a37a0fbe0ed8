"""The job API of a ModelDeployment end to end on the local cluster: Redis (Debian's redis-server, a
process on the node's bridge address, which the pods reach as they would a Redis Service), its URL
in a Secret, a batch of images submitted through the Service, and the pod holding the job killed
mid-job: another pod takes the job over and every image gets exactly one result."""

from __future__ import annotations

import base64
import json

import pytest
import redis
import requests

from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import (
    NODE_IP,
    OperatorProcess,
    kill_pod,
    kubectl,
    status,
    wait_until,
)
from tests.support.serving import export_model, image_bytes, redis_server
from tests.support.workloads import artifacts_on_host, served_model

pytestmark = pytest.mark.localnode

IMAGES = 1500


def service_url(namespace: str, name: str) -> str:
    ip = kubectl("-n", namespace, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    return f"http://{ip}"  # the Service's port 80 (the pods listen on 8080)


@pytest.mark.slow
def test_a_job_survives_the_death_of_the_pod_running_it(operator, custom, namespace, tmp_path):
    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    with redis_server(tmp_path, host=NODE_IP) as url:
        kubectl("-n", namespace, "create", "secret", "generic", "queue", f"--from-literal=url={url}")
        operator.stop()
        allowing = OperatorProcess(operator.kubeconfig, MODELOPS_WORKLOAD_SECRETS="queue")
        try:
            allowing.start()
            body = served_model(
                "digits",
                store,
                model,
                server={"maxBatchSize": 1},  # one image per model run: the job takes long enough to catch mid-way
                autoscaling={"minReplicas": 2, "maxReplicas": 2},
                jobs={"redisSecretRef": {"name": "queue"}, "claimIdleSeconds": 2},
            )
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
            wait_until(
                "two ready server pods",
                lambda: status(custom, namespace, "modeldeployments", "digits").get("readyReplicas") == 2,
                timeout=240,
            )
            base = service_url(namespace, "digits")
            images = [base64.b64encode(image_bytes(i, size=16)).decode() for i in range(IMAGES)]
            reply = wait_until(
                "a job accepted through the Service",
                lambda: _submit(base, images),
                timeout=60,
            )
            job_id = reply["id"]
            assert reply["total"] == IMAGES

            # Catch the job half done, find the pod whose consumer holds it, and kill that pod.
            queue = redis.Redis.from_url(url)
            key = f"modelops:job:{job_id}"
            wait_until("the job started", lambda: queue.hlen(f"{key}:results") > 0, timeout=60, interval=0.01)
            stream = f"modelops:jobs:{namespace}/digits"
            (pending,) = queue.xpending_range(stream, "modelops-consumers", "-", "+", 10)
            holder = pending["consumer"].decode().rsplit("-", 1)[0]  # <pod name>-<slot>
            done_before = queue.hlen(f"{key}:results")
            assert done_before < IMAGES, "the job ended before it could be interrupted"
            assert kill_pod(namespace, holder) > 0

            # Another pod claims the job once it has been idle for claimIdleSeconds, and finishes it.
            job = wait_until(
                "the job completed by another pod",
                lambda: _finished(base, job_id),
                timeout=180,
            )
            assert job["status"] == "completed", job
            assert job["runs"] == 2, job  # started by the killed pod, taken over once
            indices = [r["index"] for r in job["results"]]
            assert sorted(indices) == list(range(IMAGES))  # every image, each exactly once
            assert all("error" not in r for r in job["results"]), [r for r in job["results"] if "error" in r][:3]
            # The job's answers are the synchronous API's for the same images.
            for index in (0, done_before, IMAGES - 1):
                sync = requests.post(
                    f"{base}/v1/models/digits:classify?top_k=1",
                    files={"file": ("x.png", base64.b64decode(images[index]), "image/png")},
                    timeout=10,
                ).json()
                assert job["results"][index]["predictions"][0]["label"] == sync["predictions"][0]["label"]
            assert queue.xlen(stream) == 0  # acknowledged and deleted: nothing left to redo
            assert holder not in _pods(namespace)
        finally:
            allowing.stop()
            operator.start()


def _submit(base: str, images: list[str]) -> dict[str, object] | None:
    try:
        r = requests.post(f"{base}/v1/jobs", json={"images": images, "topK": 1}, timeout=30)
    except requests.ConnectionError:  # the Service's rules reach kube-proxy a moment after Ready
        return None
    assert r.status_code == 202, r.text
    return dict(r.json())


def _finished(base: str, job_id: str) -> dict[str, object] | None:
    try:
        r = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10)
    except requests.ConnectionError:
        return None
    job = dict(r.json())
    return job if job.get("status") in ("completed", "failed") else None


def _pods(namespace: str) -> list[str]:
    out = kubectl("-n", namespace, "get", "pods", "-l", "modelops.dev/modeldeployment=digits", "-o", "json").stdout
    return [p["metadata"]["name"] for p in json.loads(out)["items"]]
