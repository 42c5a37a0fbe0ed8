"""Training progress: what a trial's trainer reports on `GET /progress`, and the status it implies.

The trainer (rank 0 of the master pod) serves JSON on `MODELOPS_PROGRESS_PORT`; the controller
reads it for each running trial (`controllers/trainingrun.py`) and hands the bytes here. A body that
is not valid is no progress: the trial's status keeps what it had. Per-trial values go to
`status.trials[]` (epoch, step, images per second, ETA, the objective per epoch for median
stopping); the run-level `percentComplete` and `etaSeconds` are computed from the trials.
"""

from __future__ import annotations

import heapq
import math
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from modelops_operator.api.trainingrun import ACTIVE_TRIAL_STATES, TrainingRunStatus, TrialStatus

FINAL = ("Succeeded", "Failed", "Stopped")


class TrainerProgress(BaseModel):
    """The trainer's `GET /progress` document (the fields the operator reads)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    epoch: int = Field(ge=0)
    """Epochs finished."""
    epochs: int | None = Field(default=None, ge=1)
    step: int = Field(ge=0)
    step_in_epoch: int | None = Field(default=None, ge=0)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    images_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    eta_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    metric: str | None = Field(default=None, max_length=253)
    history: list[float | None] = Field(default_factory=list, max_length=10_000)
    """The objective after each finished epoch (index 0 is epoch 1); null where it was not finite."""
    started_at: datetime | None = None
    updated_at: datetime | None = None


def parse_progress(body: bytes) -> TrainerProgress | None:
    """`body` as a progress document; None when it is not one (bad JSON, wrong types, NaN)."""
    try:
        return TrainerProgress.model_validate_json(body)
    except (ValidationError, ValueError):
        return None


def curve(reported: list[float | None], known: list[float]) -> list[float]:
    """The objective after each epoch: `known` (status) updated with the trainer's `reported` values.

    The trainer's history is complete (a resumed trainer rebuilds it from its checkpoint), but a
    trainer that has just restarted reports none until it has read its checkpoint: epochs it does
    not report, or reports with no finite value, keep their known value; an epoch with none takes
    the value of the nearest epoch before it (at the start: after it)."""
    values = {i + 1: v for i, v in enumerate(known)}
    for i, value in enumerate(reported):
        if value is not None and math.isfinite(value):
            values[i + 1] = value
    if not values:
        return []
    first = values[min(values)]
    out: list[float] = []
    for epoch in range(1, max(values) + 1):
        out.append(values.get(epoch, out[-1] if out else first))
    return out


def with_progress(trial: TrialStatus, seen: TrainerProgress | None, metric: str, running: bool) -> TrialStatus:
    """`trial` updated with what its trainer reported (`seen`: None when it could not be read, which
    keeps the previous values). Throughput and ETA are only shown while the trial runs."""
    update: dict[str, object] = {}
    if seen is not None:
        reported = seen.history if seen.metric in (None, metric) else []
        update = {
            "history": curve(reported, trial.history),
            "epoch": seen.epoch,
            "step": seen.step,
            "steps_per_epoch": seen.steps_per_epoch or trial.steps_per_epoch,
            "images_per_second": seen.images_per_second,
            "eta_seconds": seen.eta_seconds,
        }
    if not running:
        update |= {"images_per_second": None, "eta_seconds": None}
    return trial.model_copy(update=update) if update else trial


def fraction_done(trial: TrialStatus) -> float:
    """How much of `trial` is done, 0 to 1: a final trial all of it, a running one by its epochs
    and the steps into the current epoch."""
    if trial.state in FINAL:
        return 1.0
    if not trial.epochs:
        return 0.0
    done = float(trial.epoch or 0)
    if trial.step is not None and trial.steps_per_epoch:
        into = trial.step - (trial.epoch or 0) * trial.steps_per_epoch
        done += min(1.0, max(0.0, into / trial.steps_per_epoch))
    return min(1.0, done / trial.epochs)


def percent_complete(status: TrainingRunStatus, budget: int) -> int:
    """The round's training done, in percent of its trial budget (rounded down: 100 only when all is)."""
    if budget <= 0:
        return 0
    done = sum(fraction_done(t) for t in status.trials)
    return min(100, math.floor(100 * done / budget))


def _seconds(trial: TrialStatus, now: datetime) -> float | None:
    """A trial's duration: start to completion, or (running) what its progress implies."""
    if trial.start_time is None:
        return None
    if trial.state == "Succeeded" and trial.completion_time is not None:
        return max(0.0, (trial.completion_time - trial.start_time).total_seconds())
    if trial.state == "Running" and trial.eta_seconds is not None:
        return max(0.0, (now - trial.start_time).total_seconds()) + trial.eta_seconds
    return None


def eta_seconds(status: TrainingRunStatus, budget: int, parallelism: int, now: datetime) -> float | None:
    """Seconds until the round's last trial ends training (None: nothing to estimate from).

    Each of `parallelism` slots is busy until its running trial's ETA (a pending trial: a whole
    trial); every trial still to start takes the earliest free slot for the mean trial duration
    (the succeeded trials', or before any, the running ones' elapsed time plus ETA)."""
    durations = [d for t in status.trials if t.state == "Succeeded" and (d := _seconds(t, now)) is not None]
    if not durations:
        durations = [d for t in status.trials if t.state == "Running" and (d := _seconds(t, now)) is not None]
    mean = sum(durations) / len(durations) if durations else None
    slots: list[float] = []
    for t in status.trials:
        if t.state == "Running" and t.eta_seconds is not None:
            slots.append(t.eta_seconds)
        elif t.state in ACTIVE_TRIAL_STATES:
            if mean is None:
                return None
            slots.append(mean)
    slots += [0.0] * max(0, parallelism - len(slots))
    heapq.heapify(slots)
    for _ in range(max(0, budget - len(status.trials))):
        if mean is None:
            return None
        heapq.heappush(slots, heapq.heappop(slots) + mean)
    return round(max(slots), 1) if slots else 0.0
