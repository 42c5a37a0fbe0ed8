"""What a ModelDeployment says of its stable track's HorizontalPodAutoscaler: the replicas it saw and
asks for, each metric against its target, whether it can read them (the `Autoscaling` condition),
and an Event each time it changed the replica count.

The autoscaler is Kubernetes' own (`autoscaling/v2`); the operator only reads its status. The
controller is woken when that status changes what is reported here (`fingerprint`), so a scale-up
shows in `status` within a watch event, not at the next resync.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import AutoscalerStatus, ModelDeploymentStatus
from modelops_operator.reconcile.actions import Event
from modelops_operator.reconcile.rollout import parse_stamp, stamp

#: The autoscaler's conditions that say whether it scales (Kubernetes' HPA controller sets them).
_CONDITIONS = ("AbleToScale", "ScalingActive")
#: The autoscaler's reasons for having no metric reading. Right after pods start, before
#: metrics-server (15 s resolution) or Prometheus has sampled them, every HPA says one of these for
#: up to about 30 s: that is the pipeline's start, not a fault, so it is Pending for this long.
_NO_READING_YET = ("FailedGetResourceMetric", "FailedGetPodsMetric", "FailedGetObjectMetric", "FailedGetExternalMetric")
FIRST_READING_GRACE_SECONDS = 60
_GRACE = timedelta(seconds=FIRST_READING_GRACE_SECONDS)
HINT = (
    "CPU needs the resource metrics API (metrics-server); a customMetric needs a custom metrics adapter "
    "serving that name (prometheus-adapter): check `kubectl get apiservices | grep metrics` and the "
    "metric's name"
)


def fingerprint(hpa: dict[str, Any] | None) -> str | None:
    """What of an autoscaler's status a ModelDeployment reports, hashed: a change wakes the owner
    (the metrics' values, which change at every read, do not)."""
    if hpa is None:
        return None
    st = hpa.get("status") or {}
    conds = sorted(
        (x.get("type"), x.get("status"), x.get("reason"))
        for x in st.get("conditions") or []
        if x.get("type") in _CONDITIONS
    )
    doc = [st.get("currentReplicas"), st.get("desiredReplicas"), st.get("lastScaleTime"), conds]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


def _metric(spec: dict[str, Any], current: dict[str, Any] | None) -> str:
    """One metric as `name: value (target t)`; `?` where the autoscaler has no reading."""
    if spec.get("type") == "Resource":
        res = spec.get("resource") or {}
        target = (res.get("target") or {}).get("averageUtilization")
        now = ((current or {}).get("resource") or {}).get("current") or {}
        value = now.get("averageUtilization")
        shown = f"{value}% of request" if value is not None else "?"
        return f"{res.get('name', 'cpu')}: {shown} (target {target}%)"
    if spec.get("type") == "Pods":
        pods = spec.get("pods") or {}
        target = (pods.get("target") or {}).get("averageValue")
        now = ((current or {}).get("pods") or {}).get("current") or {}
        value = now.get("averageValue")
        shown = f"{value} per pod" if value is not None else "?"
        return f"{(pods.get('metric') or {}).get('name', '?')}: {shown} (target {target})"
    return f"{spec.get('type', '?')} metric"


def _rfc3339(when: Any) -> str | None:
    """A timestamp as the client returns it (datetime or RFC 3339 text) as RFC 3339 text."""
    return when.isoformat() if isinstance(when, datetime) else when


def read(hpa: dict[str, Any]) -> AutoscalerStatus:
    """The autoscaler's status as a ModelDeployment reports it."""
    spec, st = hpa.get("spec") or {}, hpa.get("status") or {}
    current = st.get("currentMetrics") or []
    metrics = [_metric(m, current[i] if i < len(current) else None) for i, m in enumerate(spec.get("metrics") or [])]
    failing = _failing(_by_type(hpa))
    no_reading = failing is not None and failing.get("reason") in _NO_READING_YET
    return AutoscalerStatus(
        current_replicas=int(st.get("currentReplicas") or 0),
        desired_replicas=int(st.get("desiredReplicas") or 0),
        metrics=metrics[:8],
        last_scale_time=_rfc3339(st.get("lastScaleTime")),
        no_reading_since=_rfc3339(failing.get("lastTransitionTime")) if failing and no_reading else None,
    )


def _parse(when: Any) -> datetime | None:
    """A timestamp as the client returns it (datetime or RFC 3339 text); None when it is neither
    or has no time zone."""
    parsed = parse_stamp(when) if isinstance(when, str) else when
    return parsed if isinstance(parsed, datetime) and parsed.tzinfo else None


def _by_type(hpa: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The autoscaler's conditions by type."""
    return {x.get("type"): x for x in (hpa.get("status") or {}).get("conditions") or []}


def _failing(conds: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """The first of the autoscaler's conditions (`_by_type`) that says it cannot scale; None when
    none does."""
    return next((conds[t] for t in _CONDITIONS if t in conds and conds[t].get("status") == "False"), None)


def _condition(hpa: dict[str, Any], at: datetime) -> tuple[ConditionStatus, str, str]:
    """The `Autoscaling` condition from the autoscaler's own conditions."""
    conds = _by_type(hpa)
    if (first := _failing(conds)) is not None:
        said = f"{first.get('reason')}: {first.get('message') or ''}".strip()
        since = _parse(first.get("lastTransitionTime"))
        if first.get("reason") in _NO_READING_YET and since is not None and since <= at < (until := since + _GRACE):
            # The message names fixed times, never a running count: a status that changed at every
            # resync would be a write per object per resync at steady state (issue #21). The
            # schedule reconciles the object again when the grace ends (`pending_until`).
            return (
                ConditionStatus.UNKNOWN,
                c.AUTOSCALER_PENDING,
                f"no metric reading yet ({said}) since {stamp(since)}: new pods are read once the "
                f"metrics pipeline has sampled them (about 30 s); without a reading by {stamp(until)} "
                f"this becomes {c.AUTOSCALER_METRIC_UNAVAILABLE}",
            )
        return ConditionStatus.FALSE, c.AUTOSCALER_METRIC_UNAVAILABLE, f"the autoscaler cannot scale ({said}); {HINT}"
    if not conds:
        return ConditionStatus.UNKNOWN, c.AUTOSCALER_PENDING, "the autoscaler has not reported yet"
    active = conds.get("ScalingActive") or {}
    return ConditionStatus.TRUE, c.AUTOSCALER_ACTIVE, active.get("message") or "the autoscaler reads its metrics"


def with_autoscaler(
    status: ModelDeploymentStatus,
    hpa: dict[str, Any] | None,
    generation: int,
    *,
    at: datetime | None = None,
) -> tuple[ModelDeploymentStatus, list[Event]]:
    """`status` with what the autoscaler (`hpa`, as read; None before it exists) reports, and a
    ScaledUp or ScaledDown Event when it asks for another replica count than last reported."""
    if hpa is None:
        return status, []
    now = read(hpa)
    cond_status, reason, message = _condition(hpa, at or datetime.now(UTC))
    conds = c.set_condition(status.conditions, c.AUTOSCALING, cond_status, reason, message, generation, at)
    events = []
    before = status.autoscaler
    if before is not None and before.desired_replicas and now.desired_replicas != before.desired_replicas:
        up = now.desired_replicas > before.desired_replicas
        why = "; ".join(now.metrics) or "no metric reading"
        events.append(
            Event(
                "Normal",
                "ScaledUp" if up else "ScaledDown",
                f"the autoscaler set the stable track to {now.desired_replicas} replicas "
                f"(was {before.desired_replicas}): {why}",
            )
        )
    return status.model_copy(update={"autoscaler": now, "conditions": conds}), events


def pending_until(status: dict[str, Any]) -> datetime | None:
    """When a ModelDeployment's status (as written) turns from Pending to MetricUnavailable by the
    clock alone: the end of the first reading's grace, while the `Autoscaling` condition is Pending
    for want of a reading. None otherwise. The schedule reconciles the object then, so the change is
    written when it happens, not at the next resync (which, at 1,000 objects, put a minute of
    these writes after everything had converged: issue #21)."""
    cond = next((x for x in status.get("conditions") or [] if x.get("type") == c.AUTOSCALING), None)
    if cond is None or cond.get("reason") != c.AUTOSCALER_PENDING:
        return None
    since = _parse((status.get("autoscaler") or {}).get("noReadingSince"))
    return since + _GRACE if since is not None else None
