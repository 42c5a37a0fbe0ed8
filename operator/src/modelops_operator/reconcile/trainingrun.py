"""A TrainingRun's reconciliation: rounds of trials as PyTorchJobs, the search, selection, registration.

Level-based and idempotent: everything the run needs to decide is in its status (the pinned
dataset version, each trial's parameters, state and per-epoch objective) and in the PyTorchJobs it
owns, so an operator restart picks up where it left off.

- **Rounds.** The spec fields that change the model (`datasetRef`, `model`, `hyperparameters`,
  `search`) are hashed; a new hash starts a new round: trial list cleared, the dataset re-pinned,
  running jobs of the old round deleted. A round that succeeds registers model version N+1; the
  versions before it stay in `status.models` and in the artifact store.
- **Trials.** Trial `n` of round `r` is the PyTorchJob `<run>-r<r>-t<n>`. Its parameters come from
  the search (`search.py`), a pure function of the seed, the trial number and (Bayesian) the
  finished trials in status, and are recorded on the job (annotation) and in status. A job found
  without a status entry (the operator stopped between creating it and writing status) is adopted
  with the parameters on its annotation; a create of an existing name is a no-op. So no trial is
  ever launched twice.
- **Progress** comes from the master pod's log (`epoch=N <metric>=<value>`, one line per epoch),
  which the median stopping rule judges; the **result** from its termination message (the
  trainer's summary: objective, metrics, the exported model's URI and digest).
- **Selection.** When no trial runs and none may start, the Succeeded trial with the best objective
  is registered: its ONNX file was parity-checked against PyTorch by the trainer before being
  written, and its digest is what servers verify before loading.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

import modelops_operator
from modelops_operator.api import conditions as c
from modelops_operator.api.common import Condition, ConditionStatus
from modelops_operator.api.names import PARAMETERS_ANNOTATION, ROUND_LABEL
from modelops_operator.api.trainingrun import RegisteredModel, TrainingRunSpec, TrainingRunStatus, TrialStatus
from modelops_operator.builders.trainingrun import build_pytorchjob, model_hash
from modelops_operator.reconcile import search
from modelops_operator.reconcile.dataset import termination_message
from modelops_operator.reconcile.status import Event
from modelops_operator.settings import OperatorSettings

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
FINAL = ("Succeeded", "Failed", "Stopped")
MAX_MODELS = 100
EPOCH_LINE = re.compile(r"^epoch=(\d+) ([a-z0-9_]+)=(\S+)\s*$", re.MULTILINE)


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
    """What the handler saw of one trial's master pod."""

    result_message: str | None = None
    """The termination message of its last finished container (None while none finished)."""
    log: str | None = None
    """The master pod's log while the trial runs."""
    pod_problem: str | None = None
    """Why the pod cannot start, if it cannot."""


@dataclass
class Observed:
    """The Dataset, the run's PyTorchJobs, and what the handler read from the current round's pods."""

    dataset: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    trials: dict[str, TrialObservation] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One call the handler makes on a PyTorchJob."""

    verb: Literal["create", "delete", "suspend", "resume"]
    name: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    status: TrainingRunStatus
    actions: list[Action]
    events: list[Event]


def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """(`Succeeded` | `Failed` | `Suspended` | `Running` | `Pending`, reason, message) of a PyTorchJob."""
    conds = {x.get("type"): x for x in (job.get("status") or {}).get("conditions") or [] if x.get("status") == "True"}
    for state in ("Succeeded", "Failed", "Suspended", "Running"):
        if state in conds:
            return state, conds[state].get("reason") or "", conds[state].get("message") or ""
    return "Pending", "", ""


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


def epoch_curve(log: str | None, metric: str, known: list[float] | None = None) -> list[float]:
    """The objective after each epoch (index 0 is epoch 1): `known` (from status) updated with the
    trainer's `epoch=N metric=value` lines in `log`. A resumed trial repeats epochs (the last value
    counts); epochs the log no longer holds, or reports with no finite value, keep their known
    value; an epoch with none takes the value of the nearest epoch before it (at the start: after it)."""
    values = {i + 1: v for i, v in enumerate(known or [])}
    for match in EPOCH_LINE.finditer(log or ""):
        if match.group(2) == metric:
            value = _finite(match.group(3))
            if value is not None:
                values[int(match.group(1))] = value
    if not values:
        return []
    first = values[min(values)]
    curve: list[float] = []
    for epoch in range(1, max(values) + 1):
        curve.append(values.get(epoch, curve[-1] if curve else first))
    return curve


def _index(trial: str) -> int:
    tail = trial.rsplit("-t", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _is_ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(x.get("type") == c.READY and x.get("status") == "True" for x in conds)


class _Run:
    """One reconciliation: the status being built, and the actions and events it implies."""

    def __init__(
        self,
        run: dict[str, Any],
        spec: TrainingRunSpec,
        old: TrainingRunStatus,
        observed: Observed,
        settings: OperatorSettings,
    ) -> None:
        self.run, self.spec, self.observed, self.settings = run, spec, observed, settings
        self.name = run["metadata"]["name"]
        self.generation = int(run["metadata"].get("generation") or 0)
        self.status = old.model_copy(update={"observed_generation": self.generation})
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.objective = spec.search.objective if spec.search else None
        self.metric = self.objective.metric if self.objective else "val_accuracy"
        self.maximize = (self.objective.direction if self.objective else "maximize") == "maximize"
        self.blocked: list[str] = []
        """Trials whose pods cannot start, each as `trial <name>: <Kubernetes' reason and message>`."""

    # --- status helpers ---------------------------------------------------------------------

    def cond(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        conds = c.set_condition(self.status.conditions, type_, status, reason, message, self.generation)
        self.status = self.status.model_copy(update={"conditions": conds})

    def update(self, **fields: Any) -> None:
        self.status = self.status.model_copy(update=fields)

    def set_trial(self, trial: TrialStatus) -> None:
        trials = [trial if t.name == trial.name else t for t in self.status.trials]
        if not any(t.name == trial.name for t in self.status.trials):
            trials.append(trial)
        self.update(trials=sorted(trials, key=lambda t: _index(t.name)))

    def outcome(self) -> Outcome:
        return Outcome(self.status, self.actions, self.events)

    # --- stages -----------------------------------------------------------------------------

    def reconcile(self) -> Outcome:
        wanted = model_hash(self.spec)
        if self.status.spec_hash != wanted:
            self.new_round(wanted)
        self.delete_other_rounds()
        if not self.pin_dataset():
            return self.outcome()
        if self.status.phase in ("Succeeded", "Failed"):
            return self.outcome()  # settled for this spec: never re-run
        self.observe_trials()
        self.stop_weak_trials()
        self.finish_or_launch()
        return self.outcome()

    def new_round(self, wanted: str) -> None:
        old = self.status
        self.update(
            spec_hash=wanted,
            round=old.round + 1,
            trials=[],
            best_trial=None,
            best_objective=None,
            progress=None,
            dataset_version=None,
            dataset_uri=None,
            dataset_digest=None,
            phase="Pending",
        )
        if old.spec_hash is not None:
            msg = f"the spec changed: round {old.round + 1} starts; registered models stay"
            self.events.append(Event("Normal", "NewRound", msg))

    def delete_other_rounds(self) -> None:
        for job in self.observed.jobs:
            other = (job["metadata"].get("labels") or {}).get(ROUND_LABEL) != str(self.status.round)
            if (
                other
                and job_state(job)[0] not in ("Succeeded", "Failed")
                and not job["metadata"].get("deletionTimestamp")
            ):
                self.actions.append(Action("delete", job["metadata"]["name"]))

    def transition(self, conditions: list[Condition]) -> None:
        self.update(conditions=conditions)

    def wait_for_dataset(self, reason: str, msg: str) -> bool:
        self.cond(c.DATASET_READY, F, reason, msg)
        self.transition(c.waiting(self.status.conditions, reason, msg, self.generation))
        self.update(phase="WaitingForDataset")
        return False

    def pin_dataset(self) -> bool:
        """Pin the Dataset's Ready version for this round; False while waiting for it."""
        ref = self.spec.dataset_ref
        if self.status.dataset_digest is not None:
            return True
        dataset = self.observed.dataset
        if dataset is None:
            msg = f'Dataset "{ref.name}" does not exist in this namespace; create it or fix spec.datasetRef.name'
            return self.wait_for_dataset(c.DATASET_NOT_FOUND, msg)
        ds = dataset.get("status") or {}
        if ref.version is not None and ds.get("version") != ref.version:
            msg = (
                f'Dataset "{ref.name}" is at version {ds.get("version") or "(none yet)"}, not {ref.version}; '
                "only a Dataset's current version can be trained on: fix spec.datasetRef.version or unset it"
            )
            return self.wait_for_dataset(c.DATASET_VERSION_UNAVAILABLE, msg)
        if not _is_ready(dataset) or not ds.get("digest") or not ds.get("artifactURI"):
            msg = f'Dataset "{ref.name}" has no Ready version yet; the run starts when it has one'
            return self.wait_for_dataset(c.DATASET_NOT_READY, msg)
        self.update(dataset_version=ds["version"], dataset_uri=ds["artifactURI"], dataset_digest=ds["digest"])
        msg = f'training on Dataset "{ref.name}" version {ds["version"]}'
        self.cond(c.DATASET_READY, T, c.DATASET_VERSION_PINNED, msg)
        return True

    # --- trials -----------------------------------------------------------------------------

    def round_jobs(self) -> dict[str, dict[str, Any]]:
        return {
            j["metadata"]["name"]: j
            for j in self.observed.jobs
            if (j["metadata"].get("labels") or {}).get(ROUND_LABEL) == str(self.status.round)
        }

    def epochs_of(self, parameters: dict[str, str]) -> int:
        raw = parameters.get("epochs")
        return int(float(raw)) if raw else self.spec.hyperparameters.epochs

    def job_body(self, index: int, parameters: dict[str, str]) -> dict[str, Any]:
        return build_pytorchjob(
            self.run,
            self.spec,
            self.settings,
            round_=self.status.round,
            index=index,
            parameters=parameters,
            dataset_uri=self.status.dataset_uri or "",
            dataset_digest=self.status.dataset_digest or "",
            suspend=self.spec.suspend,
        )

    def observe_trials(self) -> None:
        jobs = self.round_jobs()
        known = {t.name for t in self.status.trials}
        for name, job in jobs.items():
            if name not in known:  # created before a restart that lost the status write: adopt it
                try:
                    params = json.loads((job["metadata"].get("annotations") or {}).get(PARAMETERS_ANNOTATION, "{}"))
                except ValueError:
                    params = {}
                params = {str(k): str(v) for k, v in params.items()}
                self.set_trial(TrialStatus(name=name, parameters=params, epochs=self.epochs_of(params)))
        for trial in list(self.status.trials):
            if trial.state in FINAL:
                continue
            found = jobs.get(trial.name)
            seen = self.observed.trials.get(trial.name, TrialObservation())
            if found is None:
                if trial.state == "Running":
                    self.end_trial(
                        trial, "Failed", c.JOB_DELETED, f"PyTorchJob {trial.name} was deleted before it finished"
                    )
                else:  # recorded, but the create was lost: create it again (same name, same parameters)
                    self.actions.append(
                        Action("create", trial.name, self.job_body(_index(trial.name), trial.parameters))
                    )
                continue
            self.follow(trial, found, seen)

    def follow(self, trial: TrialStatus, job: dict[str, Any], seen: TrialObservation) -> None:
        state, job_reason, job_message = job_state(job)
        summary = parse_summary(seen.result_message)
        if state == "Succeeded":
            value = (summary.objective or {}).get("value") if summary else None
            model = summary.model if summary else {}
            if summary is None or summary.status != "Succeeded" or not model.get("uri") or not model.get("digest"):
                msg = f"PyTorchJob {trial.name} succeeded but its master pod left no readable result"
                self.end_trial(trial, "Failed", c.RESULT_UNREADABLE, msg)
                return
            objective = _finite(value)
            done = trial.model_copy(
                update={
                    "objective": objective if objective is not None else search.best_of(trial.history, self.maximize),
                    "metrics": {k: v for k, v in summary.metrics.items() if _finite(v) is not None},
                    "model_uri": model["uri"],
                    "model_digest": model["digest"],
                    "model_card_uri": model.get("modelCardUri"),
                    "epoch": summary.epochs or trial.epoch,
                    "mlflow_run_id": summary.mlflow_run_id,
                }
            )
            said = summary.message or "trained and exported"
            self.end_trial(
                done,
                "Succeeded",
                "Succeeded",
                f"{said}; MLflow: {summary.mlflow_reason}" if summary.mlflow_reason else said,
            )
        elif state == "Failed":
            if summary is not None and summary.status == "Failed" and summary.reason:
                reason, msg = summary.reason, summary.message or summary.reason
            elif "deadline" in f"{job_reason} {job_message}".lower():
                reason = c.DEADLINE_EXCEEDED
                msg = f"PyTorchJob {trial.name} ran past spec.runPolicy.activeDeadlineSeconds: {job_message}"
            else:
                said = (seen.result_message or job_message or "no message").strip()[-1000:]
                reason, msg = c.TRAINING_FAILED, f"PyTorchJob {trial.name} failed: {said}"
            self.end_trial(trial, "Failed", reason, msg)
        else:
            curve = epoch_curve(seen.log, self.metric, trial.history)
            running = "Running" if state == "Running" else "Pending"
            message = seen.pod_problem or ("suspended" if state == "Suspended" else None)
            if seen.pod_problem:
                self.blocked.append(f"trial {trial.name}: {seen.pod_problem}")
            self.set_trial(
                trial.model_copy(
                    update={
                        "state": running,
                        "history": curve,
                        "epoch": len(curve) or trial.epoch,
                        "objective": search.best_of(curve, self.maximize),
                        "message": message,
                    }
                )
            )
            if self.spec.suspend and state != "Suspended":
                self.actions.append(Action("suspend", trial.name))
            elif not self.spec.suspend and state == "Suspended":
                self.actions.append(Action("resume", trial.name))

    def end_trial(self, trial: TrialStatus, state: str, reason: str, message: str) -> None:
        self.set_trial(trial.model_copy(update={"state": state, "reason": reason, "message": c.shorten(message)}))
        kind = "Warning" if state == "Failed" else "Normal"
        shown = f" ({self.metric}={trial.objective:.4g})" if trial.objective is not None else ""
        self.events.append(Event(kind, f"Trial{state}", f"trial {trial.name} {state.lower()}{shown}: {message}"[:1024]))

    def stop(self, trial: TrialStatus, reason: str, message: str) -> None:
        self.actions.append(Action("delete", trial.name))
        self.end_trial(trial, "Stopped", reason, message)

    def stop_weak_trials(self) -> None:
        s = self.spec.search
        if s is None or s.early_stopping != "median":
            return
        curves = {t.name: t.history for t in self.status.trials if t.history}
        for trial in self.status.trials:
            if trial.state != "Running" or not trial.history:
                continue
            if trial.epochs is not None and len(trial.history) >= trial.epochs:
                continue  # training is over; it is exporting: stopping it now saves nothing
            why = search.median_stop(curves, trial.name, s.early_stopping_min_epochs, self.maximize, metric=self.metric)
            if why:
                self.stop(trial, c.MEDIAN_STOPPED, why)

    # --- the run as a whole -------------------------------------------------------------------

    def finish_or_launch(self) -> None:
        s = self.spec.search
        trials = self.status.trials
        budget = search.budget(s) if s else 1
        max_failed = s.max_failed_trials if s else 0
        failed = [t for t in trials if t.state == "Failed"]
        goal = self.objective.goal if self.objective else None
        reached = [
            t
            for t in trials
            if t.state == "Succeeded"
            and t.objective is not None
            and goal is not None
            and (t.objective >= goal if self.maximize else t.objective <= goal)
        ]
        if len(failed) > max_failed or reached:
            for t in self.status.trials:
                if t.state in ("Pending", "Running"):
                    if reached:
                        self.stop(t, c.GOAL_REACHED, f"trial {reached[0].name} reached the goal {goal}")
                    else:
                        self.stop(t, c.TRIALS_EXHAUSTED, "the failure budget is spent")
        elif not self.spec.suspend:
            self.launch(budget)
        self.update_best_trial()
        active = [t for t in self.status.trials if t.state in ("Pending", "Running")]
        if len(failed) > max_failed:
            self.fail(failed, max_failed)
        elif not active and (len(self.status.trials) >= budget or reached):
            self.select(failed)
        elif self.spec.suspend:
            msg = f"suspended: {len(active)} trial(s) stopped with a checkpoint; they resume from it when unsuspended"
            self.update(phase="Suspended", progress=self.progress(budget))
            self.cond(c.TRAINING_RUNNING, F, c.SUSPENDED, msg)
            self.transition(c.waiting(self.status.conditions, c.SUSPENDED, msg, self.generation, degraded=False))
        else:
            line = self.progress(budget)
            self.update(phase="Running", progress=line)
            # A trial whose pods cannot start (an image that cannot be pulled, no node that fits)
            # is named on Ready and Progressing, in Kubernetes' own words.
            reason, why = (c.POD_PENDING, f"{line}; {self.blocked[0]}") if self.blocked else (c.TRIALS_RUNNING, line)
            self.cond(c.TRAINING_RUNNING, T, c.TRIALS_RUNNING, line)
            self.transition(c.running(self.status.conditions, reason, why, self.generation, degraded=False))

    def launch(self, budget: int) -> None:
        s = self.spec.search
        parallelism = s.parallelism if s else 1
        while True:
            trials = self.status.trials
            active = sum(t.state in ("Pending", "Running") for t in trials)
            if active >= parallelism or len(trials) >= budget:
                return
            index = len(trials)
            history = [search.Observation(t.parameters, t.state, t.objective) for t in trials]
            params = search.propose(s, index, history) if s else {}
            body = self.job_body(index, params)
            name = body["metadata"]["name"]
            self.actions.append(Action("create", name, body))
            self.set_trial(TrialStatus(name=name, parameters=params, epochs=self.epochs_of(params)))
            shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "the spec's hyper-parameters"
            self.events.append(Event("Normal", "TrialStarted", f"trial {name} started with {shown}"))

    def update_best_trial(self) -> None:
        """`status.bestTrial` and `bestObjective`: the best objective so far among trials not failed."""
        best: TrialStatus | None = None
        for t in self.status.trials:
            if (
                t.objective is not None
                and t.state != "Failed"
                and (best is None or search.is_better(t.objective, best.objective, self.maximize))
            ):
                best = t
        self.update(best_trial=best.name if best else None, best_objective=best.objective if best else None)

    def progress(self, budget: int) -> str:
        trials = self.status.trials
        counts = {s: sum(t.state == s for t in trials) for s in ("Succeeded", "Failed", "Stopped")}
        parts = [f"{n} {s.lower()}" for s, n in counts.items() if n]
        head = f"round {self.status.round}: {len(trials)}/{budget} trials started" + (
            f" ({', '.join(parts)})" if parts else ""
        )
        running = []
        for t in trials:
            if t.state in ("Pending", "Running"):
                where = f"epoch {t.epoch or 0}/{t.epochs or '?'}"
                value = f" {self.metric}={t.history[-1]:.4g}" if t.history else ""
                running.append(f"{t.name} {t.state.lower()} {where}{value}")
        return "; ".join([head, *running])[:1024]

    def fail(self, failed: list[TrialStatus], max_failed: int) -> None:
        if self.spec.search is None and failed:
            reason, msg = failed[0].reason or c.TRAINING_FAILED, failed[0].message or "the trial failed"
        else:
            reason = c.TRIALS_EXHAUSTED
            last = failed[-1] if failed else None
            msg = f"{len(failed)} trial(s) failed, more than spec.search.maxFailedTrials ({max_failed})"
            if last is not None:
                msg += f"; the last, {last.name}: {last.reason}: {last.message}"
        self.finish_round("Failed", reason, msg)

    def select(self, failed: list[TrialStatus]) -> None:
        done = [t for t in self.status.trials if t.state == "Succeeded" and t.model_uri and t.model_digest]
        best: TrialStatus | None = done[0] if done else None
        for t in done:
            if t.objective is not None and search.is_better(
                t.objective, best.objective if best else None, self.maximize
            ):
                best = t
        if best is None:
            if self.spec.search is None and failed:
                self.fail(failed, 0)
                return
            msg = f"no trial of round {self.status.round} succeeded ({len(self.status.trials)} started)"
            self.finish_round("Failed", c.TRIALS_EXHAUSTED, msg)
            return
        version = (self.status.model_version or 0) + 1
        model = RegisteredModel(
            version=version,
            uri=best.model_uri or "",
            digest=best.model_digest or "",
            model_card_uri=best.model_card_uri,
            metrics=best.metrics,
            dataset=self.spec.dataset_ref.name,
            dataset_version=self.status.dataset_version,
            trial=best.name,
            objective=best.objective,
            parameters=best.parameters,
            code_version=modelops_operator.__version__,
            mlflow_run_id=best.mlflow_run_id,
        )
        models = [*[m for m in self.status.models if m.version != version][-(MAX_MODELS - 1) :], model]
        self.update(
            model=model, model_version=version, models=models, best_trial=best.name, best_objective=best.objective
        )
        shown = f"{self.metric}={best.objective:.4g}" if best.objective is not None else "no objective value"
        msg = f"model version {version} registered from trial {best.name} ({shown}) at {best.model_uri}"
        self.finish_round("Succeeded", c.MODEL_REGISTERED, msg)

    def finish_round(self, phase: str, reason: str, msg: str) -> None:
        budget = search.budget(self.spec.search) if self.spec.search else 1
        self.update(phase=phase, progress=self.progress(budget))
        ok = phase == "Succeeded"
        self.cond(c.TRAINING_RUNNING, F, reason, msg)
        self.transition(c.finished(self.status.conditions, ok, reason, msg, self.generation, degraded=not ok))


def reconcile_training_run(
    run: dict[str, Any], spec: TrainingRunSpec, old: TrainingRunStatus, observed: Observed, settings: OperatorSettings
) -> Outcome:
    """The status the TrainingRun should have, the PyTorchJob calls that get it there, and Events."""
    return _Run(run, spec, old, observed, settings).reconcile()


def _round_of(job: dict[str, Any]) -> int:
    raw = (job["metadata"].get("labels") or {}).get(ROUND_LABEL, "")
    return int(raw) if raw.isdigit() else 0


def inspected(status: TrainingRunStatus, jobs: list[dict[str, Any]]) -> list[str]:
    """Jobs whose pods the handler should read: those of the current round (or a later one, when
    the status write that started it was lost) whose trials are not final yet."""
    final = {t.name for t in status.trials if t.state in FINAL}
    return [j["metadata"]["name"] for j in jobs if _round_of(j) >= status.round and j["metadata"]["name"] not in final]


def master_result(pods: list[dict[str, Any]]) -> str | None:
    """The master pod's last termination message (also from a container's last state)."""
    found = termination_message(pods)
    if found is not None:
        return found
    finished = []
    for pod in pods:
        for st in (pod.get("status") or {}).get("containerStatuses") or []:
            last = (st.get("lastState") or {}).get("terminated")
            if last:
                finished.append((last.get("finishedAt") or "", last.get("message") or ""))
    return max(finished)[1] if finished else None
