"""What the cluster tests and benchmarks put on the local cluster: restricted pods and Jobs on the
real node, the artifact volume seeded with scikit-learn's digits, a Dataset and a TrainingRun that
run there, the ModelDeployment analysis the tests use, and a load generator on a Service's ready
endpoints.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import (
    ARTIFACT_PVC,
    ARTIFACTS,
    ON_LOCAL_NODE,
    VOLUMES,
    apply,
    endpoint_addresses,
    get,
    images,
    kubectl,
    status,
    wait_until,
)
from tests.support.objects import dataset, search, training_run
from tests.support.serving import image_bytes

#: Pod Security's restricted profile, field by field, as the test namespaces enforce it.
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_template(
    name: str, command: list[str], restart: str = "Never", image: str = "server", **container: Any
) -> dict[str, Any]:
    """A restricted pod on the real node running one of the project's images (`server`: Python
    with prometheus-client; `trainer`: PyTorch)."""
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            **ON_LOCAL_NODE,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "main",
                    "image": images()[image],
                    "command": command,
                    "securityContext": RESTRICTED_CONTAINER,
                    **container,
                }
            ],
        },
    }


def job(
    name: str, script: str, backoff: int = 0, volumes: list[dict[str, Any]] | None = None, **container: Any
) -> dict[str, Any]:
    """A Job of one restricted pod on the real node running `python -c script`."""
    template = pod_template(name, ["python", "-c", script], **container)
    if volumes:
        template["spec"]["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": template},
    }


def job_condition(namespace: str, name: str) -> str | None:
    """`Complete` or `Failed` once the Job has finished, else None."""
    for cond in get(namespace, "job", name).get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


#: The artifact PVC as a pod's volume and mount.
ARTIFACT_VOLUME = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": ARTIFACT_PVC}}]
ARTIFACT_MOUNT = [{"name": "artifacts", "mountPath": ARTIFACTS}]


def artifact_pvc(namespace: str) -> None:
    """The artifact PVC the operator mounts (its `MODELOPS_ARTIFACT_PVC`), as a user creates it."""
    apply(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": ARTIFACT_PVC},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def seed_digits(namespace: str) -> None:
    """The artifact PVC with scikit-learn's digits on it, written by a Job as a user would."""
    artifact_pvc(namespace)
    seed = job(
        "seed",
        "from modelops_trainer.prepare.samples import write_digits; from pathlib import Path; "
        f"write_digits(Path('{ARTIFACTS}/sources/digits'))",
        volumes=ARTIFACT_VOLUME,
        volumeMounts=ARTIFACT_MOUNT,
        image="trainer",
    )
    apply(namespace, seed)
    assert wait_until("the seed Job", lambda: job_condition(namespace, "seed"), timeout=120) == "Complete"


def local_dataset(name: str, source: str = f"file://{ARTIFACTS}/sources/digits") -> dict[str, Any]:
    """A small Dataset (16-pixel PNGs) prepared on the real node from the seeded digits."""
    return (
        dataset(name)
        .set("spec.sources.0.uri", source)
        .set("spec.placement", ON_LOCAL_NODE)
        .set("spec.cleaning", {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 0})
        .set("spec.preprocessing", {"imageSize": 16, "format": "png"})
        .obj()
    )


def ready_digits(custom: Any, namespace: str) -> None:
    """The digits seeded and a Dataset `digits` of them prepared on the real node (Ready)."""
    seed_digits(namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", local_dataset("digits"))

    def ready() -> bool:
        st = status(custom, namespace, "datasets", "digits")
        assert st.get("phase") != "Failed", st
        return st.get("phase") == "Ready"

    wait_until("the Dataset to be Ready", ready, timeout=240)


def small_run(name: str, **search_fields: Any) -> dict[str, Any]:
    """A short TrainingRun of the `digits` Dataset on the real node; a search when fields are given."""
    builder = (
        training_run(name, "digits")
        # fp32: `auto` may time bf16 against fp32 at start-up and choose either
        .set(
            "spec.hyperparameters",
            {"epochs": 2, "batchSize": 64, "learningRate": 0.002, "warmupEpochs": 0, "mixedPrecision": "off"},
        )
        .set("spec.workers", {"nodes": 1, "placement": ON_LOCAL_NODE})
    )
    if search_fields:
        builder = builder.set("spec.search", search(**search_fields))
    return builder.obj()


def settled(custom: Any, namespace: str, name: str) -> str | None:
    """The TrainingRun's phase once it is Succeeded or Failed, else None."""
    phase = status(custom, namespace, "trainingruns", name).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def run_jobs(namespace: str, run: str) -> list[dict[str, Any]]:
    """The PyTorchJobs of one TrainingRun, as `kubectl get -o json` lists them."""
    out = kubectl("-n", namespace, "get", "pytorchjobs", "-l", f"modelops.dev/trainingrun={run}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def host_path(namespace: str, uri: str) -> Path:
    """Where a file:// URI under the artifact PVC lives on this machine (the provisioner's volume)."""
    assert uri.startswith(f"file://{ARTIFACTS}/"), uri
    return VOLUMES / namespace / ARTIFACT_PVC / uri[len(f"file://{ARTIFACTS}/") :]


#: Two measurements 15 s apart of the error rate (at most 5%) and p99 latency (at most 5 s).
ANALYSIS = {
    "interval": "15s",
    "count": 2,
    "failureLimit": 0,
    "inconclusiveLimit": 4,
    "metrics": [
        {"name": "errorRate", "template": "errorRate", "max": 0.05},
        {"name": "latencyP99", "template": "latencyP99", "max": 5.0},
    ],
}


def artifacts_on_host(namespace: str) -> Path:
    """The artifact PVC, and where the local provisioner keeps its files on this machine."""
    artifact_pvc(namespace)
    path = VOLUMES / namespace / ARTIFACT_PVC
    wait_until("the artifact volume", path.is_dir, timeout=60)
    return path


class Load:
    """Requests to the ready endpoints of the Service, one at a time from each of `clients` threads
    with `pause` seconds between a thread's requests; each answer is attributed to the model version
    that gave it (or to the endpoint's track on errors). More clients with no pause keep more
    requests in flight at once (what an in-flight autoscaler scales on)."""

    def __init__(self, namespace: str, name: str, clients: int = 3, pause: float = 0.05) -> None:
        self.namespace, self.name = namespace, name
        self.pause = pause
        self.stop = threading.Event()
        self.results: list[tuple[str, int, str]] = []  # (pod IP, status, model version or "")
        self.latencies: list[float] = []  # seconds, of answered requests (any status)
        self.endpoints: list[str] = []
        self.threads = [threading.Thread(target=self.refresh, daemon=True)]
        self.threads += [threading.Thread(target=self.send, args=(i,), daemon=True) for i in range(clients)]

    def refresh(self) -> None:
        while not self.stop.is_set():
            try:
                self.endpoints = endpoint_addresses(self.namespace, self.name)
            except (subprocess.CalledProcessError, ValueError):  # the API server busy: none for now
                self.endpoints = []
            time.sleep(1)

    def send(self, seed: int) -> None:
        rng = random.Random(seed)
        image = image_bytes(seed)
        while not self.stop.is_set():
            if not self.endpoints:
                time.sleep(0.2)
                continue
            ip = rng.choice(self.endpoints)
            try:
                sent = time.perf_counter()
                r = requests.post(
                    f"http://{ip}:8080/v1/models/{self.name}:classify",
                    files={"file": ("x.png", image, "image/png")},
                    timeout=10,
                )
                self.latencies.append(time.perf_counter() - sent)
                version = r.json().get("model_version", "") if r.status_code == 200 else ""
                self.results.append((ip, r.status_code, version))
            except (requests.RequestException, ValueError):
                self.results.append((ip, 0, ""))
            time.sleep(self.pause)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def served_model(
    name: str, store: Path, model: Any, *, server: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A ModelDeployment serving `model` (an ExportedModel written under the artifact volume `store`)
    from the real node, with small requests; `server` adds to or overrides `spec.server`, the other
    keywords are further `spec` fields."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{ARTIFACTS}/{model.path.relative_to(store)}", "digest": model.digest},
            "server": {
                "placement": ON_LOCAL_NODE,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                **(server or {}),
            },
            **spec,
        },
    }
