"""The TrainJob backend end to end: Kubeflow Trainer v2 and JobSet run by the local cluster, the
chart's ClusterTrainingRuntime, and the same two-pod trial trained for real on both backends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.settings import OperatorSettings
from tests.support.cluster import (
    KUBE_VERSION,
    ON_LOCAL_NODE,
    OPERATOR_RELEASE,
    REPO,
    helm,
    images,
    kubectl,
    ready_reason,
    status,
    wait_until,
)
from tests.support.workloads import host_path, settled, small_run

pytestmark = pytest.mark.localnode

RUNTIME = OperatorSettings().training_runtime


@pytest.fixture(scope="module")
def runtime(cluster: Any) -> Iterator[str]:
    """The chart's ClusterTrainingRuntime, rendered as on a cluster that serves Trainer v2."""
    rendered = helm(
        "template", OPERATOR_RELEASE, str(REPO / "charts" / "modelops"), "--kube-version", KUBE_VERSION,
        "--api-versions", "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime",
        "--set", f"settings.trainerImage={images()['trainer']}",
        "--show-only", "templates/clustertrainingruntime.yaml",
    ).stdout  # fmt: skip
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelops-tests", "-f", "-", stdin=rendered)
    yield RUNTIME
    # Not waited for: Trainer holds it with a finalizer while TrainJobs name it (the module's
    # namespace, deleted after this, holds some).
    kubectl("delete", "clustertrainingruntime", RUNTIME, "--ignore-not-found", "--wait=false", check=False)


def pair(name: str, backend: str) -> dict[str, Any]:
    """A one-epoch run of a master and a worker on the real node."""
    body = small_run(name)
    body["spec"]["workers"] = {"nodes": 2, "placement": ON_LOCAL_NODE, "backend": backend}
    body["spec"]["hyperparameters"]["epochs"] = 1
    return body


def jobs(namespace: str, kind: str, run: str) -> list[dict[str, Any]]:
    out = kubectl("-n", namespace, "get", kind, "-l", f"modelops.dev/trainingrun={run}", "-o", "json").stdout
    return list(json.loads(out)["items"])


@pytest.mark.slow
def test_the_same_two_pod_trial_trains_the_same_epochs_on_both_backends(operator, custom, digits, runtime):
    """One master and one worker that train together over the pod network (gloo), under the
    restricted profile: as a PyTorchJob of the training operator (the worker's init container
    included) and as a TrainJob of Trainer v2 (a JobSet of two indexed pods). The trainer trains
    deterministically, so both give the same per-epoch objective, and both register a model."""
    namespace = digits
    for name, backend in (("pair-v1", "PyTorchJob"), ("pair-v2", "TrainJob")):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", pair(name, backend))

    def both() -> list[str] | None:
        phases = [settled(custom, namespace, n) for n in ("pair-v1", "pair-v2")]
        return phases if all(phases) else None

    assert wait_until("both runs", both, timeout=1500, interval=3) == ["Succeeded", "Succeeded"], [
        status(custom, namespace, "trainingruns", n) for n in ("pair-v1", "pair-v2")
    ]
    v1, v2 = (status(custom, namespace, "trainingruns", n) for n in ("pair-v1", "pair-v2"))
    (t1,), (t2,) = v1["trials"], v2["trials"]
    assert len(t1["history"]) == 1 and t1["history"] == t2["history"], (t1, t2)
    assert t1["objective"] == t2["objective"]

    # Each backend made its own kind of job, and only that.
    assert [j["metadata"]["name"] for j in jobs(namespace, "pytorchjobs", "pair-v1")] == ["pair-v1-r1-t0"]
    assert jobs(namespace, "trainjobs", "pair-v1") == [] and jobs(namespace, "pytorchjobs", "pair-v2") == []
    (trainjob,) = jobs(namespace, "trainjobs", "pair-v2")
    done = {x["type"]: x["status"] for x in trainjob["status"]["conditions"]}
    assert done.get("Complete") == "True", trainjob["status"]
    assert trainjob["spec"]["runtimeRef"]["name"] == runtime

    # Trainer v2 ran it as two indexed pods of a JobSet, on the real node, both exiting 0.
    out = kubectl("-n", namespace, "get", "pods", "-l", "jobset.sigs.k8s.io/jobset-name=pair-v2-r1-t0", "-o", "json")
    pods = json.loads(out.stdout)["items"]
    ranks = sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert ranks == ["0", "1"], ranks
    assert {p["spec"]["nodeName"] for p in pods} == {"local-0"}
    for p in pods:
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    # The training operator ran the PyTorchJob as a master and a worker pod, on the real node, with
    # two addresses; the worker waited for the master in the training operator's init container.
    out = kubectl("-n", namespace, "get", "pods", "-l", "training.kubeflow.org/job-name=pair-v1-r1-t0", "-o", "json")
    pods = json.loads(out.stdout)["items"]
    roles = sorted(p["metadata"]["labels"]["training.kubeflow.org/replica-type"] for p in pods)
    assert roles == ["master", "worker"], roles
    assert {p["spec"]["nodeName"] for p in pods} == {"local-0"}
    assert len({p["status"]["podIP"] for p in pods}) == 2  # two network namespaces, two addresses
    for p in pods:
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    worker = next(p for p in pods if p["metadata"]["labels"]["training.kubeflow.org/replica-type"] == "worker")
    (init,) = worker["status"]["initContainerStatuses"]  # the training operator's init-pytorch, admitted
    assert init["name"] == "init-pytorch" and init["state"]["terminated"]["exitCode"] == 0

    # Each trial's model is registered, and the file is the one its digest names.
    for st, trial in ((v1, "pair-v1-r1-t0"), (v2, "pair-v2-r1-t0")):
        assert st["model"]["version"] == 1 and st["model"]["trial"] == trial
        onnx = host_path(namespace, st["model"]["uri"])
        assert "sha256:" + hashlib.sha256(onnx.read_bytes()).hexdigest() == st["model"]["digest"]


def test_a_trainjob_run_naming_a_runtime_that_does_not_exist_says_so_and_creates_nothing(operator, custom, digits):
    namespace = digits
    body = pair("lost", "TrainJob")
    body["spec"]["workers"]["runtimeRef"] = {"name": "no-such-runtime"}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)
    said = wait_until("RuntimeNotFound", lambda: ready_reason(custom, namespace, "trainingruns", "lost"), timeout=120)
    ready = next(x for x in status(custom, namespace, "trainingruns", "lost")["conditions"] if x["type"] == c.READY)
    assert said == ("False", c.RUNTIME_NOT_FOUND), ready
    assert "ClusterTrainingRuntime no-such-runtime does not exist" in ready["message"]
    assert jobs(namespace, "trainjobs", "lost") == []
