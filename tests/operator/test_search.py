"""Hyper-parameter search: grid, random and bayesian proposals, the budget, median stopping, and
successive halving (asha, hyperband) decided from status alone."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from modelops_operator.api import conditions as c
from modelops_operator.api.trainingrun import Search, SearchParameter, TrialStatus
from modelops_operator.reconcile.search import (
    GRID_LIMIT,
    Observation,
    budget,
    format_value,
    is_better,
    judge,
    median_stop,
    propose,
)

LR: dict[str, Any] = {"name": "learningRate", "type": "logUniform", "min": 1e-5, "max": 1e-1}
MOMENTUM: dict[str, Any] = {"name": "momentum", "type": "uniform", "min": 0.5, "max": 0.99}
BATCH: dict[str, Any] = {"name": "batchSize", "type": "int", "min": 16, "max": 128}
ARCHITECTURES = ["resnet18", "resnet34", "mobilenet_v3_small"]
ARCH: dict[str, Any] = {"name": "architecture", "type": "choice", "values": ARCHITECTURES}
MIXED: list[dict[str, Any]] = [LR, MOMENTUM, BATCH, ARCH]


def search(algorithm: str, parameters: list[dict[str, Any]], **extra: Any) -> Search:
    return Search.model_validate({"algorithm": algorithm, "parameters": parameters, **extra})


def param(spec: dict[str, Any]) -> SearchParameter:
    return SearchParameter.model_validate(spec)


def assert_in_space(values: dict[str, str], parameters: list[dict[str, Any]]) -> None:
    assert set(values) == {p["name"] for p in parameters}
    for p in parameters:
        text = values[p["name"]]
        if p["type"] == "choice":
            assert text in p["values"]
        elif p["type"] == "int":
            assert text == str(int(text)), text  # written as an integer
            assert p["min"] <= int(text) <= p["max"]
        else:
            assert p["min"] <= float(text) <= p["max"], text


# --- grid ---------------------------------------------------------------------------------------


def test_grid_enumerates_the_product_in_order():
    params: list[dict[str, Any]] = [
        {"name": "architecture", "type": "choice", "values": ["resnet18", "resnet34"]},
        {"name": "batchSize", "type": "int", "min": 32, "max": 34},
        {"name": "optimizer", "type": "choice", "values": ["adamw", "sgd"]},
    ]
    s = search("grid", params, maxTrials=100)
    expected = [
        {"architecture": a, "batchSize": str(b), "optimizer": o}
        for a, b, o in itertools.product(["resnet18", "resnet34"], [32, 33, 34], ["adamw", "sgd"])
    ]
    assert budget(s) == 12
    assert [propose(s, i, []) for i in range(12)] == expected
    with pytest.raises(ValueError, match="past the grid"):
        propose(s, 12, [])


@pytest.mark.parametrize(
    ("parameters", "max_trials", "expected"),
    [
        ([{"name": "batchSize", "type": "int", "min": 1, "max": 6}], 4, 4),
        ([{"name": "batchSize", "type": "int", "min": 1, "max": 6}], 10, 6),
        ([ARCH, {"name": "optimizer", "type": "choice", "values": ["adamw", "sgd"]}], 1000, 6),
        # A huge product is capped; the budget is still at most maxTrials.
        ([{"name": "batchSize", "type": "int", "min": 1, "max": 1e9}, BATCH], 1000, 1000),
    ],
)
def test_grid_budget(parameters, max_trials, expected):
    assert budget(search("grid", parameters, maxTrials=max_trials)) == expected


def test_grid_caps_a_huge_product_without_building_it():
    s = search("grid", [{"name": "epochs", "type": "int", "min": 1, "max": 1e9}, BATCH], maxTrials=1000)
    assert propose(s, 0, []) == {"epochs": "1", "batchSize": "16"}
    assert propose(s, 113, []) == {"epochs": "2", "batchSize": "16"}  # 113 batch sizes per epoch
    assert propose(s, GRID_LIMIT - 1, [])["epochs"] == str(1 + (GRID_LIMIT - 1) // 113)
    with pytest.raises(ValueError, match="past the grid"):
        propose(s, GRID_LIMIT, [])


def test_grid_ignores_history():
    s = search("grid", [ARCH])
    history = [Observation({"architecture": "resnet18"}, "Succeeded", 0.9)]
    assert propose(s, 1, history) == propose(s, 1, []) == {"architecture": "resnet34"}


@pytest.mark.parametrize(("algorithm", "budget_"), [("random", 7), ("bayesian", 7)])
def test_budget_of_sampling_algorithms_is_max_trials(algorithm, budget_):
    assert budget(search(algorithm, [LR], maxTrials=7)) == budget_


# --- random -------------------------------------------------------------------------------------


def test_random_is_a_pure_function_of_seed_and_index():
    s = search("random", MIXED, seed=42)
    forward = [propose(s, i, []) for i in range(20)]
    backward = {i: propose(s, i, []) for i in reversed(range(20))}
    assert forward == [backward[i] for i in range(20)]
    assert len({tuple(sorted(p.items())) for p in forward}) == 20  # distinct trials
    other_seed = [propose(search("random", MIXED, seed=43), i, []) for i in range(20)]
    assert other_seed != forward
    history = [Observation(forward[0], "Succeeded", 0.5)]
    assert propose(s, 3, history) == forward[3]


def test_random_values_within_bounds_and_typed():
    s = search("random", MIXED, seed=3)
    proposals = [propose(s, i, []) for i in range(200)]
    for values in proposals:
        assert_in_space(values, MIXED)
    # logUniform spreads over the decades, not just the top one.
    assert min(float(p["learningRate"]) for p in proposals) < 1e-4
    assert {p["architecture"] for p in proposals} == set(ARCH["values"])


def test_propose_rejects_a_negative_index():
    with pytest.raises(ValueError, match=">= 0"):
        propose(search("random", [LR]), -1, [])


# --- format_value and is_better -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        (BATCH, 64, "64"),
        (BATCH, 64.0, "64"),
        (LR, 0.001234567, "0.00123457"),
        (LR, 1.5e-5, "1.5e-05"),
        (MOMENTUM, 0.9, "0.9"),
        (ARCH, "resnet34", "resnet34"),
        # Rounding would carry the value past the bound: the bound is written instead.
        ({"name": "momentum", "type": "uniform", "min": 0.1, "max": 0.1234566}, 0.12345659, "0.1234566"),
    ],
)
def test_format_value(spec, value, expected):
    assert format_value(param(spec), value) == expected


@pytest.mark.parametrize(
    ("a", "b", "maximize", "expected"),
    [
        (0.5, None, True, True),
        (0.5, None, False, True),
        (0.6, 0.5, True, True),
        (0.6, 0.5, False, False),
        (0.4, 0.5, False, True),
        (0.5, 0.5, True, False),
        (0.5, 0.5, False, False),
        (math.nan, None, True, False),
        (0.1, math.nan, True, True),
    ],
)
def test_is_better(a, b, maximize, expected):
    assert is_better(a, b, maximize) is expected


# --- bayesian -----------------------------------------------------------------------------------


def lr_history(count: int = 12) -> list[Observation]:
    """Trials spread over the learning rate's decades, scoring higher the smaller the rate."""
    history = []
    for i in range(count):
        lr = 10 ** (-5 + 4 * (i + 0.5) / count)
        score = 0.95 - 0.1 * (math.log10(lr) + 5)
        history.append(
            Observation({"learningRate": f"{lr:.6g}", "architecture": ARCH["values"][i % 3]}, "Succeeded", score)
        )
    return history


def test_bayesian_is_deterministic_and_in_space():
    params = MIXED
    s = search("bayesian", params, maxTrials=30, seed=5)
    history = [Observation(propose(s, i, []), "Succeeded", 0.1 * i) for i in range(6)]
    history.append(Observation(propose(s, 6, history), "Failed", None))
    history.append(Observation(propose(s, 7, history), "Running", None))
    for index in range(8, 12):
        first = propose(s, index, history)
        assert first == propose(s, index, list(history))
        assert_in_space(first, params)
    assert propose(s, 8, history) != propose(search("bayesian", params, maxTrials=30, seed=6), 8, history)


def test_bayesian_startup_is_deterministic_without_history():
    s = search("bayesian", MIXED, seed=11)
    assert [propose(s, i, []) for i in range(3)] == [propose(s, i, []) for i in range(3)]
    for i in range(3):
        assert_in_space(propose(s, i, []), MIXED)


@pytest.mark.parametrize(
    ("direction", "good"), [("maximize", lambda lr: lr < 1e-3), ("minimize", lambda lr: lr > 1e-3)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bayesian_exploits_the_good_region(direction, good, seed):
    params = [LR, ARCH]
    s = search("bayesian", params, maxTrials=30, seed=seed, objective={"direction": direction})
    history = lr_history()
    proposals = [propose(s, 12 + k, history) for k in range(10)]
    for values in proposals:
        assert_in_space(values, params)
    # Uniform sampling would put half the proposals in each region; TPE should favour the good one.
    assert sum(good(float(p["learningRate"])) for p in proposals) >= 7


@pytest.mark.parametrize(
    "misfit",
    [
        {"architecture": "resnet18"},  # missing key
        {"learningRate": "0.5", "architecture": "resnet18"},  # outside the range
        {"learningRate": "fast", "architecture": "resnet18"},  # not a number
        {"learningRate": "0.001", "architecture": "vit_b_16"},  # not a choice
    ],
)
def test_bayesian_ignores_history_that_does_not_fit_the_space(misfit):
    params = [LR, ARCH]
    s = search("bayesian", params, maxTrials=30, seed=4)
    history = lr_history()
    with_misfit = [*history[:5], Observation(misfit, "Succeeded", 99.0), *history[5:]]
    assert propose(s, 12, with_misfit) == propose(s, 12, history)


def test_bayesian_drops_parameters_no_longer_searched():
    params = [LR, ARCH]
    s = search("bayesian", params, maxTrials=30, seed=4)
    history = lr_history()
    extra = [Observation({**o.parameters, "momentum": "0.9"}, o.state, o.value) for o in history]
    assert propose(s, 12, extra) == propose(s, 12, history)


def test_bayesian_int_history_round_trips():
    params = [BATCH, ARCH]
    s = search("bayesian", params, maxTrials=30, seed=9)
    history = [Observation(propose(s, i, []), "Succeeded", float(i)) for i in range(12)]
    values = propose(s, 12, history)
    assert_in_space(values, params)
    # A float-written integer is accepted; a fractional one is ignored.
    as_float = [
        Observation({**o.parameters, "batchSize": f"{o.parameters['batchSize']}.0"}, o.state, o.value) for o in history
    ]
    assert propose(s, 12, as_float) == values
    fractional = [*history, Observation({"batchSize": "32.5", "architecture": "resnet18"}, "Succeeded", 99.0)]
    assert propose(s, 12, fractional) == values


# --- median stopping ----------------------------------------------------------------------------


CURVES = {
    "a": [0.30, 0.50, 0.60],
    "b": [0.35, 0.55, 0.62],
    "c": [0.40, 0.58, 0.70],
    "slow": [0.20, 0.30, 0.41],
    "short": [0.10],
}


@pytest.mark.parametrize(
    ("curves", "trial", "min_epochs", "maximize", "expected"),
    [
        pytest.param(CURVES, "slow", 4, True, None, id="too-early"),
        pytest.param(CURVES, "short", 2, True, None, id="too-early-short"),
        pytest.param(
            CURVES,
            "slow",
            2,
            True,
            "val_accuracy best 0.41 at epoch 3 is worse than the median 0.62 of 3 other trials",
            id="worse-than-median",
        ),
        pytest.param(CURVES, "b", 2, True, None, id="at-median"),
        pytest.param(CURVES, "c", 2, True, None, id="better"),
        pytest.param({"x": [0.5, 0.6], "y": [0.4, 0.6]}, "x", 2, True, None, id="tie"),
        pytest.param({"x": [0.5, 0.6, 0.1], "y": [0.4, 0.9]}, "x", 2, True, None, id="no-other-at-epoch"),
        pytest.param(
            {"x": [0.5, 0.5], "y": [0.4, 0.9]},
            "x",
            2,
            True,
            "val_accuracy best 0.5 at epoch 2 is worse than the median 0.9 of 1 other trial",
            id="one-other",
        ),
        pytest.param(
            {"x": [0.9, 0.7], "y": [0.8, 0.5], "z": [0.6, 0.4]},
            "x",
            2,
            False,
            "val_accuracy best 0.7 at epoch 2 is worse than the median 0.45 of 2 other trials",
            id="minimize-worse",
        ),
        pytest.param({"x": [0.9, 0.3], "y": [0.8, 0.5], "z": [0.6, 0.4]}, "x", 2, False, None, id="minimize-better"),
        # Best-so-far, not the latest value: an early peak counts.
        pytest.param({"x": [0.9, 0.2], "y": [0.5, 0.6], "z": [0.5, 0.7]}, "x", 2, True, None, id="best-so-far"),
        # Others are judged up to the trial's epoch, not beyond.
        pytest.param(
            {"x": [0.5, 0.6], "y": [0.5, 0.55, 0.99], "z": [0.5, 0.58, 0.99]}, "x", 2, True, None, id="epoch-cut"
        ),
        pytest.param({"x": []}, "x", 1, True, None, id="no-epochs"),
    ],
)
def test_median_stop(curves, trial, min_epochs, maximize, expected):
    assert median_stop(curves, trial, min_epochs, maximize, metric="val_accuracy") == expected


def test_median_stop_default_metric_and_nan():
    reason = median_stop({"x": [math.nan, math.nan], "y": [0.5, 0.6]}, "x", 2, True)
    assert reason is not None and reason.startswith("objective")
    # NaN values of others are ignored, not propagated into the median.
    assert median_stop({"x": [0.5, 0.7], "y": [math.nan, 0.6], "z": [math.nan, math.nan]}, "x", 2, True) is None


def test_judge_with_median_is_the_median_rule():
    s = search("random", [LR], earlyStopping="median", earlyStoppingMinEpochs=2)
    trials = [TrialStatus(name=n, state="Running", history=h) for n, h in CURVES.items()]
    verdict = judge(s, trials, "slow", True, 10, metric="val_accuracy")
    assert verdict.reason == c.MEDIAN_STOPPED
    assert verdict.message == median_stop(CURVES, "slow", 2, True, metric="val_accuracy")
    assert verdict.rung_epochs is None
    assert judge(s, trials, "c", True, 10).reason is None
    off = search("random", [LR], earlyStopping="none")
    assert judge(off, trials, "slow", True, 10).reason is None


# --- successive halving (asha, hyperband) -------------------------------------------------------


def halving(kind: str = "asha", min_epochs: int = 1, seed: int = 0, **settings: Any) -> Search:
    extra: dict[str, Any] = {"successiveHalving": settings} if settings else {}
    return search("bayesian", [LR], earlyStopping=kind, earlyStoppingMinEpochs=min_epochs, seed=seed, **extra)


def trial(index: int, history: list[float], rungs: list[int] | None = None, state: str = "Running") -> TrialStatus:
    return TrialStatus(name=f"run-r1-t{index}", state=state, history=history, rung_epochs=rungs)


def judged_at_rung_0(values: list[float], value: float) -> list[TrialStatus]:
    """Trials that were each judged at rung 0 (epoch 1) with `values`, then one that just reached it."""
    done = [trial(i, [v], [1], state="Succeeded") for i, v in enumerate(values)]
    return [*done, trial(len(values), [value])]


@pytest.mark.parametrize(
    ("others", "value", "maximize", "eta", "kept"),
    [
        # Six trials at the rung, eta 3: the top 6 // 3 = 2 carry on.
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.95, True, 3, True, id="best"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.85, True, 3, True, id="second"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.8, True, 3, True, id="tie-with-second"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.75, True, 3, False, id="third"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.55, False, 3, True, id="minimize-second"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.65, False, 3, False, id="minimize-third"),
        # eta 2: the top 3 of 6.
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.75, True, 2, True, id="eta-2-third"),
        pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], 0.65, True, 2, False, id="eta-2-fourth"),
        # Fewer than eta at the rung: only the best carries on.
        pytest.param([], 0.1, True, 3, True, id="first-at-the-rung"),
        pytest.param([0.5], 0.4, True, 3, False, id="second-at-the-rung-worse"),
        pytest.param([0.5], 0.6, True, 3, True, id="second-at-the-rung-better"),
        pytest.param([0.9, 0.8], math.nan, True, 3, False, id="nan"),
    ],
)
def test_asha_keeps_the_top_1_over_eta_at_a_rung(others, value, maximize, eta, kept):
    trials = judged_at_rung_0(others, value)
    verdict = judge(halving(reductionFactor=eta), trials, trials[-1].name, maximize, 10, metric="val_accuracy")
    if kept:
        assert (verdict.reason, verdict.rung_epochs) == (None, (1,))
    else:
        assert verdict.reason == c.SUCCESSIVE_HALVING_STOPPED
        assert verdict.message is not None and "val_accuracy" in verdict.message and "epoch 1" in verdict.message
    if not kept and not math.isnan(value):
        keep = max((len(others) + 1) // eta, 1)
        assert f"not in the top {keep} of the {len(others) + 1} trials" in (verdict.message or "")


def test_asha_rungs_grow_by_the_reduction_factor():
    # min 1, eta 2: rungs at epochs 1, 2, 4, 8; with minEarlyStoppingRate 1 they start at 2.
    alone = [trial(0, [0.5] * 9)]
    assert judge(halving(reductionFactor=2), alone, "run-r1-t0", True, 9).rung_epochs == (1, 2, 4, 8)
    rate = halving(reductionFactor=2, minEarlyStoppingRate=1)
    assert judge(rate, alone, "run-r1-t0", True, 9).rung_epochs == (2, 4, 8)
    assert judge(halving(min_epochs=3, reductionFactor=3), alone, "run-r1-t0", True, 9).rung_epochs == (3, 9)


def test_asha_promotion_is_final():
    """A trial that carried on past rung 0 is never judged there again, however good the trials
    that reached rung 0 after it; it is judged at rung 1 against the trials that reached rung 1."""
    s = halving(reductionFactor=2)
    late_and_better = [trial(i, [0.9 + i / 100], [1], state="Succeeded") for i in range(1, 5)]
    early = trial(0, [0.5, 0.7], [1])
    verdict = judge(s, [early, *late_and_better], early.name, True, 10)
    assert (verdict.reason, verdict.rung_epochs) == (None, (1, 2))  # alone at rung 1
    # The same trial judged afresh (no rungs recorded) loses at rung 0.
    fresh = judge(s, [early.model_copy(update={"rung_epochs": None}), *late_and_better], early.name, True, 10)
    assert fresh.reason == c.SUCCESSIVE_HALVING_STOPPED and fresh.rung_epochs == (1,)


def test_bootstrap_count_stops_the_first_trials_at_a_rung():
    s = halving(reductionFactor=2, bootstrapCount=2)
    first = judge(s, [trial(0, [0.9])], "run-r1-t0", True, 10)
    assert first.reason == c.SUCCESSIVE_HALVING_STOPPED and "bootstrapCount" in (first.message or "")
    trials = [trial(0, [0.5], [1], "Stopped"), trial(1, [0.4], [1], "Stopped"), trial(2, [0.9])]
    assert judge(s, trials, "run-r1-t2", True, 10).reason is None


def curves(seed: int, n: int = 24, epochs: int = 9) -> list[list[float]]:
    """Learning curves of `n` trials: each rises to its own plateau at its own pace, with noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        top, pace = rng.uniform(0.3, 0.95), rng.uniform(0.5, 4.0)
        out.append([round(top * (1 - math.exp(-e / pace)) + rng.gauss(0, 0.02), 4) for e in range(1, epochs + 1)])
    return out


def live_optuna(s: Search, curves_: list[list[float]], max_epochs: int) -> list[int | None]:
    """Where Optuna's own loop stops each trial (run one after another, reporting every epoch)."""
    halving_ = s.successive_halving
    assert halving_ is not None
    pruner: optuna.pruners.BasePruner
    if s.early_stopping == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=s.early_stopping_min_epochs,
            max_resource=max_epochs,
            reduction_factor=halving_.reduction_factor,
            bootstrap_count=halving_.bootstrap_count,
        )
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=s.early_stopping_min_epochs,
            reduction_factor=halving_.reduction_factor,
            min_early_stopping_rate=halving_.min_early_stopping_rate or 0,
            bootstrap_count=halving_.bootstrap_count,
        )
    study = optuna.create_study(study_name=f"search-{s.seed}", direction="maximize", pruner=pruner)
    stops: list[int | None] = []
    for curve in curves_:
        t = study.ask()
        stop = None
        for epoch, value in enumerate(curve, start=1):
            t.report(value, epoch)
            if t.should_prune():
                stop = epoch
                break
        if stop is None:
            study.tell(t, curve[-1])
        else:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        stops.append(stop)
    return stops


def from_status(s: Search, curves_: list[list[float]], max_epochs: int, every: int = 1) -> list[int | None]:
    """The same trials judged by `judge` from a status that holds only what the operator writes,
    round-tripped through JSON before every look, looking every `every` epochs (a late operator)."""
    trials: list[TrialStatus] = []
    stops: list[int | None] = []
    for index, curve in enumerate(curves_):
        trials.append(trial(index, []))
        stop = None
        for epoch in range(1, len(curve) + 1):
            if epoch % every and epoch != len(curve):
                continue
            current = trial(index, curve[:epoch], trials[index].rung_epochs)
            trials[index] = TrialStatus.model_validate_json(current.model_dump_json())  # what status keeps
            verdict = judge(s, trials, current.name, True, max_epochs)
            trials[index] = current.model_copy(update={"rung_epochs": list(verdict.rung_epochs or [])})
            if verdict.reason:
                stop = max(trials[index].rung_epochs or [epoch])  # the rung that stopped it
                trials[index] = trials[index].model_copy(update={"state": "Stopped", "history": curve[:stop]})
                break
        else:
            trials[index] = trials[index].model_copy(update={"state": "Succeeded"})
        stops.append(stop)
    return stops


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("asha", {"reductionFactor": 3}),
        ("asha", {"reductionFactor": 2, "minEarlyStoppingRate": 1}),
        ("asha", {"reductionFactor": 2, "bootstrapCount": 2}),
        ("hyperband", {"reductionFactor": 3}),
        ("hyperband", {"reductionFactor": 2, "bootstrapCount": 1}),
    ],
    ids=["asha-3", "asha-2-rate-1", "asha-bootstrap", "hyperband-3", "hyperband-2-bootstrap"],
)
def test_decisions_from_status_match_optunas_own_loop(kind, settings, seed):
    s = halving(kind, min_epochs=1, seed=seed, **settings)
    cs = curves(seed)
    live = live_optuna(s, cs, max_epochs=9)
    assert any(stop is not None for stop in live) and len(set(live)) > 1  # stops at different epochs: can fail
    assert from_status(s, cs, max_epochs=9) == live


@pytest.mark.parametrize("every", [2, 3, 9])
def test_a_late_operator_decides_as_a_prompt_one(every):
    """Rungs are judged at their own epochs whenever the operator looks: one that reads progress
    every few epochs (or only at the end) stops the same trials, at the same rungs."""
    s = halving("asha", min_epochs=1, reductionFactor=2)
    cs = curves(7)
    assert from_status(s, cs, 9, every=every) == from_status(s, cs, 9)


def test_hyperband_brackets_follow_the_seed():
    cs = curves(4)
    a = from_status(halving("hyperband", seed=1, reductionFactor=2), cs, 9)
    assert from_status(halving("hyperband", seed=1, reductionFactor=2), cs, 9) == a  # deterministic
    assert any(from_status(halving("hyperband", seed=seed, reductionFactor=2), cs, 9) != a for seed in (2, 3, 5))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"earlyStopping": "median", "successiveHalving": {"reductionFactor": 3}},
            "successiveHalving applies to earlyStopping asha or hyperband only",
            id="halving-with-median",
        ),
        pytest.param(
            {"earlyStopping": "hyperband", "successiveHalving": {"minEarlyStoppingRate": 1}},
            "minEarlyStoppingRate applies to earlyStopping asha only",
            id="rate-with-hyperband",
        ),
        pytest.param(
            {"earlyStopping": "asha", "successiveHalving": {"maxEpochs": 9}},
            "maxEpochs applies to earlyStopping hyperband only",
            id="max-epochs-with-asha",
        ),
        pytest.param(
            {"earlyStopping": "hyperband", "earlyStoppingMinEpochs": 4, "successiveHalving": {"maxEpochs": 3}},
            "successiveHalving.maxEpochs must be at least earlyStoppingMinEpochs",
            id="max-below-min",
        ),
        pytest.param(
            {"earlyStopping": "asha", "successiveHalving": {"reductionFactor": 1}},
            "greater than or equal to 2",
            id="reduction-factor-1",
        ),
        pytest.param({"earlyStopping": "sha"}, "'none', 'median', 'asha' or 'hyperband'", id="unknown-pruner"),
    ],
)
def test_bad_pruner_settings_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        search("random", [LR], **fields)


def test_hyperband_numbers_trials_by_their_names():
    """A trial missing from status (its status write lost; the operator adopts its job later) does
    not shift the others' numbers, hence not their brackets: with seed 0, trial 2 is in the bracket
    whose first rung is epoch 1, trial 1 in the one whose first rung is epoch 3."""
    s = halving("hyperband", seed=0)
    curve = [0.5] * 8
    present = [trial(0, curve, state="Succeeded"), trial(1, curve, state="Succeeded"), trial(2, curve)]
    gap = [present[0], present[2]]
    assert judge(s, present, "run-r1-t2", True, 9).rung_epochs == (1, 3)
    assert judge(s, gap, "run-r1-t2", True, 9).rung_epochs == (1, 3)
    assert judge(s, present, "run-r1-t1", True, 9).rung_epochs == (3,)


def test_the_operator_loads_optuna_only_for_a_search_that_needs_it():
    """Optuna (with numpy) is about 40 MiB of the operator's memory: an operator that runs no
    Bayesian or successive-halving search never imports it (checked in a fresh interpreter)."""
    code = (
        "import sys\n"
        "import modelops_operator.__main__, modelops_operator.handlers\n"
        "from modelops_operator.reconcile import search\n"
        "from modelops_operator.api.trainingrun import Search\n"
        "s = Search.model_validate({'algorithm': 'random', 'maxTrials': 3,"
        " 'parameters': [{'name': 'learningRate', 'type': 'uniform', 'min': 0.1, 'max': 1.0}]})\n"
        "search.propose(s, 0, [])\n"
        "print('optuna' in sys.modules, 'numpy' in sys.modules)\n"
        "search.propose(s.model_copy(update={'algorithm': 'bayesian'}), 0, [])\n"
        "print('optuna' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
