"""Hyper-parameter search of a TrainingRun: which parameters the next trial gets, and when to stop one.

Pure and deterministic. Every proposal is a function of the spec's `search` (its seed above all),
the trial's index and the history of earlier trials — nothing is kept in memory between calls:

- `grid` takes the `index`-th combination of the cartesian product of the parameters' options;
- `random` samples from a generator seeded with `"{seed}:{index}"`, so the same seed proposes the
  same trials in whatever order they are asked for;
- `bayesian` rebuilds an in-memory Optuna study from the history (the trials the operator keeps in
  the TrainingRun's status, with their parameters, states and objective values) on every call and
  asks Optuna's TPE sampler, seeded with `seed + index`, for the next point.

The history lives in status, so the sampler's state is rebuilt from status every time: an operator
restart loses nothing, and proposes exactly what it would have proposed without the restart.

Early stopping (`judge`) is one pruner among several, chosen by `search.earlyStopping`, and just as
stateless: `median` is the project's median stopping rule (`median_stop`); `asha` and `hyperband`
rebuild an in-memory Optuna study from the trials in status, with Optuna's `SuccessiveHalvingPruner`
or `HyperbandPruner`, report the judged trial's history epoch by epoch and ask `should_prune()`
after each, as a training loop would. Each trial's rungs are the epochs recorded in its
`rungEpochs`, so every trial competes at a rung with its value at that rung's epoch however late
the operator looked, and a restarted operator neither judges a rung twice nor decides otherwise.

Parameter values travel as strings (in status and to the trainer): integers as integers (`"64"`),
reals with six significant digits (`"0.00123"`), choices as written in the spec.
"""

from __future__ import annotations

import math
import random
import re
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from modelops_operator.api import conditions as c
from modelops_operator.api.trainingrun import Search, SearchParameter, SuccessiveHalving, TrialStatus

__all__ = [
    "GRID_LIMIT",
    "Observation",
    "Verdict",
    "budget",
    "format_value",
    "is_better",
    "judge",
    "median_stop",
    "propose",
]

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


@cache
def _load_optuna() -> None:
    """Optuna is imported where a Bayesian or successive-halving search needs it, not with the
    operator: it brings numpy and about 40 MiB of modules that an operator running neither never
    uses. Its per-trial INFO logs are silenced once, at that first import."""
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)


#: Grid combinations considered at most; a larger product is cut to its first GRID_LIMIT combinations.
GRID_LIMIT = 10_000

ParameterValue = float | int | str


@dataclass(frozen=True)
class Observation:
    """One earlier trial, as the operator stores it in status."""

    parameters: dict[str, str]
    """The trial's parameters, written as strings."""
    state: str
    """Pending, Running, Succeeded, Failed or Stopped."""
    value: float | None
    """The trial's best objective value so far (None if it reported none)."""


def budget(search: Search) -> int:
    """How many trials the search may start: maxTrials, or for grid min(maxTrials, grid size)."""
    if search.algorithm == "grid":
        return min(search.max_trials, _grid_size(search.parameters))
    return search.max_trials


def propose(search: Search, index: int, history: Sequence[Observation]) -> dict[str, str]:
    """The parameters of trial number `index` (0-based), keyed by parameter name, written as strings.

    `history` holds the trials started before this one; only `bayesian` reads it. Raises ValueError
    for a negative index, a grid index past the grid's size, or a search space that cannot be sampled.
    """
    if index < 0:
        raise ValueError(f"trial index must be >= 0, got {index}")
    if search.algorithm == "grid":
        return _propose_grid(search, index)
    if search.algorithm == "random":
        return _propose_random(search, index)
    return _propose_bayesian(search, index, history)


def format_value(parameter: SearchParameter, value: ParameterValue) -> str:
    """How a sampled value is written: ints as ints ("64"), floats with 6 significant digits via
    f"{v:.6g}", choices as given.

    A real value that rounding would carry past a bound is written as that bound instead, so a
    written value always lies within `[min, max]`.
    """
    if parameter.type == "choice":
        return str(value)
    if parameter.type == "int":
        return str(int(value))
    number = float(value)
    text = f"{number:.6g}"
    if parameter.min is not None and float(text) < parameter.min:
        return repr(float(parameter.min))
    if parameter.max is not None and float(text) > parameter.max:
        return repr(float(parameter.max))
    return text


def is_better(a: float, b: float | None, maximize: bool) -> bool:
    """Whether objective value a beats b (None is beaten by anything but NaN; NaN beats nothing)."""
    if math.isnan(a):
        return False
    if b is None or math.isnan(b):
        return True
    return a > b if maximize else a < b


def median_stop(
    curves: Mapping[str, Sequence[float]],
    trial: str,
    min_epochs: int,
    maximize: bool,
    metric: str = "objective",
) -> str | None:
    """Median stopping rule: whether `trial` should stop, and why.

    `curves[name]` is a trial's objective value per finished epoch (index 0 = epoch 1). `trial` is
    judged at its latest epoch e, and only once e >= min_epochs: its best value up to epoch e against
    the median of the best values up to epoch e of the other trials that reached epoch e (at least
    one). Returns a one-line reason when it is strictly worse (ties continue), else None. NaN values
    are ignored; a trial with only NaN values while others have some is worse than the median.
    """
    curve = curves.get(trial, ())
    epoch = len(curve)
    if epoch == 0 or epoch < min_epochs:
        return None
    others = [
        best
        for name, other in curves.items()
        if name != trial and len(other) >= epoch
        if (best := best_of(other[:epoch], maximize)) is not None
    ]
    if not others:
        return None
    median = statistics.median(others)
    count = f"{len(others)} other trial{'s' if len(others) != 1 else ''}"
    best = best_of(curve, maximize)
    if best is None:
        return f"{metric} has only NaN values up to epoch {epoch}; the median of {count} is {median:.4g}"
    if not is_better(median, best, maximize):
        return None
    return f"{metric} best {best:.4g} at epoch {epoch} is worse than the median {median:.4g} of {count}"


@dataclass(frozen=True)
class Verdict:
    """What early stopping decided about one running trial."""

    reason: str | None = None
    """The trial's stop reason (`MedianStopped`, `SuccessiveHalvingStopped`), or None to let it run."""
    message: str | None = None
    """Why, in one line."""
    rung_epochs: tuple[int, ...] | None = None
    """`asha`, `hyperband`: the epochs of every rung that has judged the trial, this call's included."""


def judge(
    search: Search,
    trials: Sequence[TrialStatus],
    name: str,
    maximize: bool,
    max_epochs: int,
    metric: str = "objective",
) -> Verdict:
    """Whether running trial `name` should stop, by the search's `earlyStopping` pruner.

    `trials` are the round's trials in index order (as in status: parameters, state, history,
    rungEpochs); `max_epochs` is the most epochs a trial may run (Hyperband's `max_resource` unless
    `successiveHalving.maxEpochs` is set). A function of its arguments alone.
    """
    if search.early_stopping == "median":
        curves = {t.name: t.history for t in trials if t.history}
        why = median_stop(curves, name, search.early_stopping_min_epochs, maximize, metric=metric)
        return Verdict(c.MEDIAN_STOPPED, why) if why else Verdict()
    if search.early_stopping in ("asha", "hyperband"):
        return _halving_verdict(search, trials, name, maximize, max_epochs, metric)
    return Verdict()


def _pruner(search: Search, max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for `asha` or `hyperband`, with the spec's settings."""
    import optuna  # noqa: PLC0415 - see _load_optuna

    halving = search.successive_halving or SuccessiveHalving()
    min_epochs = search.early_stopping_min_epochs
    if search.early_stopping == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_epochs,
            max_resource=max(halving.max_epochs or max_epochs, min_epochs),
            reduction_factor=halving.reduction_factor,
            bootstrap_count=halving.bootstrap_count,
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_epochs,
        reduction_factor=halving.reduction_factor,
        min_early_stopping_rate=halving.min_early_stopping_rate or 0,
        bootstrap_count=halving.bootstrap_count,
    )


def _rung_attrs(trial: TrialStatus) -> dict[str, float]:
    """The `completed_rung_<k>` system attributes Optuna's successive halving would have written."""
    attrs: dict[str, float] = {}
    for rung, epoch in enumerate(trial.rung_epochs or ()):
        if epoch > len(trial.history):
            break  # a history cut short (never by the operator): keep the rungs it can back
        attrs[f"completed_rung_{rung}"] = trial.history[epoch - 1]
    return attrs


def _number(trial: TrialStatus, position: int) -> int:
    """The trial's number in its round: `n` of `<run>-r<round>-t<n>`, else its position."""
    match = re.search(r"-t(\d+)$", trial.name)
    return int(match.group(1)) if match else position


def _rung_candidates(search: Search, last: int) -> set[int]:
    """Every epoch above `last` that can be a rung: successive halving promotes at
    `min_resource * reduction_factor ** (rate + rung)` (Optuna's formula), and each Hyperband
    bracket is successive halving with its own rate, so only at these epochs can `should_prune()`
    decide anything. (The tests compare the result with Optuna's loop, which asks at every epoch.)"""
    halving = search.successive_halving or SuccessiveHalving()
    epochs, epoch = set(), search.early_stopping_min_epochs
    while epoch <= 10_000:  # the longest history status holds
        if epoch > last:
            epochs.add(epoch)
        epoch *= halving.reduction_factor
    return epochs


def _halving_verdict(
    search: Search,
    trials: Sequence[TrialStatus],
    name: str,
    maximize: bool,
    max_epochs: int,
    metric: str,
) -> Verdict:
    """Successive halving by Optuna's own pruner, on a study rebuilt from `trials`.

    Each trial is added with the number in its name (gaps filled with empty trials): Hyperband
    draws a trial's bracket from the study name, fixed by the seed, and the trial's number, so the
    same status gives the same brackets.
    """
    _load_optuna()
    import optuna  # noqa: PLC0415 - see _load_optuna
    from optuna.trial import TrialState  # noqa: PLC0415

    numbered = {_number(t, i): t for i, t in enumerate(trials)}
    number = next((n for n, t in numbered.items() if t.name == name), None)
    if number is None:
        return Verdict()
    judged = numbered[number]
    study = optuna.create_study(
        study_name=f"search-{search.seed}",
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.RandomSampler(seed=search.seed),
        pruner=_pruner(search, max_epochs),
    )
    # Only the rung values matter to the pruner; the state keeps Optuna from reading a value.
    for n in range(number):
        attrs = _rung_attrs(numbered[n]) if n in numbered else {}
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=attrs))
    asked = study.ask()
    for key, value in _rung_attrs(judged).items():
        # What the pruner itself does at a rung (Trial has no public setter for system attributes).
        study._storage.set_trial_system_attr(asked._trial_id, key, value)
    for n in sorted(k for k in numbered if k > number):
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=_rung_attrs(numbered[n])))
    rung_epochs = list(judged.rung_epochs or ())[: len(_rung_attrs(judged))]
    candidates = _rung_candidates(search, max(rung_epochs, default=0))
    for epoch, value in enumerate(judged.history, start=1):
        asked.report(value, epoch)
        if epoch not in candidates:
            continue
        pruned = asked.should_prune()
        attrs = study.get_trials(deepcopy=False)[number].system_attrs
        if sum(key.startswith("completed_rung_") for key in attrs) > len(rung_epochs):
            rung_epochs.append(epoch)
        if pruned:
            return Verdict(
                c.SUCCESSIVE_HALVING_STOPPED,
                _halving_message(search, trials, judged, epoch, len(rung_epochs) - 1, metric),
                tuple(rung_epochs),
            )
    return Verdict(rung_epochs=tuple(rung_epochs))


def _halving_message(
    search: Search,
    trials: Sequence[TrialStatus],
    judged: TrialStatus,
    epoch: int,
    rung: int,
    metric: str,
) -> str:
    """One line on why successive halving stopped a trial at `rung` (its value at `epoch`)."""
    halving = search.successive_halving or SuccessiveHalving()
    value = judged.history[epoch - 1]
    if math.isnan(value):
        return f"{metric} is NaN at epoch {epoch}, a rung of {search.early_stopping}"
    where = f"{metric} {value:.4g} at epoch {epoch} (rung {rung} of {search.early_stopping})"
    key = f"completed_rung_{rung}"
    others = [t for t in trials if t.name != judged.name and key in _rung_attrs(t)]
    if len(others) + 1 <= halving.bootstrap_count:
        return f"{where}: it is among the first {halving.bootstrap_count} to reach this rung (bootstrapCount)"
    eta = halving.reduction_factor
    if search.early_stopping == "hyperband":
        return f"{where} is not in the top 1/{eta} of the trials of its bracket judged at this rung"
    keep = max((len(others) + 1) // eta, 1)
    return f"{where} is not in the top {keep} of the {len(others) + 1} trials judged at this rung (1/{eta})"


def best_of(values: Sequence[float], maximize: bool) -> float | None:
    """The best of the finite values (a diverged trial reports NaN or inf), or None when none is."""
    numbers = [v for v in values if math.isfinite(v)]
    if not numbers:
        return None
    return max(numbers) if maximize else min(numbers)


# --- grid ---------------------------------------------------------------------------------------


def _int_bounds(parameter: SearchParameter) -> tuple[int, int]:
    """The integers an `int` parameter spans, inclusive."""
    if parameter.min is None or parameter.max is None:
        raise ValueError(f"parameter {parameter.name!r} needs min and max")
    low, high = math.ceil(parameter.min), math.floor(parameter.max)
    if low > high:
        raise ValueError(f"parameter {parameter.name!r} spans no integer in [{parameter.min}, {parameter.max}]")
    return low, high


def _float_bounds(parameter: SearchParameter) -> tuple[float, float]:
    """The interval a `uniform` or `logUniform` parameter spans."""
    if parameter.min is None or parameter.max is None or not parameter.min < parameter.max:
        raise ValueError(f"parameter {parameter.name!r} needs min < max")
    if parameter.type == "logUniform" and parameter.min <= 0:
        raise ValueError(f"logUniform parameter {parameter.name!r} needs min > 0")
    return parameter.min, parameter.max


def _choices(parameter: SearchParameter) -> list[str]:
    """The options of a `choice` parameter."""
    if not parameter.values:
        raise ValueError(f"choice parameter {parameter.name!r} needs values")
    return list(parameter.values)


def _grid_axis_size(parameter: SearchParameter) -> int:
    """How many options a parameter contributes to the grid."""
    if parameter.type == "choice":
        return len(_choices(parameter))
    if parameter.type == "int":
        low, high = _int_bounds(parameter)
        return high - low + 1
    raise ValueError(f"grid search takes choice and int parameters only, not {parameter.type} ({parameter.name!r})")


def _grid_size(parameters: Sequence[SearchParameter]) -> int:
    """The number of grid combinations, capped at GRID_LIMIT."""
    size = 1
    for parameter in parameters:
        size = min(size * _grid_axis_size(parameter), GRID_LIMIT)
    return size


def _propose_grid(search: Search, index: int) -> dict[str, str]:
    """Combination `index` of itertools.product over the parameters' options, without building the product."""
    size = _grid_size(search.parameters)
    if index >= size:
        raise ValueError(f"grid index {index} is past the grid's {size} combinations")
    # itertools.product varies the last parameter fastest: decode `index` in mixed radix, last digit first.
    digits: list[int] = []
    rest = index
    for parameter in reversed(search.parameters):
        rest, digit = divmod(rest, _grid_axis_size(parameter))
        digits.append(digit)
    values: dict[str, str] = {}
    for parameter, digit in zip(search.parameters, reversed(digits), strict=True):
        if parameter.type == "choice":
            values[parameter.name] = _choices(parameter)[digit]
        else:
            values[parameter.name] = format_value(parameter, _int_bounds(parameter)[0] + digit)
    return values


# --- random -------------------------------------------------------------------------------------


def _propose_random(search: Search, index: int) -> dict[str, str]:
    """A sample from a generator seeded by (seed, index) alone."""
    rng = random.Random(f"{search.seed}:{index}")
    values: dict[str, str] = {}
    for parameter in search.parameters:
        sample: ParameterValue
        if parameter.type == "choice":
            sample = rng.choice(_choices(parameter))
        elif parameter.type == "int":
            sample = rng.randint(*_int_bounds(parameter))
        elif parameter.type == "uniform":
            sample = rng.uniform(*_float_bounds(parameter))
        else:
            low, high = _float_bounds(parameter)
            sample = min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high)
        values[parameter.name] = format_value(parameter, sample)
    return values


# --- bayesian -----------------------------------------------------------------------------------


def _distribution(parameter: SearchParameter) -> BaseDistribution:
    """The Optuna distribution of a parameter."""
    from optuna.distributions import (  # noqa: PLC0415 - see _load_optuna
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if parameter.type == "choice":
        return CategoricalDistribution(_choices(parameter))
    if parameter.type == "int":
        return IntDistribution(*_int_bounds(parameter))
    low, high = _float_bounds(parameter)
    return FloatDistribution(low, high, log=parameter.type == "logUniform")


def _parse(parameter: SearchParameter, text: str) -> ParameterValue | None:
    """A stored value converted back to its distribution's type, or None when it does not fit the space."""
    try:
        if parameter.type == "choice":
            return text if text in _choices(parameter) else None
        if parameter.type == "int":
            number = float(text)
            if not number.is_integer():
                return None
            low, high = _int_bounds(parameter)
            return int(number) if low <= number <= high else None
        real = float(text)
        low_f, high_f = _float_bounds(parameter)
        return real if low_f <= real <= high_f else None
    except ValueError:
        return None


def _study_trial(
    observation: Observation,
    parameters: Sequence[SearchParameter],
    distributions: dict[str, BaseDistribution],
) -> optuna.trial.FrozenTrial | None:
    """An earlier trial as an Optuna trial, or None when it does not fit the space or teaches nothing.

    Parameters no longer searched are dropped; a missing or out-of-space value drops the whole trial.
    """
    import optuna  # noqa: PLC0415 - see _load_optuna
    from optuna.trial import TrialState  # noqa: PLC0415

    params: dict[str, ParameterValue] = {}
    for parameter in parameters:
        text = observation.parameters.get(parameter.name)
        value = None if text is None else _parse(parameter, text)
        if value is None:
            return None
        params[parameter.name] = value
    state: TrialState
    value_: float | None = None
    if observation.state in ("Succeeded", "Stopped"):
        if observation.value is None:
            return None
        if math.isnan(observation.value):
            state = TrialState.FAIL  # as Optuna treats a NaN objective
        else:
            state, value_ = TrialState.COMPLETE, float(observation.value)
    elif observation.state == "Failed":
        state = TrialState.FAIL
    elif observation.state in ("Pending", "Queued", "Running"):
        state = TrialState.RUNNING  # lets the sampler's constant liar steer away from in-flight points
    else:
        return None
    try:
        return optuna.trial.create_trial(params=params, distributions=distributions, value=value_, state=state)
    except ValueError:
        return None


def _propose_bayesian(search: Search, index: int, history: Sequence[Observation]) -> dict[str, str]:
    """Ask a TPE sampler, seeded with `seed + index`, after replaying the history into a fresh study."""
    _load_optuna()
    import optuna  # noqa: PLC0415 - see _load_optuna

    distributions: dict[str, BaseDistribution] = {p.name: _distribution(p) for p in search.parameters}
    with warnings.catch_warnings():
        # `multivariate` is experimental in some Optuna 4 releases (ExperimentalWarning).
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=search.seed + index,
            n_startup_trials=max(2, min(10, search.max_trials // 3)),
            multivariate=True,
        )
        study = optuna.create_study(direction=search.objective.direction, sampler=sampler)
        for observation in history:
            trial = _study_trial(observation, search.parameters, distributions)
            if trial is not None:
                study.add_trial(trial)
        asked = study.ask(distributions)
    return {p.name: format_value(p, asked.params[p.name]) for p in search.parameters}
