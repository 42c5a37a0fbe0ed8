"""Kubeflow Trainer v2 on the local cluster (hack/cluster.py runs it and JobSet as host processes):
a TrainJob runs for real on the real node, with no modelops operator involved.

- A TrainJob of two nodes on a ClusterTrainingRuntime of the test's own (the trainer image, the
  restricted Pod Security profile, the real node's pool and taint) runs as a JobSet: both pods
  succeed, each rank's gloo all_reduce gives the sum of both ranks' values, and the TrainJob is
  Complete.
- A TrainJob naming a runtime that does not exist is refused by Trainer's validating webhook: the
  API server reaches the webhook server on the node through its selector-less Service.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from modelops_operator.builders.common import restricted_container_security, restricted_pod_security
from tests.support.cluster import ON_LOCAL_NODE, images, kubectl, wait_until

pytestmark = pytest.mark.localnode

API = "trainer.kubeflow.org/v1alpha1"
#: Each rank all-reduces rank + 1 over gloo and logs the sum: with two ranks, 1 + 2.
ALL_REDUCE = """
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank} of {world}: sum {int(value.item())}", flush=True)
dist.destroy_process_group()
"""
SUM = re.compile(r"^rank (\d+) of (\d+): sum (\d+)$", re.MULTILINE)


def create(doc: dict[str, Any]) -> None:
    kubectl("create", "-f", "-", stdin=json.dumps(doc))


@pytest.fixture(scope="module")
def trainer_platform(cluster: Any) -> None:
    """Trainer v2 runs (a cluster started before it was added has not its API)."""
    found = kubectl("get", "crd", "trainjobs.trainer.kubeflow.org", "jobsets.jobset.x-k8s.io", check=False)
    if found.returncode != 0:
        pytest.fail(
            f"Trainer v2 is not set up on this cluster ({found.stderr.strip()}): run `hack/cluster.py down`, then `up`",
            pytrace=False,
        )


@pytest.fixture
def runtime(trainer_platform: None) -> Iterator[str]:
    """A torch ClusterTrainingRuntime of this test's: one node of one process, the replicated job
    and its container both `node` (where Trainer's torch plugin puts its PET_* variables), the
    trainer image under the restricted profile, on the real node."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    container = {
        "name": "node",
        "image": images()["trainer"],
        "securityContext": restricted_container_security(),
        # torchrun and torch write their scratch files under /tmp; the root filesystem is read-only.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    }
    create(
        {
            "apiVersion": API,
            "kind": "ClusterTrainingRuntime",
            "metadata": {"name": name},
            "spec": {
                "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": 1}},
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                    "spec": {
                                        "template": {
                                            "spec": {
                                                **ON_LOCAL_NODE,
                                                "securityContext": restricted_pod_security(),
                                                # A failure fails the pod (JobSet defaults to OnFailure).
                                                "restartPolicy": "Never",
                                                "containers": [container],
                                                "volumes": [{"name": "tmp", "emptyDir": {}}],
                                            }
                                        }
                                    },
                                },
                            }
                        ]
                    }
                },
            },
        }
    )
    yield name
    kubectl("delete", "clustertrainingruntimes.trainer.kubeflow.org", name, "--wait=false", check=False)


def trainjob(name: str, runtime: str, **trainer: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": trainer,
        },
    }


def _get(namespace: str, *args: str) -> Any:
    return json.loads(kubectl("-n", namespace, "get", *args, "-o", "json").stdout)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_a_trainjob_of_two_nodes_all_reduces_over_gloo_on_the_real_node(namespace, runtime):
    name = "allreduce"
    command = ["python", "-m", "torch.distributed.run", "--no-python", "python", "-c", ALL_REDUCE]
    doc = trainjob(name, runtime, numNodes=2, command=command)
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(doc))
    selector = f"jobset.sigs.k8s.io/jobset-name={name}"

    def pods_done() -> list[dict[str, Any]] | None:
        pods = _get(namespace, "pods", "-l", selector)["items"]
        failed = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Failed"]
        assert not failed, f"failed pods {failed}: {_logs(namespace, selector)}"
        done = [p for p in pods if p["status"].get("phase") == "Succeeded"]
        return done if len(done) == 2 else None

    pods = wait_until("both pods of the TrainJob to succeed", pods_done, timeout=300, interval=1)
    assert {p["spec"]["nodeName"] for p in pods} == {"local-0"}
    sums = {}
    for pod in pods:
        log = kubectl("-n", namespace, "logs", pod["metadata"]["name"], "-c", "node").stdout
        (found,) = SUM.findall(log)
        rank, world, total = map(int, found)
        sums[rank] = (world, total)
    assert sums == {0: (2, 3), 1: (2, 3)}  # each rank saw 1 + 2
    complete = wait_until(
        "the TrainJob Complete", lambda: _condition(_get(namespace, "trainjobs", name), "Complete"), timeout=60
    )
    assert complete["status"] == "True", complete
    jobset = _get(namespace, "jobsets.jobset.x-k8s.io", name)
    assert [r["name"] for r in jobset["spec"]["replicatedJobs"]] == ["node"]


def _logs(namespace: str, selector: str) -> str:
    return kubectl("-n", namespace, "logs", "-l", selector, "-c", "node", "--tail=40", check=False).stdout


def test_a_trainjob_naming_a_runtime_that_does_not_exist_is_refused_by_trainers_webhook(namespace, trainer_platform):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    doc = trainjob("orphan", missing, numNodes=1)
    refused = kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(doc), check=False)
    assert refused.returncode != 0
    assert 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request' in refused.stderr
    assert "must be created before the TrainJob is created" in refused.stderr
    assert kubectl("-n", namespace, "get", "trainjobs", "orphan", check=False).returncode != 0
