"""Which objects wait on which, and when a change of one must wake the others.

A TrainingRun reads its Dataset's Ready version; a ModelDeployment reads its TrainingRun's
registered models. Rather than polling the waiting objects, the operator watches the objects they
depend on and, when what the dependants read changes, sets the annotation
`modelops.dev/dependency-changed` (`api.names.DEPENDENCY_CHANGED_ANNOTATION`) on each dependant to
a fingerprint of the change. That annotation change is an event of the dependant, which reconciles
it at once (within the same watch, serialised with its other handlers). The fingerprint is a pure
function of the dependency's status, so waking is idempotent: the same change twice writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.kinds import MODEL_DEPLOYMENT
from modelops_operator.reconcile import autoscaling

#: TrainingRun phases in which a Dataset change can matter. A run that has pinned its Dataset
#: (Running, Succeeded, ...) keeps that version: a new Dataset version alone does not retrain.
RUN_PHASES_WAITING_FOR_DATASET = (None, "", "Pending", "WaitingForDataset")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def dataset_fingerprint(body: dict[str, Any] | None) -> str | None:
    """What a TrainingRun reads of its Dataset: whether it is Ready, and its version, digest and
    artifact URI; None when the Dataset is gone. Its phase alone (Pending, Running, Failed) is not
    read: a run waits for a Ready version the same way whatever the Dataset is doing meanwhile."""
    if body is None:
        return None
    status = body.get("status") or {}
    ready = next((x.get("status") for x in status.get("conditions") or [] if x.get("type") == c.READY), None)
    return _digest([status.get(k) for k in ("version", "digest", "artifactURI")] + [ready])


def run_fingerprint(body: dict[str, Any] | None) -> str | None:
    """What a ModelDeployment reads of its TrainingRun: the registered models; None when gone."""
    if body is None:
        return None
    status = body.get("status") or {}
    models = [status.get("model"), *(status.get("models") or [])]
    return _digest(sorted({(m.get("version"), m.get("uri"), m.get("digest")) for m in models if m}, key=str))


def wake_value(kind: str, name: str, fingerprint: str | None) -> str:
    """The annotation value that tells a dependant which change woke it."""
    return f"{kind}/{name}@{fingerprint or 'deleted'}"


def should_wake(before: str | None, after: str | None, *, known: bool, listed: bool) -> bool:
    """Whether a dependency's event is a change its dependants must hear of.

    `known`: the operator has seen this dependency before (since it started). `listed`: the event
    comes from a (re-)list rather than the watch stream. At start every dependant is reconciled by
    the resume handler anyway, so the first sight of a listed dependency wakes no one; a newly
    created one does (its dependants may be waiting for it to exist)."""
    if not known:
        return not listed
    return before != after


def run_waits_for_dataset(phase: str | None) -> bool:
    """Whether a TrainingRun in this phase could move on when its Dataset changes."""
    return phase in RUN_PHASES_WAITING_FOR_DATASET


def changes_at(kind: str, status: dict[str, Any]) -> datetime | None:
    """When an object's status changes by the clock alone, with no event to wake it: a
    ModelDeployment's `Autoscaling` condition at the end of its first reading's grace. None when
    nothing is due."""
    return autoscaling.pending_until(status) if kind == MODEL_DEPLOYMENT.kind else None


def needs_progress(kind: str, status: dict[str, Any]) -> bool:
    """Whether an object has work under way that only polling can follow (a Job, a trial, a
    rollout step, a running A/B experiment): it is reconciled every `progress_seconds` then. An
    object waiting on another of our objects is not polled: that object's change wakes it."""
    phase = status.get("phase")
    if kind == MODEL_DEPLOYMENT.kind and (status.get("experiment") or {}).get("phase") == "Running":
        return True  # measured every `spec.experiment.interval`, and ended on time
    if phase not in ("Pending", "Queued", "Running", "Progressing"):
        return False  # a Queued run's trials wait for Kueue's admission, which only polling sees
    if kind == MODEL_DEPLOYMENT.kind:
        conditions = status.get("conditions") or []
        resolved = next((x for x in conditions if x.get("type") == c.MODEL_RESOLVED), None)
        return resolved is None or resolved.get("status") != "False"
    return True
