"""Evicted pods in the status of every kind (`reconcile/pods.py`), without a cluster: the pods are
shaped as the kubelet leaves them (phase Failed, reason Evicted, its message, its conditions'
times). `tests/e2e/test_evictions.py` has the kubelet evict real ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.reconcile.dataset import DatasetObserved
from modelops_operator.reconcile.pods import EVICTION_WINDOW, eviction, pod_problem
from modelops_operator.reconcile.trainingrun import TrialObservation
from tests.operator.test_dataset import job_for, obj, ready, run
from tests.operator.test_trainingrun import Sim

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
STORAGE = "Pod ephemeral local storage usage exceeds the total limit of containers 1Ki. "
NODE_DISK = "The node was low on resource: ephemeral-storage. Threshold quantity: 2Gi, available: 1Gi. "


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    name: str,
    owner: str = "rs-1",
    *,
    created: datetime,
    evicted: datetime | None = None,
    message: str = STORAGE,
    ready: bool = False,
) -> dict[str, Any]:
    """A pod of ReplicaSet `md-<owner>` (Deployment `md`); evicted at `evicted` (the kubelet's shape),
    else Running (Ready or not)."""
    meta = {
        "name": name,
        "creationTimestamp": stamp(created),
        "labels": {"pod-template-hash": owner},
        "ownerReferences": [{"kind": "ReplicaSet", "name": f"md-{owner}", "uid": owner, "controller": True}],
    }
    if evicted is not None:
        conditions = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp(created)},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": stamp(evicted)},
        ]
        status = {"phase": "Failed", "reason": "Evicted", "message": message, "conditions": conditions}
    else:
        status = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": stamp(created)}
            ],
        }
    return {"metadata": meta, "status": status}


def test_a_recent_eviction_is_named_in_the_kubelets_words_with_what_to_do():
    pods = [pod("a", created=NOW - timedelta(minutes=2), evicted=NOW - timedelta(minutes=1))]
    assert pod_problem(pods, NOW) == (
        "pod a was evicted by its node: Pod ephemeral local storage usage exceeds the total limit of containers "
        "1Ki; the pod wrote more to its node's disk (its /tmp, its logs) than its limit allows: raise "
        "spec.resources.limits.ephemeral-storage"
    )


def test_the_latest_of_several_evictions_is_named_and_the_others_counted():
    pods = [
        pod("old", created=NOW - timedelta(minutes=5), evicted=NOW - timedelta(minutes=4), message=STORAGE),
        pod("new", created=NOW - timedelta(minutes=3), evicted=NOW - timedelta(minutes=2), message=NODE_DISK),
        pod("starting", created=NOW - timedelta(minutes=1)),
    ]
    problem = pod_problem(pods, NOW)
    assert problem is not None
    assert problem.startswith("pod new (and 1 more) was evicted by its node: The node was low on resource")
    assert "free that resource on the node" in problem


@pytest.mark.parametrize(
    ("pods", "why"),
    [
        ([pod("a", created=NOW - EVICTION_WINDOW * 3, evicted=NOW - EVICTION_WINDOW * 2)], "older than the window"),
        (
            [
                pod("a", created=NOW - timedelta(minutes=3), evicted=NOW - timedelta(minutes=2)),
                pod("b", created=NOW - timedelta(minutes=1), ready=True),
            ],
            "a Ready pod of the same owner came after it",
        ),
        (
            [
                pod("a", "rs-1", created=NOW - timedelta(minutes=3), evicted=NOW - timedelta(minutes=2)),
                pod("b", "rs-2", created=NOW - timedelta(minutes=1), ready=True),
            ],
            "a Ready pod of the Deployment's next ReplicaSet came after it",
        ),
        ([pod("a", created=NOW - timedelta(minutes=1))], "nothing was evicted"),
    ],
    ids=["old", "replaced", "next-replicaset", "none"],
)
def test_an_eviction_that_explains_nothing_now_is_not_reported(pods, why):
    assert pod_problem(pods, NOW) is None, why


def test_a_ready_pod_of_another_owner_or_from_before_does_not_hide_an_eviction():
    evicted = pod("canary-a", "rs-canary", created=NOW - timedelta(minutes=3), evicted=NOW - timedelta(minutes=2))
    stable = pod("stable-a", "rs-stable", created=NOW - timedelta(minutes=1), ready=True)
    stable["metadata"]["ownerReferences"][0]["name"] = "md-stable-rs-stable"  # another Deployment
    earlier = pod("canary-b", "rs-canary", created=NOW - timedelta(minutes=9), ready=True)
    assert (pod_problem([evicted, stable, earlier], NOW) or "").startswith("pod canary-a was evicted by its node")


def test_a_pod_that_cannot_start_comes_before_an_eviction():
    unschedulable = {
        "metadata": {"name": "u"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}]},
    }
    evicted = pod("a", created=NOW - timedelta(minutes=2), evicted=NOW - timedelta(minutes=1))
    assert pod_problem([evicted, unschedulable], NOW) == "pod u cannot be scheduled: 0/3 nodes are available"


def test_a_message_without_a_known_cause_is_quoted_without_advice():
    pods = [pod("a", created=NOW - timedelta(minutes=2), evicted=NOW - timedelta(minutes=1), message="")]
    assert eviction(pods) == "pod a was evicted by its node: no message"


def test_a_dataset_whose_job_failed_after_evictions_says_so():
    body = obj()
    scratch = 'Usage of EmptyDir volume "tmp" exceeds the limit "268435456". '
    pods = [pod("p", created=NOW - timedelta(hours=2), evicted=NOW - timedelta(hours=1), message=scratch)]
    failed = job_for(body, "Failed", "BackoffLimitExceeded")
    out = run(body, DatasetObserved(jobs=[failed], result_message="", eviction=eviction(pods)))
    cond = ready(out.status)
    assert out.status.phase == "Failed" and cond.reason == c.PREPARATION_FAILED
    assert 'pod p was evicted by its node: Usage of EmptyDir volume "tmp" exceeds the limit' in cond.message
    assert "spec.limits.archiveMaxBytes" in cond.message
    said = run(body, DatasetObserved(jobs=[failed], result_message="Traceback: ValueError", eviction=eviction(pods)))
    assert ready(said.status).message.endswith("Traceback: ValueError")  # the program's own words come first


def test_a_trial_whose_job_failed_after_evictions_says_so():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Failed", reason="PyTorchJobFailed", message="it has reached the specified backoff limit")
    evicted = pod(
        "digits-r1-t0-master-0", created=NOW - timedelta(hours=2), evicted=NOW - timedelta(hours=1), message=NODE_DISK
    )
    sim.seen["digits-r1-t0"] = TrialObservation(result_message="", eviction=eviction([evicted]))
    sim.step()
    trial = sim.trial("digits-r1-t0")
    assert (trial.state, trial.reason) == ("Failed", c.TRAINING_FAILED)
    assert "pod digits-r1-t0-master-0 was evicted by its node: The node was low on resource" in (trial.message or "")
