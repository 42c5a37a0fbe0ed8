"""The schedule of reconciles without a watch event: a resync every `resync_seconds`, a progress
poll every `progress_seconds` while work is under way, nothing for objects being deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.api.modeldeployment import ModelDeploymentStatus
from modelops_operator.controllers.schedule import Schedule
from modelops_operator.reconcile import autoscaling
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


def test_a_pending_autoscaler_is_reconciled_when_its_grace_ends_and_then_reads_unavailable():
    """The `Autoscaling` condition turns from Pending to MetricUnavailable by the clock alone. At
    the next resync that was up to a minute late: at 1,000 objects, a minute of status writes after
    everything had converged (issue #21). The schedule brings the reconcile to the grace's end."""
    at = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    since = at - timedelta(seconds=20)
    hpa = {
        "spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": 70}}}]},
        "status": {
            "currentReplicas": 1,
            "desiredReplicas": 1,
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetResourceMetric",
                    "message": "unable to get metrics for resource cpu: no metrics returned",
                    "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            ],
        },
    }
    pending, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(phase="Healthy"), hpa, 1, at=at)
    wire = pending.wire()
    assert c.get_condition(pending.conditions, c.AUTOSCALING).reason == c.AUTOSCALER_PENDING
    s = Schedule(SETTINGS)
    s.reconciled(MODEL_DEPLOYMENT, body("md", "Healthy"), wire, now=0, wall=at.timestamp())
    due = s.next_at()
    assert due is not None and 40 <= due < 45  # the grace's end, 40 s on; not the 60 s resync
    s.seen(MODEL_DEPLOYMENT, {**body("md"), "status": wire}, now=1, wall=at.timestamp() + 1)  # its own write
    assert s.next_at() == due
    then = at + timedelta(seconds=due)
    after, _ = autoscaling.with_autoscaler(pending, hpa, 1, at=then.replace(microsecond=0))
    assert c.get_condition(after.conditions, c.AUTOSCALING).reason == c.AUTOSCALER_METRIC_UNAVAILABLE
    assert after.wire()["autoscaler"]["noReadingSince"] == wire["autoscaler"]["noReadingSince"]
    s.reconciled(MODEL_DEPLOYMENT, body("md", "Healthy"), after.wire(), now=due, wall=then.timestamp())
    assert s.next_at() == due + 60  # nothing more is due by the clock: back to resyncs
