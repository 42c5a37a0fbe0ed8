"""A Dataset's reconciliation: its preparation Job and the status that follows from it.

Level-based and idempotent. The Job for the current spec is found by its `modelops.dev/spec-hash`
label; once a version for that hash is Ready, nothing runs again (also after a restart, since
status remembers the hash). Jobs of older specs are deleted; the versions they wrote stay in the
artifact store. The program reports through its pod's termination message (`PrepareResult`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from modelops_operator.api import conditions as c
from modelops_operator.api.common import Condition, ConditionStatus
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus, SplitCounts
from modelops_operator.api.names import SPEC_HASH_LABEL
from modelops_operator.builders.dataset import build_prepare_job, data_hash
from modelops_operator.reconcile.actions import Action, Outcome
from modelops_operator.settings import OperatorSettings

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


class PrepareResult(BaseModel):
    """The JSON the preparation program leaves in its termination message."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    ok: bool
    version: str | None = None
    digest: str | None = None
    uri: str | None = None
    images: int | None = None
    classes: int | None = None
    splits: dict[str, SplitCounts] = {}
    dropped: dict[str, int] = {}
    missing: dict[str, list[str]] = {}
    """Classes without an image in a split, by split (at most 20 each)."""
    reason: str | None = None
    message: str | None = None


@dataclass
class DatasetObserved:
    """What the controller saw: the Dataset's Jobs, the termination message of the current Job's
    last finished pod (None while there is none), and the time."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    result_message: str | None = None
    pod_problem: str | None = None
    """Why the current Job's pod cannot start, if it cannot (see `pods.pod_problem`)."""
    eviction: str | None = None
    """The latest eviction of a finished Job's pods, if the kubelet evicted one (`pods.eviction`):
    why it failed when the program itself said nothing."""
    now: datetime = field(default_factory=c.now)
    """When it was seen: the time of any condition that changes."""


def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """(`Complete` | `Failed` | `Active`, reason, message) of a Job, from its conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return cond["type"], cond.get("reason") or "", cond.get("message") or ""
    return "Active", "", ""


def parse_result(message: str | None) -> PrepareResult | None:
    """The program's result from a termination message; None when it is missing or not ours."""
    if not message:
        return None
    try:
        return PrepareResult.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def _in_phase(status: DatasetStatus, phase: str, conditions: list[Condition], **fields: Any) -> DatasetStatus:
    """`status` in `phase`, with `conditions` and other fields updated."""
    return status.model_copy(update={"phase": phase, "conditions": conditions, **fields})


def reconcile_dataset(
    dataset: dict[str, Any],
    spec: DatasetSpec,
    old: DatasetStatus,
    observed: DatasetObserved,
    settings: OperatorSettings,
) -> Outcome[DatasetStatus]:
    """The status the Dataset should have, and the Job calls that get it there."""
    generation = int(dataset["metadata"].get("generation") or 0)
    wanted = data_hash(spec)
    current = next((j for j in observed.jobs if j["metadata"]["labels"].get(SPEC_HASH_LABEL) == wanted), None)
    actions = [Action("delete", "Job", j["metadata"]["name"]) for j in observed.jobs if j is not current]
    status = old.model_copy(update={"observed_generation": generation})
    if old.spec_hash == wanted and old.phase in ("Ready", "Failed"):
        return Outcome(status, actions)  # settled for this spec: never re-run
    if current is None:
        named = {s.credentials_secret for s in spec.sources if s.credentials_secret is not None}
        refused = sorted(named - set(settings.dataset_credentials_secrets))
        if refused:
            msg = (
                f"spec.sources[].credentialsSecret: {', '.join(refused)} may not be used by Datasets; "
                "the operator's admin lists the Secrets meant for datasets in settings.datasetCredentialsSecrets"
            )
            conds = c.waiting(status.conditions, c.CREDENTIALS_NOT_ALLOWED, msg, generation, at=observed.now)
            return Outcome(_in_phase(status, "Failed", conds), actions)  # no spec_hash: checked at each resync
        job = build_prepare_job(dataset, spec, settings)
        name = job["metadata"]["name"]
        msg = f"created Job {name} to prepare the dataset"
        if old.version:
            msg += f"; version {old.version} stays available meanwhile"
        conds = c.running(status.conditions, c.JOB_CREATED, msg, generation, at=observed.now)
        status = _in_phase(status, "Pending", conds, job_name=name)
        return Outcome(status, [*actions, Action("create", "Job", name, job)])
    return Outcome(_status_from_job(status, spec, current, observed, wanted), actions)


def _split_coverage(status: DatasetStatus, missing: dict[str, list[str]], now: datetime) -> DatasetStatus:
    """Degraded when a split lacks a class: the version is usable, but not what the user expects
    (a class the test split lacks is never evaluated), so it is said, never silently published."""
    generation = status.observed_generation
    if missing:
        lacking = "; ".join(f"{split}: {', '.join(classes)}" for split, classes in sorted(missing.items()))
        msg = f"splits without an image of some classes ({lacking}): add images, or set that split's ratio to 0"
        conds = c.set_condition(status.conditions, c.DEGRADED, T, c.SPLIT_MISSES_CLASS, msg, generation, now)
    elif c.get_condition(status.conditions, c.DEGRADED) is not None:
        msg = "every split has images of every class"
        conds = c.set_condition(status.conditions, c.DEGRADED, F, c.DATASET_PREPARED, msg, generation, now)
    else:
        return status
    return status.model_copy(update={"conditions": conds})


def _status_from_job(
    status: DatasetStatus, spec: DatasetSpec, job: dict[str, Any], observed: DatasetObserved, wanted: str
) -> DatasetStatus:
    """The status that follows from the current spec's Job and what its pod reported."""
    name, generation = job["metadata"]["name"], status.observed_generation
    state, job_reason, job_message = job_state(job)
    result = parse_result(observed.result_message)
    if state == "Active" and observed.pod_problem:
        conds = c.running(
            status.conditions, c.POD_PENDING, f"Job {name}: {observed.pod_problem}", generation, at=observed.now
        )
        return _in_phase(status, "Running", conds, job_name=name)
    if state == "Active" or (state == "Complete" and observed.result_message is None):
        conds = c.running(
            status.conditions, c.PREPARING, f"Job {name} is preparing the dataset", generation, at=observed.now
        )
        return _in_phase(status, "Running", conds, job_name=name)
    if state == "Complete" and result is not None and result.ok and result.version and result.digest:
        msg = f"version {result.version}: {result.images} images in {result.classes} classes at {result.uri}"
        status = _split_coverage(status, result.missing, observed.now)
        return _in_phase(
            status,
            "Ready",
            c.finished(status.conditions, True, c.DATASET_PREPARED, msg, generation, at=observed.now),
            job_name=name,
            version=result.version,
            digest=result.digest,
            artifact_uri=result.uri,
            spec_hash=wanted,
            images=result.images,
            classes=result.classes,
            splits=result.splits,
            dropped=result.dropped,
        )
    if result is not None and not result.ok and result.reason in c.PREPARE_REASONS:
        reason, msg = result.reason, result.message or result.reason
    elif job_reason == "DeadlineExceeded":
        reason = c.DEADLINE_EXCEEDED
        msg = f"Job {name} ran past spec.activeDeadlineSeconds ({spec.active_deadline_seconds} s)"
    elif state == "Complete":
        reason, msg = c.RESULT_UNREADABLE, f"Job {name} succeeded but left no readable result"
    else:
        said = result.message if result is not None and result.message else observed.result_message
        tail = (said or observed.eviction or job_message or "no message").strip()[-1000:]
        reason, msg = c.PREPARATION_FAILED, f"Job {name} failed: {tail}"
    conds = c.finished(status.conditions, False, reason, msg, generation, at=observed.now)
    return _in_phase(status, "Failed", conds, job_name=name, spec_hash=wanted, dropped=result.dropped if result else {})
