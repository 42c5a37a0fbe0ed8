"""The searches that tests/e2e/test_search_e2e.py trains (tests/support/searches.py), checked without a
cluster: each is a TrainingRun the API model accepts, and the operator's own search code proposes
and stops what that e2e test asserts on."""

from __future__ import annotations

import itertools

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.trainingrun import Search, TrainingRunSpec, TrialStatus
from modelops_operator.reconcile import search
from tests.support import searches as e2e


def spec(name: str) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(e2e.search_runs()[name]["spec"])


def searched(name: str) -> Search:
    found = spec(name).search
    assert found is not None
    return found


@pytest.mark.parametrize("name", ["grid", "tpe", "median", "architecture"])
def test_each_search_is_a_valid_training_run(name):
    body = e2e.search_runs()[name]
    assert body["metadata"]["name"] == name and body["kind"] == "TrainingRun"
    s = searched(name)
    assert s.parallelism <= s.max_trials  # a CEL rule the model leaves to the API server
    # Pods that ask for no CPU or memory: the scheduler puts all four runs' trials on the node at once.
    assert spec(name).workers.resources.requests == {}


def test_the_grid_proposes_the_cross_product_of_its_two_parameters_once_each():
    s = searched("grid")
    assert search.budget(s) == len(e2e.GRID_RATES) * len(e2e.GRID_BATCHES) == s.max_trials
    proposed = [search.propose(s, i, []) for i in range(search.budget(s))]
    assert [(p["learningRate"], p["batchSize"]) for p in proposed] == list(
        itertools.product(e2e.GRID_RATES, e2e.GRID_BATCHES)
    )
    assert s.early_stopping == "none"  # every combination trains to the end


def test_the_tpe_search_starts_two_trials_at_once_and_has_budget_left_for_its_goal():
    s = searched("tpe")
    assert (s.algorithm, s.parallelism, s.objective.goal) == ("bayesian", 2, e2e.TPE_GOAL)
    assert search.budget(s) == e2e.TPE_MAX_TRIALS > s.parallelism
    first = search.propose(s, 0, [])
    second = search.propose(s, 1, [search.Observation(first, "Pending", None)])
    for proposal in (first, second):
        assert e2e.TPE_RATES[0] <= float(proposal["learningRate"]) <= e2e.TPE_RATES[1]
    assert s.early_stopping == "none"  # only the goal stops its trials


def test_the_median_search_stops_a_trial_at_chance_after_its_first_epoch():
    s = searched("median")
    good, bad = (search.propose(s, i, []) for i in range(search.budget(s)))
    assert (good["learningRate"], bad["learningRate"]) == (e2e.GOOD_RATE, e2e.BAD_RATE)
    assert s.parallelism == 1  # the good trial's whole curve is there when the bad one is judged
    assert spec("median").hyperparameters.epochs == e2e.MEDIAN_EPOCHS > s.early_stopping_min_epochs
    # Curves like the measured ones (tests/support/searches.py): the bad trial after one epoch.
    trials = [
        TrialStatus(name="median-r1-t0", parameters=good, state="Succeeded", history=[0.39, 0.95, 0.97]),
        TrialStatus(name="median-r1-t1", parameters=bad, state="Running", history=[0.12]),
    ]
    verdict = search.judge(s, trials, "median-r1-t1", True, e2e.MEDIAN_EPOCHS, metric="val_accuracy")
    assert verdict.reason == c.MEDIAN_STOPPED
    assert verdict.message is not None and "at epoch 1 is worse than the median" in verdict.message
    # The good trial, judged while it ran alone, was never stopped.
    alone = [TrialStatus(name="median-r1-t0", parameters=good, state="Running", history=[0.39])]
    assert search.judge(s, alone, "median-r1-t0", True, e2e.MEDIAN_EPOCHS).reason is None


def test_the_architecture_search_trains_both_networks():
    s = searched("architecture")
    proposed = [search.propose(s, i, [])["architecture"] for i in range(search.budget(s))]
    assert sorted(proposed) == sorted(e2e.ARCHITECTURES) and len(set(e2e.ARCHITECTURES)) == 2
    assert s.early_stopping == "none"  # both finish, whichever learns faster
