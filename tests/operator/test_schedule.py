"""The schedule of reconciles without a watch event: a resync every `resync_seconds`, a progress
poll every `progress_seconds` while work is under way, nothing for objects being deleted."""

from __future__ import annotations

from typing import Any

from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.controllers.schedule import Schedule
from modelops_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(resync_seconds=60, progress_seconds=3)


def body(name: str, phase: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def test_a_new_object_is_resynced_and_one_with_work_under_way_polled():
    s = Schedule(SETTINGS)
    s.seen(DATASET, body("idle", "Ready"), now=0)
    s.seen(DATASET, body("busy", "Running"), now=0)
    assert s.next_at() == 3
    assert s.due(2.9) == []
    assert s.due(3) == [("Dataset", "ns", "busy")]
    assert s.due(59) == []
    assert s.due(60) == [("Dataset", "ns", "idle")]
    assert len(s) == 0 and s.next_at() is None  # each reconcile puts its object back


def test_a_reconcile_sets_the_next_time_from_the_status_it_left():
    s = Schedule(SETTINGS)
    s.seen(DATASET, body("d", "Running"), now=0)
    s.reconciled(DATASET, body("d", "Running"), {"phase": "Ready"}, now=1)  # done: back to resyncs
    assert s.due(10) == []
    assert s.due(61) == [("Dataset", "ns", "d")]
    s.reconciled(DATASET, body("d"), {"phase": "Running"}, now=61)
    assert s.next_at() == 64


def test_an_event_showing_work_under_way_brings_the_poll_forward_never_back():
    s = Schedule(SETTINGS)
    s.seen(DATASET, body("d", "Ready"), now=0)
    s.seen(DATASET, body("d", "Pending"), now=10)  # a spec change started a new Job
    assert s.next_at() == 13
    s.seen(DATASET, body("d", "Ready"), now=11)  # an event does not push it back
    assert s.due(13) == [("Dataset", "ns", "d")]


def test_objects_being_deleted_or_gone_are_not_reconciled():
    s = Schedule(SETTINGS)
    s.seen(DATASET, body("a", "Running"), now=0)
    s.seen(DATASET, body("b", "Running"), now=0)
    s.seen(DATASET, body("a", "Running", deleting=True), now=1)
    s.forget(("Dataset", "ns", "b"))
    s.reconciled(DATASET, body("c", "Running", deleting=True), {"phase": "Running"}, now=1)
    assert s.due(1000) == [] and len(s) == 0


def test_a_failed_reconcile_is_retried_unless_rescheduled_meanwhile():
    s = Schedule(SETTINGS)
    key = ("Dataset", "ns", "d")
    s.retry(key, at=5)
    assert s.due(5) == [key]
    s.reconciled(DATASET, body("d"), {"phase": "Ready"}, now=5)  # an event's reconcile came first
    s.retry(key, at=6)
    assert s.due(6) == [] and s.next_at() == 65


def test_a_model_deployment_polls_during_a_rollout_or_experiment_only():
    s = Schedule(SETTINGS)
    s.seen(MODEL_DEPLOYMENT, body("healthy", "Healthy"), now=0)
    s.seen(MODEL_DEPLOYMENT, body("rolling", "Progressing"), now=0)
    experiment = body("ab", "Healthy")
    experiment["status"]["experiment"] = {"phase": "Running"}
    s.seen(MODEL_DEPLOYMENT, experiment, now=0)
    assert sorted(s.due(3)) == [("ModelDeployment", "ns", "ab"), ("ModelDeployment", "ns", "rolling")]
