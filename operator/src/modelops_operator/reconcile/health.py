"""What a status says to tools that know no modelops kind, derived in one place.

`summarise(old, new)` runs once per reconcile, where the handler finalises the status (whatever
path the kind's reconcile took, an invalid spec included). From the phase and the Ready condition
the kind's reconcile wrote, it sets:

- `Failed` (every kind) and `Succeeded` (Dataset, TrainingRun): the outcomes `kubectl wait
  --for=condition=...` ends on;
- `Reconciling` and `Stalled`, abnormal-true, as kstatus reads them (Flux's health checks, Helm 4's
  `--wait`): Reconciling=True is InProgress, Stalled=True is Failed, and neither with Ready=True
  is Current;
- `startTime` and `completionTime` of a Dataset's preparation, of a TrainingRun's round and of each
  trial, stamped when the transition is seen.

A reason nobody listed here (a newer operator's, say) never makes an object look done: Succeeded
follows Ready=True alone, Stalled only the reasons that need a person, and anything else not Ready
is Reconciling. The charts/argocd health checks read the same conditions. Pure and idempotent:
times move only on a transition, so an unchanged object writes nothing.
"""

from __future__ import annotations

from datetime import datetime

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus, StatusBase
from modelops_operator.api.dataset import DatasetStatus
from modelops_operator.api.modeldeployment import ModelDeploymentStatus
from modelops_operator.api.trainingrun import TrainingRunStatus, TrialStatus

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE

#: Phases that are a failure the operator will not leave by itself, by status model.
FAILED_PHASES: dict[type[StatusBase], frozenset[str]] = {
    DatasetStatus: frozenset({"Failed"}),
    TrainingRunStatus: frozenset({"Failed"}),
    ModelDeploymentStatus: frozenset({"Failed", "Degraded"}),
}
#: Kinds with a one-shot goal, which get a Succeeded condition.
ONE_SHOT = (DatasetStatus, TrainingRunStatus)
#: Reasons of a not-Ready object that wait for a person, whatever the phase (a ModelDeployment
#: already serving keeps its phase when refused).
STALLING_REASONS = frozenset(
    {
        c.INVALID_SPEC,
        c.NAME_CONFLICT,
        c.ROUTE_NOT_DELEGATED,
        c.ROUTE_TOO_MANY_RULES,
        c.ROUTE_NOT_ACCEPTED,
        c.ROUTE_BACKENDS_REFUSED,
        c.CREDENTIALS_NOT_ALLOWED,
        c.QUEUE_NOT_FOUND,
        c.QUOTA_EXCEEDED,
        c.KUEUE_UNAVAILABLE,
        c.WORKLOAD_DEACTIVATED,
    }
)
#: Phases in which the object holds still by design (spec.suspend, a rollout's pause step): neither
#: reconciling nor stalled; kstatus reads their Ready=False as InProgress, Argo CD as Suspended.
HOLDING_PHASES = frozenset({"Suspended", "Paused"})
#: A TrainingRun's and a trial's states that end them.
RUN_ENDS = frozenset({"Succeeded", "Failed"})
TRIAL_ENDS = frozenset({"Succeeded", "Failed", "Stopped"})
DATASET_ENDS = frozenset({"Ready", "Failed"})


def summarise(old: StatusBase, new: StatusBase, at: datetime | None = None) -> StatusBase:
    """`new` with its summary conditions and times set; `old` is the status it replaces (for the
    transitions that stamp times), `at` the time of a transition (now by default)."""
    at = at or c.now()
    new = _conditions(new, at)
    if isinstance(new, DatasetStatus) and isinstance(old, DatasetStatus):
        return _dataset_times(old, new, at)
    if isinstance(new, TrainingRunStatus) and isinstance(old, TrainingRunStatus):
        return _run_times(old, new, at)
    return new


def verdict(status: StatusBase) -> tuple[bool, bool, bool, bool]:
    """(failed, succeeded, reconciling, stalled) of a status, from its phase and Ready condition."""
    phase = str(getattr(status, "phase", ""))
    ready = c.get_condition(status.conditions, c.READY)
    is_ready = ready is not None and ready.status == T
    failed = phase in FAILED_PHASES.get(type(status), frozenset())
    stalled = failed or (not is_ready and ready is not None and ready.reason in STALLING_REASONS)
    reconciling = not is_ready and not stalled and phase not in HOLDING_PHASES
    return failed, is_ready and isinstance(status, ONE_SHOT), reconciling, stalled


def _conditions(status: StatusBase, at: datetime) -> StatusBase:
    failed, succeeded, reconciling, stalled = verdict(status)
    ready = c.get_condition(status.conditions, c.READY)
    reason = ready.reason if ready is not None else str(getattr(status, "phase", "") or "Pending")
    message = ready.message if ready is not None else ""
    wanted = [(c.FAILED, failed), (c.RECONCILING, reconciling), (c.STALLED, stalled)]
    if isinstance(status, ONE_SHOT):
        wanted.insert(1, (c.SUCCEEDED, succeeded))
    conds = status.conditions
    for type_, holds in wanted:
        conds = c.set_condition(conds, type_, T if holds else F, reason, message, status.observed_generation, at)
    return status.model_copy(update={"conditions": conds})


def _dataset_times(old: DatasetStatus, new: DatasetStatus, at: datetime) -> DatasetStatus:
    start, end = new.start_time, new.completion_time
    if new.job_name is not None and new.job_name != old.job_name:
        start, end = at, None  # a new preparation Job: the spec changed
    elif new.phase in DATASET_ENDS and old.phase not in DATASET_ENDS and start is not None:
        end = at
    return new.model_copy(update={"start_time": start, "completion_time": end})


def _run_times(old: TrainingRunStatus, new: TrainingRunStatus, at: datetime) -> TrainingRunStatus:
    start, end = new.start_time, new.completion_time
    if new.round != old.round:
        start, end = None, None  # a new round: the spec changed
    before = {t.name: t for t in old.trials} if new.round == old.round else {}
    trials = [_trial_times(before.get(t.name), t, at) for t in new.trials]
    if start is None and any(t.name not in before for t in new.trials):
        start = at
    if new.phase in RUN_ENDS and (old.phase not in RUN_ENDS or new.round != old.round) and start is not None:
        end = at
    return new.model_copy(update={"start_time": start, "completion_time": end, "trials": trials})


def _trial_times(old: TrialStatus | None, new: TrialStatus, at: datetime) -> TrialStatus:
    start, end = new.start_time, new.completion_time
    if old is None:
        start = start or at
    if new.state not in TRIAL_ENDS:
        end = None  # running, or resumed after a suspension
    elif old is None or old.state not in TRIAL_ENDS:
        end = at
    if (start, end) == (new.start_time, new.completion_time):
        return new
    return new.model_copy(update={"start_time": start, "completion_time": end})
