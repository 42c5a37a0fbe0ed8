"""Hyper-parameter search: grid, random and bayesian proposals, the budget, and median stopping."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from modelops_operator.api.trainingrun import Search, SearchParameter
from modelops_operator.reconcile.search import (
    GRID_LIMIT,
    Observation,
    budget,
    format_value,
    is_better,
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
