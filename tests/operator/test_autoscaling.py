"""What a ModelDeployment reports of its autoscaler: replicas, metrics against targets, whether it can
read them, an Event per scale, and which changes of the autoscaler wake the ModelDeployment.

The HorizontalPodAutoscaler statuses below have the shape kube-controller-manager v1.34 writes
(`autoscaling/v2`), as the dynamic client returns them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from modelops_operator.builders.modeldeployment import build_hpa
from modelops_operator.reconcile import autoscaling
from tests.support.objects import model_deployment

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def hpa(
    desired: int = 1,
    current: int = 1,
    cpu: int | None = 12,
    inflight: str | None = None,
    active: tuple[str, str, str] = ("True", "ValidMetricFound", "the HPA was able to compute the replica count"),
) -> dict[str, Any]:
    """The operator's own autoscaler (its spec from the builder), with a status as Kubernetes writes it."""
    spec: dict[str, Any] = {"customMetric": {"name": "modelops_inflight_requests", "targetAverageValue": 2}}
    body = model_deployment("digits").set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 4, **spec}).obj()
    body["metadata"].update(namespace="ml", uid="u-1")
    obj = build_hpa(body, ModelDeploymentSpec.model_validate(body["spec"]))
    metrics: list[dict[str, Any]] = [
        {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu, "averageValue": "12m"}}}
        if cpu is not None
        else {"type": ""},
        {
            "type": "Pods",
            "pods": {"metric": {"name": "modelops_inflight_requests"}, "current": {"averageValue": inflight}},
        }
        if inflight is not None
        else {"type": ""},
    ]
    obj["status"] = {
        "currentReplicas": current,
        "desiredReplicas": desired,
        "lastScaleTime": "2026-12-03T11:58:00Z",
        "currentMetrics": metrics,
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "recommended size"},
            {"type": "ScalingActive", "status": active[0], "reason": active[1], "message": active[2]},
            {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "message": "in range"},
        ],
    }
    return obj


def test_the_status_shows_replicas_and_each_metric_against_its_target():
    status, events = autoscaling.with_autoscaler(
        ModelDeploymentStatus(), hpa(desired=3, current=2, cpu=180, inflight="4500m"), 1, at=AT
    )
    assert events == []  # nothing was reported before: no change to announce
    assert status.autoscaler is not None
    assert (status.autoscaler.current_replicas, status.autoscaler.desired_replicas) == (2, 3)
    assert status.autoscaler.metrics == [
        "cpu: 180% of request (target 70%)",
        "modelops_inflight_requests: 4500m per pod (target 2)",
    ]
    assert status.autoscaler.last_scale_time == "2026-12-03T11:58:00Z"
    cond = c.get_condition(status.conditions, c.AUTOSCALING)
    assert cond is not None and (cond.status, cond.reason) == (ConditionStatus.TRUE, c.AUTOSCALER_ACTIVE)


@pytest.mark.parametrize(
    ("before", "after", "reason", "words"),
    [(1, 3, "ScaledUp", "to 3 replicas (was 1)"), (3, 1, "ScaledDown", "to 1 replicas (was 3)")],
)
def test_a_scale_is_an_event_with_the_metrics_that_caused_it(before, after, reason, words):
    old, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(), hpa(desired=before, current=before), 1, at=AT)
    new, events = autoscaling.with_autoscaler(old, hpa(desired=after, current=before, cpu=150), 1, at=AT)
    assert [(e.type, e.reason) for e in events] == [("Normal", reason)]
    assert words in events[0].message and "cpu: 150% of request (target 70%)" in events[0].message
    again, repeated = autoscaling.with_autoscaler(new, hpa(desired=after, current=after, cpu=60), 1, at=AT)
    assert repeated == [] and again.autoscaler is not None and again.autoscaler.current_replicas == after


def test_a_metric_it_cannot_read_is_a_condition_naming_it_and_what_serves_it():
    failing = hpa(
        cpu=None,
        active=(
            "False",
            "FailedGetPodsMetric",
            "the HPA was unable to compute the replica count: unable to get metric modelops_inflight_requests: "
            "no custom metrics API (custom.metrics.k8s.io) registered",
        ),
    )
    status, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(), failing, 4, at=AT)
    cond = c.get_condition(status.conditions, c.AUTOSCALING)
    assert cond is not None and (cond.status, cond.reason) == (ConditionStatus.FALSE, c.AUTOSCALER_METRIC_UNAVAILABLE)
    assert "FailedGetPodsMetric: the HPA was unable to compute" in cond.message
    assert "custom metrics adapter" in cond.message and cond.observed_generation == 4
    assert status.autoscaler is not None and status.autoscaler.metrics[1] == (
        "modelops_inflight_requests: ? (target 2)"
    )
    # Serving does not depend on it: Ready is not touched.
    assert c.get_condition(status.conditions, c.READY) is None


def test_before_the_autoscaler_reports_the_condition_is_unknown_and_none_is_read_before_it_exists():
    fresh = hpa()
    fresh["status"] = {"currentReplicas": 0, "desiredReplicas": 0}
    status, events = autoscaling.with_autoscaler(ModelDeploymentStatus(), fresh, 1, at=AT)
    cond = c.get_condition(status.conditions, c.AUTOSCALING)
    assert cond is not None and (cond.status, cond.reason) == (ConditionStatus.UNKNOWN, c.AUTOSCALER_PENDING)
    assert events == []
    assert autoscaling.with_autoscaler(ModelDeploymentStatus(), None, 1, at=AT) == (ModelDeploymentStatus(), [])


def test_only_what_status_reports_wakes_the_owner():
    base = hpa(desired=2, current=2, cpu=40)
    same = copy.deepcopy(base)
    same["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] = 65  # read every 15 s
    assert autoscaling.fingerprint(same) == autoscaling.fingerprint(base)
    for change in (
        lambda h: h["status"].update(desiredReplicas=3),
        lambda h: h["status"].update(currentReplicas=3),
        lambda h: h["status"]["conditions"][1].update(status="False", reason="FailedGetResourceMetric"),
    ):
        changed = copy.deepcopy(base)
        change(changed)
        assert autoscaling.fingerprint(changed) != autoscaling.fingerprint(base)
    assert autoscaling.fingerprint(None) is None


def test_the_scale_down_window_is_the_specs():
    body = model_deployment("digits").set("spec.autoscaling", {"scaleDownStabilizationSeconds": 20}).obj()
    body["metadata"].update(namespace="ml", uid="u-1")
    obj = build_hpa(body, ModelDeploymentSpec.model_validate(body["spec"]))
    assert obj["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 20}}
    default = build_hpa(
        body | {"spec": model_deployment().spec}, ModelDeploymentSpec.model_validate(model_deployment().spec)
    )
    assert default["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300  # Kubernetes' own default


@pytest.mark.parametrize(
    ("reason", "seconds_ago", "expected"),
    [
        ("FailedGetResourceMetric", 20, (ConditionStatus.UNKNOWN, c.AUTOSCALER_PENDING)),
        ("FailedGetPodsMetric", 59, (ConditionStatus.UNKNOWN, c.AUTOSCALER_PENDING)),
        ("FailedGetResourceMetric", 61, (ConditionStatus.FALSE, c.AUTOSCALER_METRIC_UNAVAILABLE)),
        ("InvalidSelector", 5, (ConditionStatus.FALSE, c.AUTOSCALER_METRIC_UNAVAILABLE)),
    ],
)
def test_a_first_reading_still_to_come_is_pending_for_a_minute_then_unavailable(reason, seconds_ago, expected):
    """Right after pods start, every HPA lacks a reading until metrics-server has sampled them: that
    is Pending, not a fault, for a minute; another reason, or the same one for longer, is the fault."""
    young = hpa(active=("False", reason, "the HPA was unable to compute the replica count: no metrics returned"))
    since = datetime.fromtimestamp(AT.timestamp() - seconds_ago, UTC)
    young["status"]["conditions"][1]["lastTransitionTime"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(), young, 2, at=AT)
    cond = c.get_condition(status.conditions, c.AUTOSCALING)
    assert cond is not None and (cond.status, cond.reason) == expected
    assert reason in cond.message
    # Since when it has had no reading (for the schedule, `pending_until`); another fault is not that.
    assert status.autoscaler is not None
    assert (status.autoscaler.no_reading_since is not None) == (reason != "InvalidSelector")
    as_datetime = copy.deepcopy(young)  # the typed client's form of the same timestamp
    as_datetime["status"]["conditions"][1]["lastTransitionTime"] = since
    again, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(), as_datetime, 2, at=AT)
    cond = c.get_condition(again.conditions, c.AUTOSCALING)
    assert cond is not None and (cond.status, cond.reason) == expected


def test_a_pending_first_reading_says_the_same_at_every_resync():
    """A message with a running count would change the status at every resync: a write per
    ModelDeployment per minute at steady state, measured by bench/scale.py (issue #21). It names
    the times instead, so a later reconcile within the minute writes nothing."""
    young = hpa(active=("False", "FailedGetResourceMetric", "unable to get metrics for resource cpu"))
    since = datetime.fromtimestamp(AT.timestamp() - 5, UTC)
    young["status"]["conditions"][1]["lastTransitionTime"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    first, _ = autoscaling.with_autoscaler(ModelDeploymentStatus(), young, 2, at=AT)
    later, _ = autoscaling.with_autoscaler(first, young, 2, at=datetime.fromtimestamp(AT.timestamp() + 40, UTC))
    assert later.conditions == first.conditions
    cond = c.get_condition(later.conditions, c.AUTOSCALING)
    assert cond is not None and cond.reason == c.AUTOSCALER_PENDING
    until = datetime.fromtimestamp(since.timestamp() + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"without a reading by {until}" in cond.message
