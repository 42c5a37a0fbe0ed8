"""A TrainingRun's reconciliation: rounds of trials as jobs, the search, selection, registration.

Level-based and idempotent: everything the run needs to decide is in its status (the pinned
dataset version, each trial's parameters, state and per-epoch objective) and in the jobs it owns,
so an operator restart picks up where it left off. A trial's job is a PyTorchJob or a TrainJob
(`builders.backends`: the logic here drives either through one interface).

- **Rounds.** The spec fields that change the model (`datasetRef`, `model`, `hyperparameters`,
  `search`) are hashed; a new hash starts a new round: trial list cleared, the dataset re-pinned,
  running jobs of the old round deleted. A round that succeeds registers model version N+1; the
  versions before it stay in `status.models` and in the artifact store.
- **Trials.** Trial `n` of round `r` is the job `<run>-r<r>-t<n>`. Its parameters come from
  the search (`search.py`), a pure function of the seed, the trial number and (Bayesian) the
  finished trials in status, and are recorded on the job (annotation) and in status. A job found
  without a status entry (the operator stopped between creating it and writing status) is adopted
  with the parameters on its annotation; a create of an existing name is a no-op. So no trial is
  ever launched twice.
- **Progress** comes from the trainer's progress endpoint (`GET /progress` on the master pod,
  read by the controller; `progress.py`): epoch, step, throughput, ETA and the objective after each
  epoch, which the median stopping rule judges; the **result** from the master pod's termination
  message (the trainer's summary: objective, metrics, the exported model's URI and digest).
- **Selection.** When no trial runs and none may start, the Succeeded trial with the best objective
  is registered: its ONNX file was parity-checked against PyTorch by the trainer before being
  written, and its digest is what servers verify before loading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

import modelops_operator
from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.names import DEACTIVATED_ANNOTATION, PARAMETERS_ANNOTATION, ROUND_LABEL
from modelops_operator.api.trainingrun import (
    ACTIVE_TRIAL_STATES,
    RegisteredModel,
    TrainingRunSpec,
    TrainingRunStatus,
    TrialStatus,
)
from modelops_operator.builders.backends import TrialBackend, backend_of, chosen
from modelops_operator.builders.trainingrun import model_hash
from modelops_operator.reconcile import kueue, progress, search
from modelops_operator.reconcile.actions import Action, Event, Outcome, Registration
from modelops_operator.reconcile.progress import TrainerProgress
from modelops_operator.settings import OperatorSettings

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
FINAL = ("Succeeded", "Failed", "Stopped")
MAX_MODELS = 100
#: How long a trial's PyTorchJob created for a Kueue queue may go without a Workload before the run
#: says that Kueue does not manage it.
WORKLOAD_GRACE_SECONDS = 60
#: Reasons of a queued trial that only a person resolves.
STUCK_IN_QUEUE = (c.QUEUE_NOT_FOUND, c.QUOTA_EXCEEDED, c.KUEUE_UNAVAILABLE, c.WORKLOAD_DEACTIVATED)


class TrainSummary(BaseModel):
    """The JSON the trainer leaves in its termination message (the fields the operator reads)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    status: str
    reason: str | None = None
    message: str | None = None
    epochs: int | None = None
    objective: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    model: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    mlflow_reason: str | None = None


@dataclass
class TrialObservation:
    """What the controller saw of one trial's master pod."""

    result_message: str | None = None
    """The termination message of its last finished container (None while none finished)."""
    eviction: str | None = None
    """The latest eviction of its pods (`pods.eviction`): why the trial failed when the trainer
    itself said nothing."""
    progress: TrainerProgress | None = None
    """What the trainer reported on its progress endpoint while the trial runs (None: not read)."""
    pod_problem: str | None = None
    """Why the pod cannot start, if it cannot."""
    master_running: bool = False
    """Whether the rank-0 pod runs (what tells a TrainJob Running)."""


@dataclass
class TrainingRunObserved:
    """The Dataset, the run's PyTorchJobs, what the controller read from the current round's pods,
    and the time."""

    dataset: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    trials: dict[str, TrialObservation] = field(default_factory=dict)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The Kueue Workload of each job, by job name."""
    kueue: bool = True
    """Whether the cluster serves Kueue's Workload API."""
    backend_served: bool = True
    """Whether the cluster serves the API of the backend new trials get."""
    runtime_found: bool = True
    """With the TrainJob backend: whether the runtime its trials name exists."""
    now: datetime = field(default_factory=c.now)
    """When it was seen: the time of any condition that changes."""


def job_state(job: dict[str, Any], master_running: bool = False) -> tuple[str, str, str]:
    """(`Succeeded` | `Failed` | `Suspended` | `Running` | `Pending`, reason, message) of a trial's
    job, whichever its backend (`master_running`: whether its rank-0 pod runs)."""
    return backend_of(job).state(job, master_running)


def parse_summary(message: str | None) -> TrainSummary | None:
    if not message:
        return None
    try:
        return TrainSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number (a diverged trial reports NaN, which JSON
    and therefore status cannot hold)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _index(trial: str) -> int:
    tail = trial.rsplit("-t", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _is_ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(x.get("type") == c.READY and x.get("status") == "True" for x in conds)


@dataclass(frozen=True)
class _Context:
    """What one reconcile reads and never changes: the run, its spec, the settings, the time."""

    run: dict[str, Any]
    spec: TrainingRunSpec
    settings: OperatorSettings
    now: datetime
    job_kinds: dict[str, str] = field(default_factory=dict)
    """The kind of each of the run's jobs, by name."""
    backend_problem: tuple[str, str] | None = None
    """(reason, message) when new trials cannot be launched on the chosen backend."""

    @property
    def backend(self) -> TrialBackend:
        """The backend new trials get."""
        return chosen(self.spec, self.settings)

    def kind_of(self, trial: str) -> str:
        """The kind of a trial's job: as found, else the one new trials get."""
        return self.job_kinds.get(trial) or self.backend.api.kind

    @property
    def generation(self) -> int:
        return int(self.run["metadata"].get("generation") or 0)

    @property
    def metric(self) -> str:
        return self.spec.search.objective.metric if self.spec.search else "val_accuracy"

    @property
    def maximize(self) -> bool:
        return (self.spec.search.objective.direction if self.spec.search else "maximize") == "maximize"

    @property
    def goal(self) -> float | None:
        return self.spec.search.objective.goal if self.spec.search else None

    @property
    def budget(self) -> int:
        return search.budget(self.spec.search) if self.spec.search else 1

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial may run: the top of the search's `epochs` parameter, else
        `hyperparameters.epochs`."""
        s = self.spec.search
        for p in s.parameters if s else ():
            if p.name == "epochs":
                tops = [float(v) for v in p.values or () if _is_number(v)] + ([p.max] if p.max is not None else [])
                return max(1, int(max(tops))) if tops else self.spec.hyperparameters.epochs
        return self.spec.hyperparameters.epochs

    def epochs_of(self, parameters: dict[str, str]) -> int:
        raw = parameters.get("epochs")
        return int(float(raw)) if raw else self.spec.hyperparameters.epochs


@dataclass(frozen=True)
class Draft:
    """A reconcile so far: the status being built, the actions and events it implies, and the
    trials whose pods cannot start (`trial <name>: <Kubernetes' reason and message>`). Every step
    takes a Draft and returns a new one."""

    status: TrainingRunStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    blocked: tuple[str, ...] = ()
    queued: tuple[tuple[str, str], ...] = ()
    """(reason, `trial <name>: <why>`) of each trial waiting for Kueue."""

    def updated(self, **fields: Any) -> Draft:
        return replace(self, status=self.status.model_copy(update=fields))

    def with_condition(self, ctx: _Context, type_: str, status: ConditionStatus, reason: str, message: str) -> Draft:
        conds = c.set_condition(self.status.conditions, type_, status, reason, message, ctx.generation, ctx.now)
        return self.updated(conditions=conds)

    def with_trial(self, trial: TrialStatus) -> Draft:
        """The status with `trial` recorded (replacing the entry of that name), trials in order."""
        trials = [trial if t.name == trial.name else t for t in self.status.trials]
        if not any(t.name == trial.name for t in self.status.trials):
            trials.append(trial)
        return self.updated(trials=sorted(trials, key=lambda t: _index(t.name)))

    def plus(
        self,
        action: Action | None = None,
        event: Event | None = None,
        blocked: str | None = None,
        queued: tuple[str, str] | None = None,
    ) -> Draft:
        return replace(
            self,
            actions=self.actions + ((action,) if action else ()),
            events=self.events + ((event,) if event else ()),
            blocked=self.blocked + ((blocked,) if blocked else ()),
            queued=self.queued + ((queued,) if queued else ()),
        )

    def outcome(self) -> Outcome[TrainingRunStatus]:
        return Outcome(self.status, list(self.actions), list(self.events))


# --- the round and its dataset ------------------------------------------------------------------


def start_round(ctx: _Context, draft: Draft, wanted: str) -> Draft:
    """A new round for the spec hash `wanted`: trials, best trial, progress and dataset cleared."""
    old = draft.status
    draft = draft.updated(
        spec_hash=wanted,
        round=old.round + 1,
        trials=[],
        best_trial=None,
        best_objective=None,
        progress=None,
        percent_complete=None,
        eta_seconds=None,
        dataset_version=None,
        dataset_uri=None,
        dataset_digest=None,
        phase="Pending",
    )
    if old.spec_hash is None:
        return draft
    msg = f"the spec changed: round {old.round + 1} starts; registered models stay"
    return draft.plus(event=Event("Normal", "NewRound", msg))


def delete_other_rounds(draft: Draft, jobs: list[dict[str, Any]]) -> Draft:
    """Delete the unfinished jobs of other rounds."""
    for job in jobs:
        other = (job["metadata"].get("labels") or {}).get(ROUND_LABEL) != str(draft.status.round)
        if other and job_state(job)[0] not in ("Succeeded", "Failed") and not job["metadata"].get("deletionTimestamp"):
            draft = draft.plus(Action("delete", backend_of(job).api.kind, job["metadata"]["name"]))
    return draft


def _wait_for_dataset(ctx: _Context, draft: Draft, reason: str, msg: str) -> Draft:
    draft = draft.with_condition(ctx, c.DATASET_READY, F, reason, msg)
    conds = c.waiting(draft.status.conditions, reason, msg, ctx.generation, at=ctx.now)
    return draft.updated(conditions=conds, phase="WaitingForDataset")


def pin_dataset(ctx: _Context, draft: Draft, dataset: dict[str, Any] | None) -> tuple[Draft, bool]:
    """The round's pinned Dataset version (pinned now if it is Ready), and whether there is one."""
    ref = ctx.spec.dataset_ref
    if draft.status.dataset_digest is not None:
        return draft, True
    if dataset is None:
        msg = f'Dataset "{ref.name}" does not exist in this namespace; create it or fix spec.datasetRef.name'
        return _wait_for_dataset(ctx, draft, c.DATASET_NOT_FOUND, msg), False
    ds = dataset.get("status") or {}
    if ref.version is not None and ds.get("version") != ref.version:
        msg = (
            f'Dataset "{ref.name}" is at version {ds.get("version") or "(none yet)"}, not {ref.version}; '
            "only a Dataset's current version can be trained on: fix spec.datasetRef.version or unset it"
        )
        return _wait_for_dataset(ctx, draft, c.DATASET_VERSION_UNAVAILABLE, msg), False
    if not _is_ready(dataset) or not ds.get("digest") or not ds.get("artifactURI"):
        msg = f'Dataset "{ref.name}" has no Ready version yet; the run starts when it has one'
        return _wait_for_dataset(ctx, draft, c.DATASET_NOT_READY, msg), False
    draft = draft.updated(dataset_version=ds["version"], dataset_uri=ds["artifactURI"], dataset_digest=ds["digest"])
    msg = f'training on Dataset "{ref.name}" version {ds["version"]}'
    return draft.with_condition(ctx, c.DATASET_READY, T, c.DATASET_VERSION_PINNED, msg), True


# --- observing the trials -----------------------------------------------------------------------


def _job_body(ctx: _Context, status: TrainingRunStatus, index: int, parameters: dict[str, str]) -> dict[str, Any]:
    return ctx.backend.build(
        ctx.run,
        ctx.spec,
        ctx.settings,
        round_=status.round,
        index=index,
        parameters=parameters,
        dataset_uri=status.dataset_uri or "",
        dataset_digest=status.dataset_digest or "",
        # With a queue, Kueue starts the job when it admits it (its webhook would suspend it anyway).
        suspend=ctx.spec.suspend or bool(ctx.spec.workers.queue_name),
    )


def _adopted_parameters(job: dict[str, Any]) -> dict[str, str]:
    """The parameters recorded on a job's annotation ({} when unreadable)."""
    try:
        params = json.loads((job["metadata"].get("annotations") or {}).get(PARAMETERS_ANNOTATION, "{}"))
    except ValueError:
        params = {}
    return {str(k): str(v) for k, v in params.items()}


def observe_trials(ctx: _Context, draft: Draft, observed: TrainingRunObserved) -> Draft:
    """Each unfinished trial of the round as its job and pods show it; jobs found without a status
    entry are adopted, and a recorded trial whose job is missing is created again."""
    jobs = {
        j["metadata"]["name"]: j
        for j in observed.jobs
        if (j["metadata"].get("labels") or {}).get(ROUND_LABEL) == str(draft.status.round)
    }
    known = {t.name for t in draft.status.trials}
    for name, job in jobs.items():
        if name not in known:  # created before a restart that lost the status write: adopt it
            params = _adopted_parameters(job)
            draft = draft.with_trial(TrialStatus(name=name, parameters=params, epochs=ctx.epochs_of(params)))
    for trial in list(draft.status.trials):
        if trial.state in FINAL:
            continue
        found = jobs.get(trial.name)
        if found is not None:
            seen = observed.trials.get(trial.name, TrialObservation())
            workload = observed.workloads.get(trial.name)
            if ctx.spec.workers.queue_name or workload is not None:
                draft = follow_queued_trial(ctx, draft, trial, found, seen, workload, observed.kueue)
            else:
                draft = follow_trial(ctx, draft, trial, found, seen)
        elif trial.state == "Running":
            msg = f"{ctx.kind_of(trial.name)} {trial.name} was deleted before it finished"
            draft = end_trial(ctx, draft, trial, "Failed", c.JOB_DELETED, msg)
        elif ctx.backend_problem is None:  # recorded, but the create was lost: create it again (same name)
            body = _job_body(ctx, draft.status, _index(trial.name), trial.parameters)
            draft = draft.plus(Action("create", body["kind"], trial.name, body))
    return draft


def _succeeded_trial(ctx: _Context, draft: Draft, trial: TrialStatus, summary: TrainSummary | None) -> Draft:
    value = (summary.objective or {}).get("value") if summary else None
    model = summary.model if summary else {}
    if summary is None or summary.status != "Succeeded" or not model.get("uri") or not model.get("digest"):
        msg = f"{ctx.kind_of(trial.name)} {trial.name} succeeded but its rank-0 pod left no readable result"
        return end_trial(ctx, draft, trial, "Failed", c.RESULT_UNREADABLE, msg)
    objective = _finite(value)
    done = trial.model_copy(
        update={
            "objective": objective if objective is not None else search.best_of(trial.history, ctx.maximize),
            "metrics": {k: v for k, v in summary.metrics.items() if _finite(v) is not None},
            "model_uri": model["uri"],
            "model_digest": model["digest"],
            "model_card_uri": model.get("modelCardUri"),
            "epoch": summary.epochs or trial.epoch,
            "mlflow_run_id": summary.mlflow_run_id,
        }
    )
    said = summary.message or "trained and exported"
    message = f"{said}; MLflow: {summary.mlflow_reason}" if summary.mlflow_reason else said
    return end_trial(ctx, draft, done, "Succeeded", "Succeeded", message)


def _failed_trial(
    ctx: _Context, draft: Draft, trial: TrialStatus, job: dict[str, Any], summary: TrainSummary | None, said: str | None
) -> Draft:
    _, job_reason, job_message = job_state(job)
    kind = backend_of(job).api.kind
    if summary is not None and summary.status == "Failed" and summary.reason:
        reason, msg = summary.reason, summary.message or summary.reason
    elif "deadline" in f"{job_reason} {job_message}".lower():
        reason = c.DEADLINE_EXCEEDED
        msg = f"{kind} {trial.name} ran past spec.runPolicy.activeDeadlineSeconds: {job_message}"
    else:
        tail = (said or job_message or "no message").strip()[-1000:]
        reason, msg = c.TRAINING_FAILED, f"{kind} {trial.name} failed: {tail}"
    return end_trial(ctx, draft, trial, "Failed", reason, msg)


def follow_trial(ctx: _Context, draft: Draft, trial: TrialStatus, job: dict[str, Any], seen: TrialObservation) -> Draft:
    """One unfinished trial brought up to date with its job's state and its master pod."""
    state = job_state(job, seen.master_running)[0]
    summary = parse_summary(seen.result_message)
    if state == "Succeeded":
        return _succeeded_trial(ctx, draft, trial, summary)
    if state == "Failed":
        return _failed_trial(ctx, draft, trial, job, summary, seen.result_message or seen.eviction)
    if seen.pod_problem:
        draft = draft.plus(blocked=f"trial {trial.name}: {seen.pod_problem}")
    draft = _followed(ctx, draft, trial, state, seen)
    if ctx.spec.suspend and state != "Suspended":
        return draft.plus(Action("suspend", backend_of(job).api.kind, trial.name))
    if not ctx.spec.suspend and state == "Suspended":
        return draft.plus(Action("resume", backend_of(job).api.kind, trial.name))
    return draft


def _followed(
    ctx: _Context, draft: Draft, trial: TrialStatus, state: str, seen: TrialObservation, message: str | None = None
) -> Draft:
    """`trial` Running or Pending as its job says, with its trainer's progress."""
    reported = progress.with_progress(trial, seen.progress, ctx.metric, running=state == "Running")
    return draft.with_trial(
        reported.model_copy(
            update={
                "state": "Running" if state == "Running" else "Pending",
                "objective": search.best_of(reported.history, ctx.maximize),
                "reason": None,
                "message": seen.pod_problem or message or ("suspended" if state == "Suspended" else None),
            }
        )
    )


def _queued(ctx: _Context, draft: Draft, trial: TrialStatus, reason: str, message: str) -> Draft:
    """`trial` Queued for `reason`, with an Event when it was not queued for that reason before."""
    why = c.shorten(message, 1024)
    draft = draft.with_trial(
        trial.model_copy(
            update={"state": "Queued", "reason": reason, "message": why, "images_per_second": None, "eta_seconds": None}
        )
    )
    draft = draft.plus(queued=(reason, f"trial {trial.name}: {why}"))
    if trial.state == "Queued" and trial.reason == reason:
        return draft
    kind = "Normal" if reason in (c.QUEUED, c.PREEMPTED) else "Warning"
    return draft.plus(event=Event(kind, reason, f"trial {trial.name}: {message}"[:1024]))


#: A queued trial's reason and message, by Kueue's admission state ({queue}: the LocalQueue, {why}:
#: Kueue's message, {workload}, {kueue_reason}).
_WAITING: dict[str, tuple[str, str]] = {
    "Preempted": (c.PREEMPTED, "preempted by Kueue: {why}; it resumes from its last checkpoint when admitted again"),
    "QueueNotFound": (
        c.QUEUE_NOT_FOUND,
        "Kueue cannot admit it: {why}; create LocalQueue {queue} in this namespace (and its ClusterQueue), "
        "or fix spec.workers.queueName",
    ),
    "QuotaExceeded": (
        c.QUOTA_EXCEEDED,
        "Kueue can never admit it: {why}; lower spec.workers (resources, gpusPerNode, nodes) or raise the "
        "quota of LocalQueue {queue}'s ClusterQueue",
    ),
    "Deactivated": (
        c.WORKLOAD_DEACTIVATED,
        "its Kueue Workload {workload} was deactivated (spec.active: false) by someone else ({kueue_reason}: "
        "{why}); activate it again to let Kueue admit the trial",
    ),
    "Queued": (c.QUEUED, "waiting for admission by Kueue in LocalQueue {queue}: {why}"),
}


def follow_queued_trial(
    ctx: _Context,
    draft: Draft,
    trial: TrialStatus,
    job: dict[str, Any],
    seen: TrialObservation,
    workload: dict[str, Any] | None,
    served: bool,
) -> Draft:
    """One unfinished trial whose job Kueue admits (a queue is named, or Kueue made a
    Workload for it). Kueue alone sets the job's `runPolicy.suspend`: the operator never resumes
    it, and suspends for `spec.suspend` by deactivating the Workload (and activates again only a
    Workload it deactivated itself)."""
    state = job_state(job, seen.master_running)[0]
    if state in ("Succeeded", "Failed"):
        return follow_trial(ctx, draft, trial, job, seen)
    queue = ctx.spec.workers.queue_name or (job["metadata"].get("labels") or {}).get(names.KUEUE_QUEUE_LABEL)
    if workload is None:
        return _without_workload(ctx, draft, trial, job, state, seen, served, queue)
    adm = kueue.admission(workload)
    if ctx.spec.suspend:
        draft = _followed(ctx, draft, trial, state, seen, message="suspended")
        if adm.active:
            patch = {"metadata": {"annotations": {DEACTIVATED_ANNOTATION: "true"}}, "spec": {"active": False}}
            draft = draft.plus(Action("patch", names.WORKLOAD.kind, adm.name, patch))
        return draft
    if not adm.active and adm.ours:
        patch = {"metadata": {"annotations": {DEACTIVATED_ANNOTATION: None}}, "spec": {"active": True}}
        draft = draft.plus(Action("patch", names.WORKLOAD.kind, adm.name, patch))
        msg = f"unsuspended: waiting for Kueue to admit it again in LocalQueue {queue}"
        return _queued(ctx, draft, trial, c.QUEUED, msg)
    if adm.state in ("Admitted", "Finished"):
        draft = _followed(ctx, draft, trial, state, seen)
        if trial.state == "Queued":
            resumes = "; it resumes from its last checkpoint" if trial.history else ""
            where = f" (ClusterQueue {adm.cluster_queue})" if adm.cluster_queue else ""
            draft = draft.plus(
                event=Event("Normal", c.ADMITTED, f"trial {trial.name} admitted by Kueue{where}{resumes}")
            )
        return draft
    reason, template = _WAITING[adm.state]
    why = adm.message or "no quota reserved yet"
    msg = template.format(queue=queue, why=why, workload=adm.name, kueue_reason=adm.reason)
    return _queued(ctx, draft, trial, reason, msg)


def _without_workload(
    ctx: _Context,
    draft: Draft,
    trial: TrialStatus,
    job: dict[str, Any],
    state: str,
    seen: TrialObservation,
    served: bool,
    queue: str | None,
) -> Draft:
    """A trial for a Kueue queue whose Workload is not there (yet)."""
    if state == "Running":  # not held by Kueue (created before it was installed): it runs
        return _followed(ctx, draft, trial, state, seen)
    if not served:
        msg = (
            f"{backend_of(job).api.kind} {trial.name} waits for Kueue (LocalQueue {queue}), but the cluster does "
            f"not serve Kueue's Workload API ({names.WORKLOAD.crd}): install Kueue, or unset spec.workers.queueName"
        )
        return _queued(ctx, draft, trial, c.KUEUE_UNAVAILABLE, msg)
    created = job["metadata"].get("creationTimestamp")
    age = (ctx.now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds() if created else 0
    if age > WORKLOAD_GRACE_SECONDS:
        msg = (
            f"Kueue made no Workload for {backend_of(job).api.kind} {trial.name} in {WORKLOAD_GRACE_SECONDS} s: "
            f"is Kueue running, and does its configuration integrate {backend_of(job).kueue_framework}?"
        )
        if priority := ctx.spec.workers.workload_priority_class:
            msg += f" Does the WorkloadPriorityClass {priority} (spec.workers.workloadPriorityClass) exist?"
        return _queued(ctx, draft, trial, c.KUEUE_UNAVAILABLE, msg)
    return _queued(ctx, draft, trial, c.QUEUED, f"waiting for Kueue to queue it in LocalQueue {queue}")


def end_trial(ctx: _Context, draft: Draft, trial: TrialStatus, state: str, reason: str, message: str) -> Draft:
    """`trial` recorded as final in `state`, with an Event."""
    ended = {
        "state": state,
        "reason": reason,
        "message": c.shorten(message),
        "images_per_second": None,
        "eta_seconds": None,
    }
    draft = draft.with_trial(trial.model_copy(update=ended))
    kind = "Warning" if state == "Failed" else "Normal"
    shown = f" ({ctx.metric}={trial.objective:.4g})" if trial.objective is not None else ""
    return draft.plus(
        event=Event(kind, f"Trial{state}", f"trial {trial.name} {state.lower()}{shown}: {message}"[:1024])
    )


def stop_trial(ctx: _Context, draft: Draft, trial: TrialStatus, reason: str, message: str) -> Draft:
    draft = draft.plus(Action("delete", ctx.kind_of(trial.name), trial.name))
    return end_trial(ctx, draft, trial, "Stopped", reason, message)


# --- deciding -------------------------------------------------------------------------------------


def stop_weak_trials(ctx: _Context, draft: Draft) -> Draft:
    """The search's early-stopping pruner (median, asha, hyperband) over the running trials, in
    trial order; each judgement sees the rungs the ones before it recorded."""
    s = ctx.spec.search
    if s is None or s.early_stopping == "none":
        return draft
    names = [t.name for t in draft.status.trials]
    for name in names:
        trial = next(t for t in draft.status.trials if t.name == name)
        if trial.state != "Running" or not trial.history:
            continue
        if trial.epochs is not None and len(trial.history) >= trial.epochs:
            continue  # training is over; it is exporting: stopping it now saves nothing
        verdict = search.judge(s, draft.status.trials, name, ctx.maximize, ctx.max_epochs, metric=ctx.metric)
        if verdict.rung_epochs is not None and list(verdict.rung_epochs) != (trial.rung_epochs or []):
            trial = trial.model_copy(update={"rung_epochs": list(verdict.rung_epochs)})
            draft = draft.with_trial(trial)
        if verdict.reason:
            draft = stop_trial(ctx, draft, trial, verdict.reason, verdict.message or verdict.reason)
    return draft


def decide_round(ctx: _Context, draft: Draft) -> Draft:
    """Stop what is left once the goal is reached or the failure budget spent, else launch trials;
    then the round's phase: failed, a model selected, suspended, or running."""
    s = ctx.spec.search
    max_failed = s.max_failed_trials if s else 0
    failed = [t for t in draft.status.trials if t.state == "Failed"]
    goal = ctx.goal
    reached = [
        t
        for t in draft.status.trials
        if t.state == "Succeeded"
        and t.objective is not None
        and goal is not None
        and (t.objective >= goal if ctx.maximize else t.objective <= goal)
    ]
    if len(failed) > max_failed or reached:
        for t in draft.status.trials:
            if t.state in ACTIVE_TRIAL_STATES:
                if reached:
                    draft = stop_trial(
                        ctx, draft, t, c.GOAL_REACHED, f"trial {reached[0].name} reached the goal {goal}"
                    )
                else:
                    draft = stop_trial(ctx, draft, t, c.TRIALS_EXHAUSTED, "the failure budget is spent")
    elif not ctx.spec.suspend and ctx.backend_problem is None:
        draft = launch_trials(ctx, draft)
    draft = with_best_trial(ctx, draft)
    active = [t for t in draft.status.trials if t.state in ACTIVE_TRIAL_STATES]
    if len(failed) > max_failed:
        return fail_round(ctx, draft, failed, max_failed)
    if not active and (len(draft.status.trials) >= ctx.budget or reached):
        return select_model(ctx, draft, failed, reached[0] if reached else None)
    line = progress_line(ctx, draft.status)
    draft = with_run_progress(ctx, draft)
    if ctx.spec.suspend:
        msg = f"suspended: {len(active)} trial(s) stopped with a checkpoint; they resume from it when unsuspended"
        draft = draft.updated(phase="Suspended", progress=line, eta_seconds=None)  # nothing moves
        draft = draft.with_condition(ctx, c.TRAINING_RUNNING, F, c.SUSPENDED, msg)
        conds = c.waiting(draft.status.conditions, c.SUSPENDED, msg, ctx.generation, degraded=False, at=ctx.now)
        return draft.updated(conditions=conds)
    # What only a person resolves: the backend cannot take the trials, or Kueue never admits them.
    unusable = [ctx.backend_problem] if ctx.backend_problem else []
    if stuck := unusable + [q for q in draft.queued if q[0] in STUCK_IN_QUEUE]:
        reason, why = stuck[0]
        phase = "Running" if any(t.state == "Running" for t in active) else "Queued" if draft.queued else "Pending"
        draft = draft.updated(phase=phase, progress=line)
        draft = draft.with_condition(ctx, c.TRAINING_RUNNING, F, reason, why)
        conds = c.waiting(draft.status.conditions, reason, why, ctx.generation, degraded=True, at=ctx.now)
        return draft.updated(conditions=conds)
    if draft.queued and not any(t.state != "Queued" for t in active):
        reason, why = draft.queued[0]
        draft = draft.updated(phase="Queued", progress=line, eta_seconds=None)
        draft = draft.with_condition(ctx, c.TRAINING_RUNNING, F, reason, why)
        conds = c.waiting(draft.status.conditions, reason, why, ctx.generation, degraded=False, at=ctx.now)
        return draft.updated(conditions=conds)
    draft = draft.updated(phase="Running", progress=line)
    # A trial whose pods cannot start (an image that cannot be pulled, no node that fits) is named
    # on Ready and Progressing, in Kubernetes' own words.
    reason, why = (c.POD_PENDING, f"{line}; {draft.blocked[0]}") if draft.blocked else (c.TRIALS_RUNNING, line)
    draft = draft.with_condition(ctx, c.TRAINING_RUNNING, T, c.TRIALS_RUNNING, line)
    conds = c.running(draft.status.conditions, reason, why, ctx.generation, degraded=False, at=ctx.now)
    return draft.updated(conditions=conds)


def launch_trials(ctx: _Context, draft: Draft) -> Draft:
    """New trials, up to the search's parallelism and budget."""
    s = ctx.spec.search
    parallelism = s.parallelism if s else 1
    while True:
        trials = draft.status.trials
        active = sum(t.state in ACTIVE_TRIAL_STATES for t in trials)
        if active >= parallelism or len(trials) >= ctx.budget:
            return draft
        index = len(trials)
        history = [search.Observation(t.parameters, t.state, t.objective) for t in trials]
        params = search.propose(s, index, history) if s else {}
        body = _job_body(ctx, draft.status, index, params)
        name = body["metadata"]["name"]
        shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "the spec's hyper-parameters"
        draft = draft.plus(
            Action("create", body["kind"], name, body),
            Event("Normal", "TrialStarted", f"trial {name} started with {shown}"),
        )
        draft = draft.with_trial(TrialStatus(name=name, parameters=params, epochs=ctx.epochs_of(params)))


def with_best_trial(ctx: _Context, draft: Draft) -> Draft:
    """`status.bestTrial` and `bestObjective`: the best objective so far among trials not failed."""
    best: TrialStatus | None = None
    for t in draft.status.trials:
        if (
            t.objective is not None
            and t.state != "Failed"
            and (best is None or search.is_better(t.objective, best.objective, ctx.maximize))
        ):
            best = t
    return draft.updated(best_trial=best.name if best else None, best_objective=best.objective if best else None)


def with_run_progress(ctx: _Context, draft: Draft) -> Draft:
    """`status.percentComplete` and `etaSeconds` from the trials (see `progress.py`)."""
    status = draft.status
    parallelism = ctx.spec.search.parallelism if ctx.spec.search else 1
    return draft.updated(
        percent_complete=progress.percent_complete(status, ctx.budget),
        eta_seconds=progress.eta_seconds(status, ctx.budget, parallelism, ctx.now),
    )


def progress_line(ctx: _Context, status: TrainingRunStatus) -> str:
    """`status.progress`: trials started and finished, and where each running one is."""
    trials = status.trials
    counts = {s: sum(t.state == s for t in trials) for s in ("Succeeded", "Failed", "Stopped")}
    parts = [f"{n} {s.lower()}" for s, n in counts.items() if n]
    head = f"round {status.round}: {len(trials)}/{ctx.budget} trials started" + (
        f" ({', '.join(parts)})" if parts else ""
    )
    running = []
    for t in trials:
        if t.state in ACTIVE_TRIAL_STATES:
            where = f"epoch {t.epoch or 0}/{t.epochs or '?'}"
            value = f" {ctx.metric}={t.history[-1]:.4g}" if t.history else ""
            running.append(f"{t.name} {t.state.lower()} {where}{value}")
    return "; ".join([head, *running])[:1024]


def fail_round(ctx: _Context, draft: Draft, failed: list[TrialStatus], max_failed: int) -> Draft:
    if ctx.spec.search is None and failed:
        reason, msg = failed[0].reason or c.TRAINING_FAILED, failed[0].message or "the trial failed"
    else:
        reason = c.TRIALS_EXHAUSTED
        last = failed[-1] if failed else None
        msg = f"{len(failed)} trial(s) failed, more than spec.search.maxFailedTrials ({max_failed})"
        if last is not None:
            msg += f"; the last, {last.name}: {last.reason}: {last.message}"
    return end_round(ctx, draft, "Failed", reason, msg)


def select_model(ctx: _Context, draft: Draft, failed: list[TrialStatus], reached: TrialStatus | None = None) -> Draft:
    """Register the best succeeded trial's model as the next version (or fail the round); when
    trial `reached` met the goal, the message says that the goal ended the search."""
    status = draft.status
    done = [t for t in status.trials if t.state == "Succeeded" and t.model_uri and t.model_digest]
    best: TrialStatus | None = done[0] if done else None
    for t in done:
        if t.objective is not None and search.is_better(t.objective, best.objective if best else None, ctx.maximize):
            best = t
    if best is None:
        if ctx.spec.search is None and failed:
            return fail_round(ctx, draft, failed, 0)
        msg = f"no trial of round {status.round} succeeded ({len(status.trials)} started)"
        return end_round(ctx, draft, "Failed", c.TRIALS_EXHAUSTED, msg)
    version = (status.model_version or 0) + 1
    model = RegisteredModel(
        version=version,
        uri=best.model_uri or "",
        digest=best.model_digest or "",
        model_card_uri=best.model_card_uri,
        metrics=best.metrics,
        dataset=ctx.spec.dataset_ref.name,
        dataset_version=status.dataset_version,
        trial=best.name,
        objective=best.objective,
        parameters=best.parameters,
        code_version=modelops_operator.__version__,
        mlflow_run_id=best.mlflow_run_id,
    )
    models = [*[m for m in status.models if m.version != version][-(MAX_MODELS - 1) :], model]
    draft = draft.updated(
        model=model, model_version=version, models=models, best_trial=best.name, best_objective=best.objective
    )
    shown = f"{ctx.metric}={best.objective:.4g}" if best.objective is not None else "no objective value"
    msg = f"model version {version} registered from trial {best.name} ({shown}) at {best.model_uri}"
    if reached is not None:
        bound = ">=" if ctx.maximize else "<="
        msg += (
            f"; the search stopped at the goal: trial {reached.name} reached {ctx.metric} {bound} {ctx.goal}"
            f" after {len(status.trials)} of {ctx.budget} trials ({c.GOAL_REACHED})"
        )
    return end_round(ctx, draft, "Succeeded", c.MODEL_REGISTERED, msg)


def end_round(ctx: _Context, draft: Draft, phase: str, reason: str, msg: str) -> Draft:
    """The round is over, in `phase` ("Succeeded" or "Failed")."""
    ok = phase == "Succeeded"
    done = 100 if ok else progress.percent_complete(draft.status, ctx.budget)
    draft = draft.updated(
        phase=phase, progress=progress_line(ctx, draft.status), percent_complete=done, eta_seconds=None
    )
    draft = draft.with_condition(ctx, c.TRAINING_RUNNING, F, reason, msg)
    conds = c.finished(draft.status.conditions, ok, reason, msg, ctx.generation, degraded=not ok, at=ctx.now)
    return draft.updated(conditions=conds)


# --- the reconcile --------------------------------------------------------------------------------


def backend_problem(ctx: _Context, observed: TrainingRunObserved) -> tuple[str, str] | None:
    """Why new trials cannot be launched on the chosen backend, as (reason, message); None when
    they can."""
    backend = ctx.backend
    if not observed.backend_served:
        return c.TRAINING_BACKEND_UNAVAILABLE, (
            f"trials run as {backend.api.kind}s, but the cluster does not serve {backend.api.crd}: install "
            f"{'Kubeflow Trainer v2' if backend.api.group.startswith('trainer.') else 'the Kubeflow training operator'}"
            ", or choose the other backend in spec.workers.backend"
        )
    if fields := backend.unsupported(ctx.spec, ctx.settings):
        return c.UNSUPPORTED_BY_BACKEND, (
            f"the {backend.api.kind} backend cannot carry {', '.join(fields)}: unset them, set them in the "
            "Trainer v2 runtime, or choose spec.workers.backend PyTorchJob"
        )
    if not observed.runtime_found:
        ref = ctx.spec.workers.runtime_ref
        name, kind = (ref.name, ref.kind) if ref else (ctx.settings.training_runtime, "ClusterTrainingRuntime")
        where = " in this namespace" if kind == "TrainingRuntime" else ""
        default = (
            "" if ref else " (the operator's MODELOPS_TRAINING_RUNTIME; chart value trainingRuntime.create installs it)"
        )
        return (
            c.RUNTIME_NOT_FOUND,
            f"{kind} {name}{where} does not exist: create it, or fix spec.workers.runtimeRef{default}",
        )
    return None


def reconcile_training_run(
    run: dict[str, Any],
    spec: TrainingRunSpec,
    old: TrainingRunStatus,
    observed: TrainingRunObserved,
    settings: OperatorSettings,
) -> Outcome[TrainingRunStatus]:
    """The status the TrainingRun should have, the PyTorchJob calls (and MLflow registration) that
    get it there, and Events: observe the trials, decide, act."""
    ctx = _Context(run, spec, settings, observed.now)
    ctx = replace(
        ctx,
        job_kinds={j["metadata"]["name"]: backend_of(j).api.kind for j in observed.jobs},
        backend_problem=backend_problem(ctx, observed),
    )
    draft = Draft(old.model_copy(update={"observed_generation": ctx.generation}))
    wanted = model_hash(spec)
    if draft.status.spec_hash != wanted:
        draft = start_round(ctx, draft, wanted)
    draft = delete_other_rounds(draft, observed.jobs)
    draft, pinned = pin_dataset(ctx, draft, observed.dataset)
    if pinned and draft.status.phase not in ("Succeeded", "Failed"):  # settled for this spec: never re-run
        draft = observe_trials(ctx, draft, observed)
        draft = stop_weak_trials(ctx, draft)
        draft = decide_round(ctx, draft)
    if registration := registration_of(run, spec, draft.status):
        draft = draft.plus(Action("register", "TrainingRun", run["metadata"]["name"], registration=registration))
    return draft.outcome()


# --- MLflow -----------------------------------------------------------------------------------------


def registration_of(run: dict[str, Any], spec: TrainingRunSpec, status: TrainingRunStatus) -> Registration | None:
    """The MLflow registration of the latest model version, when the spec names a tracking server
    and the version is not recorded there yet (once per version: the version lands in status)."""
    reg, model = spec.registry, status.model
    if not reg.mlflow_tracking_uri or model is None or model.mlflow_version is not None:
        return None
    ns, name = run["metadata"].get("namespace"), run["metadata"].get("name")
    return Registration(
        tracking_uri=reg.mlflow_tracking_uri,
        model_name=reg.model_name or (name or ""),
        uri=model.uri,
        digest=model.digest,
        description=f"modelops TrainingRun {ns}/{name} v{model.version}",
        tags={
            names.MLFLOW_TRAINING_RUN_TAG: f"{ns}/{name}",
            names.MLFLOW_VERSION_TAG: str(model.version),
            names.MLFLOW_DATASET_TAG: f"{model.dataset}@{model.dataset_version}",
            names.MLFLOW_TRIAL_TAG: model.trial or "",
        },
        credentials_secret=reg.credentials_secret,
        model_version=model.version,
        ca_secret=reg.ca_secret,
        run_id=model.mlflow_run_id,
    )


def registered(
    status: TrainingRunStatus, registration: Registration, mlflow_version: str, now: datetime
) -> Outcome[TrainingRunStatus]:
    """The status once MLflow holds the model as `mlflow_version`, and the Event saying so."""
    assert status.model is not None
    model = status.model.model_copy(update={"mlflow_version": mlflow_version})
    models = [model if m.version == model.version else m for m in status.models]
    msg = f'model version {model.version} is version {mlflow_version} of "{registration.model_name}" in MLflow'
    conds = c.set_condition(
        status.conditions, c.MLFLOW_REGISTERED, T, c.MLFLOW_VERSION_CREATED, msg, status.observed_generation, now
    )
    new = status.model_copy(update={"model": model, "models": models, "conditions": conds})
    return Outcome(new, events=[Event("Normal", c.MLFLOW_VERSION_CREATED, msg)])


def registration_failed(status: TrainingRunStatus, message: str, now: datetime) -> TrainingRunStatus:
    """The status when MLflow refused or could not be reached (tried again at the next reconcile)."""
    conds = c.set_condition(
        status.conditions,
        c.MLFLOW_REGISTERED,
        F,
        c.MLFLOW_REGISTRATION_FAILED,
        message,
        status.observed_generation,
        now,
    )
    return status.model_copy(update={"conditions": conds})


def may_launch(status: TrainingRunStatus) -> bool:
    """Whether a run in this status may still launch trials (the controller then checks the
    backend's runtime): not once its round has settled."""
    return status.phase not in ("Succeeded", "Failed")


def _round_of(job: dict[str, Any]) -> int:
    raw = (job["metadata"].get("labels") or {}).get(ROUND_LABEL, "")
    return int(raw) if raw.isdigit() else 0


def inspected(status: TrainingRunStatus, jobs: list[dict[str, Any]]) -> list[str]:
    """Jobs whose pods the controller should read: those of the current round (or a later one, when
    the status write that started it was lost) whose trials are not final yet."""
    final = {t.name for t in status.trials if t.state in FINAL}
    return [j["metadata"]["name"] for j in jobs if _round_of(j) >= status.round and j["metadata"]["name"] not in final]
