"""Controllers: one per kind, each observes (through `kube`), asks the pure `reconcile` layer for
the status and the actions, and carries them out. Nothing here imports kopf: `handlers` registers
these functions with kopf and turns `RetryLater` into kopf's retry.

    reconcile(kind, body)   the one entry point of create, update, resume, the schedule and wake-ups
    on_event / wake_*       which raw watch events reconcile at once, and waking dependants
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from modelops_operator import kube, observability
from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import StatusBase
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT, TRAINING_RUN, Kind
from modelops_operator.controllers import dataset, modeldeployment, trainingrun
from modelops_operator.controllers.common import Log, RetryLater, retry_later
from modelops_operator.reconcile import autoscaling, health, rollout
from modelops_operator.reconcile import dependencies as dep
from modelops_operator.reconcile.actions import Event
from modelops_operator.reconcile.pods import refused_pod_settings
from modelops_operator.reconcile.status import (
    describe_error,
    invalid_spec,
    merge_patch,
    parse_status,
    ready_events,
    refused,
)
from modelops_operator.settings import OperatorSettings

__all__ = [
    "Reconciled",
    "RetryLater",
    "Wake",
    "autoscaler_wake",
    "commanded",
    "delete_trials",
    "dependants_wake",
    "deployments_following",
    "forget",
    "on_event",
    "reconcile",
    "reconcile_by_name",
    "runs_waiting_for",
    "wake",
    "woken_by",
]

_CONTROLLERS: dict[str, Callable[[dict[str, Any], Any, Any, OperatorSettings, datetime], tuple[Any, list[Event]]]] = {
    DATASET.kind: dataset.reconcile,
    TRAINING_RUN.kind: trainingrun.reconcile,
    MODEL_DEPLOYMENT.kind: modeldeployment.reconcile,
}


@dataclass(frozen=True)
class Reconciled:
    """What the handler writes and posts after one reconcile."""

    result: Literal["success", "invalid"]
    status_patch: dict[str, Any]
    """The merge patch of status; empty when nothing changed (status is then not written)."""
    events: list[Event]
    status: dict[str, Any] = field(default_factory=dict)
    """The whole status after this reconcile (what the object has once the patch is written)."""


def reconcile(kind: Kind, body: dict[str, Any], settings: OperatorSettings, log: Log) -> Reconciled:
    """Bring one object's status in line with its spec and what it depends on (timed and counted
    in the operator's metrics)."""
    with observability.RECONCILE_SECONDS.labels(kind.kind).time():
        try:
            done = _reconcile(kind, body, settings, log)
        except Exception:
            observability.RECONCILES.labels(kind.kind, "error").inc()
            raise
    observability.RECONCILES.labels(kind.kind, done.result).inc()
    return done


def _reconcile(kind: Kind, body: dict[str, Any], settings: OperatorSettings, log: Log) -> Reconciled:
    meta = body["metadata"]
    generation = int(meta.get("generation") or 0)
    old_raw = dict(body.get("status") or {})
    old = parse_status(kind.status, old_raw)
    now = datetime.now(UTC)
    events: list[Event] = []
    result: Literal["success", "invalid"] = "success"
    try:
        spec = kind.spec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:
        message = describe_error(e)
        log.warning("invalid spec: %s", message)
        new: StatusBase = invalid_spec(old, generation, message, at=now.replace(microsecond=0))
        result = "invalid"
    else:
        if why_not := refused_pod_settings(spec, settings):
            phase = getattr(old, "phase", None) or "Failed"
            new = refused(old, generation, c.POD_SETTINGS_NOT_ALLOWED, [why_not], phase, at=now.replace(microsecond=0))
        else:
            with retry_later():
                new, events = _CONTROLLERS[kind.kind](body, spec, old, settings, now)
    new = health.summarise(old, new)
    observability.count_phase(
        kind.kind, meta.get("namespace") or "", meta.get("name") or "", str(getattr(new, "phase", ""))
    )
    wire = new.wire()
    changes = merge_patch(old_raw, wire)
    if changes:
        events = [*events, *ready_events(old, new)]
    return Reconciled(result, changes, events, wire)


def reconcile_by_name(
    kind: Kind, namespace: str, name: str, settings: OperatorSettings, log_for: Callable[[dict[str, Any]], Log]
) -> tuple[dict[str, Any], Reconciled] | None:
    """A scheduled reconcile (`controllers.schedule`): read the object, reconcile it (logging to
    `log_for(body)`) and write its status; the body read and the outcome, or None when it is gone
    or being deleted."""
    with retry_later():
        body = kube.get_object(kind, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    done = reconcile(kind, body, settings, log_for(body))
    if done.status_patch:
        with retry_later():
            kube.patch_status(kind, namespace, name, done.status_patch)
    return body, done


def forget(kind: Kind, body: Mapping[str, Any]) -> None:
    """A deleted object leaves the operator's metrics (its phase count, its rollout gauge)."""
    meta = body["metadata"]
    observability.forget(kind.kind, meta.get("namespace") or "", meta.get("name") or "")


def delete_trials(namespace: str, name: str, log: Log) -> None:
    """Stop a deleted TrainingRun's trials now (see `trainingrun.delete_trials`)."""
    with retry_later():
        trainingrun.delete_trials(namespace, name, log)


def commanded(kind: Kind, annotations: Mapping[str, str]) -> bool:
    """Whether `annotations` carry a manual command for the rollout or the A/B experiment
    (ModelDeployments only)."""
    return kind is MODEL_DEPLOYMENT and (
        rollout.requested_command(annotations) is not None or names.PROMOTE_VARIANT_ANNOTATION in annotations
    )


def woken_by(body: Mapping[str, Any]) -> str | None:
    """The dependency change that last woke the object (its annotation), remembered per object."""
    return ((body["metadata"].get("annotations")) or {}).get(names.DEPENDENCY_CHANGED_ANNOTATION)


def on_event(kind: Kind, body: Mapping[str, Any], memo: MutableMapping[str, Any]) -> bool:
    """Whether a raw watch event should reconcile at once: a dependency's change woke the object,
    or it carries a manual command. kopf leaves our own annotations out of its diffs, so these are
    seen here rather than by an update handler. The first sight of an object is the create or
    resume handler's."""
    observability.WATCH_EVENTS.labels(kind.kind).inc()
    woken = woken_by(body)
    seen = memo.setdefault("woken", woken)
    return woken != seen or commanded(kind, body["metadata"].get("annotations") or {})


def runs_waiting_for(index: Mapping[Any, Iterable[Any]], namespace: str, dataset_name: str) -> list[str]:
    """The TrainingRuns (from the `runs_by_dataset` index) a Dataset's change may wake."""
    return [run for run, phase in index.get((namespace, dataset_name), []) if dep.run_waits_for_dataset(phase)]


def deployments_following(index: Mapping[Any, Iterable[Any]], namespace: str, run_name: str) -> list[str]:
    """The ModelDeployments (from the `deployments_by_run` index) that follow a TrainingRun."""
    return list(index.get((namespace, run_name), []))


@dataclass(frozen=True)
class Wake:
    """Objects to wake: each is annotated with `value`, which tells which change woke it."""

    kind: Kind
    namespace: str
    names: tuple[str, ...]
    value: str


def autoscaler_wake(
    body: Mapping[str, Any] | None,
    memo: MutableMapping[str, Any],
    *,
    name: str,
    namespace: str,
    listed: bool,
) -> Wake | None:
    """The ModelDeployment owning an autoscaler, to wake whenever what its status reports of it
    changes (replicas, whether it can read its metrics): a scale shows in status at once. No API
    call: the handler runs it on the event loop, and only a wake-up (`wake`) in a thread."""
    after = autoscaling.fingerprint(dict(body) if body is not None else None)
    known, before = "fingerprint" in memo, memo.get("fingerprint")
    memo["fingerprint"] = after
    if body is not None:
        owners = (body.get("metadata") or {}).get("ownerReferences") or []
        memo["owner"] = next(
            (o.get("name") for o in owners if o.get("controller") and o.get("kind") == MODEL_DEPLOYMENT.kind), None
        )
    owner = memo.get("owner")
    if not owner or not dep.should_wake(before, after, known=known, listed=listed):
        return None
    return Wake(MODEL_DEPLOYMENT, namespace, (owner,), dep.wake_value("HorizontalPodAutoscaler", name, after))


def dependants_wake(
    kind: Kind,
    body: Mapping[str, Any] | None,
    memo: MutableMapping[str, Any],
    *,
    name: str,
    namespace: str,
    listed: bool,
    dependants: Callable[[], list[str]],
) -> Wake | None:
    """The dependants of a `kind` object, to wake whenever what they read of it changes (`body`
    None: it was deleted). No API call, as `autoscaler_wake`."""
    fingerprint = dep.dataset_fingerprint if kind is DATASET else dep.run_fingerprint
    after = fingerprint(dict(body) if body is not None else None)
    known, before = "fingerprint" in memo, memo.get("fingerprint")
    memo["fingerprint"] = after
    if not dep.should_wake(before, after, known=known, listed=listed):
        return None
    names_ = tuple(dependants())
    dependant_kind = TRAINING_RUN if kind is DATASET else MODEL_DEPLOYMENT
    return Wake(dependant_kind, namespace, names_, dep.wake_value(kind.kind, name, after)) if names_ else None


def wake(wake: Wake, log: Log) -> None:
    """Annotate the objects `wake` names (blocking API calls). A failed wake-up is logged; the
    periodic resync catches up later."""
    for name in wake.names:
        try:
            kube.annotate(wake.kind, wake.namespace, name, {names.DEPENDENCY_CHANGED_ANNOTATION: wake.value})
        except (kube.Conflict, kube.Unavailable) as e:
            log.warning("could not wake %s %s: %s", wake.kind.kind, name, e)
