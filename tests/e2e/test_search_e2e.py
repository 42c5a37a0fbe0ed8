"""Hyper-parameter search on the local cluster, one test per strategy, with real (small) training:
grid over two parameters, TPE with `parallelism: 2` stopped by its goal, median stopping that stops
a bad trial mid-run, and the architecture as a search dimension (tests/support/searches.py).

The four TrainingRuns are created at once by one module fixture, so they train side by side on the
real node (their pods ask for no resources, so the scheduler places them all); a thread samples
their PyTorchJobs meanwhile. Each test then waits for its own run and asserts on what the cluster
recorded: status, PyTorchJobs, the sampled job states, Events and the model cards on the artifact
volume.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.names import TRAINING_RUN_LABEL
from tests.support.cluster import event_messages, kubectl, status, wait_until
from tests.support.searches import (
    ARCHITECTURES,
    BAD_RATE,
    GOOD_RATE,
    GRID_BATCHES,
    GRID_RATES,
    MEDIAN_EPOCHS,
    TPE_GOAL,
    TPE_MAX_TRIALS,
    TPE_RATES,
    search_runs,
)
from tests.support.workloads import host_path, run_jobs, settled

# The first test also waits for the digits Dataset; all four runs share the 2 cores of CI.
pytestmark = [pytest.mark.localnode, pytest.mark.slow, pytest.mark.timeout(2400)]

#: How long a run may take to finish, counted from when its test starts waiting.
RUN_TIMEOUT = 1800


class JobSampler:
    """Every `interval` seconds, in a thread: the namespace's PyTorchJobs, each with its TrainingRun
    and the types of its conditions that were True. An answer kubectl cannot give is skipped."""

    def __init__(self, namespace: str, interval: float = 2.0) -> None:
        self.namespace, self.interval = namespace, interval
        self.samples: list[dict[str, tuple[str, frozenset[str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = kubectl(
                "-n", self.namespace, "get", "pytorchjobs", "-o", "json", "--request-timeout=10s", check=False
            )
            try:
                items = json.loads(out.stdout)["items"] if out.returncode == 0 else None
            except ValueError:
                items = None
            if items is not None:
                self.samples.append(
                    {
                        j["metadata"]["name"]: (
                            (j["metadata"].get("labels") or {}).get(TRAINING_RUN_LABEL, ""),
                            frozenset(
                                x["type"]
                                for x in (j.get("status") or {}).get("conditions") or []
                                if x["status"] == "True"
                            ),
                        )
                        for j in items
                    }
                )
            self._stop.wait(self.interval)

    def most_running_at_once(self, run: str) -> int:
        """The most PyTorchJobs of `run` seen Running (and not yet finished) in one sample."""
        return max(
            (
                sum(
                    owner == run and "Running" in conds and not conds & {"Succeeded", "Failed"}
                    for owner, conds in sample.values()
                )
                for sample in self.samples
            ),
            default=0,
        )

    def conditions_seen(self, job: str) -> set[str]:
        """Every condition type seen True on `job` in any sample."""
        return {t for sample in self.samples if job in sample for t in sample[job][1]}

    def __enter__(self) -> JobSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def searches(custom, digits) -> Iterator[JobSampler]:
    """The four searches created at once in the digits namespace, and the sampler of their jobs."""
    with JobSampler(digits) as sampler:
        for body in search_runs().values():
            custom.create_namespaced_custom_object(GROUP, VERSION, digits, "trainingruns", body)
        yield sampler


def succeeded(custom, namespace: str, name: str) -> dict[str, Any]:
    """The status of TrainingRun `name` once it has finished; it must have succeeded."""
    phase = wait_until(
        f"TrainingRun {name} to finish", lambda: settled(custom, namespace, name), timeout=RUN_TIMEOUT, interval=3
    )
    st = status(custom, namespace, "trainingruns", name)
    assert phase == "Succeeded", st
    return st


def ready(st: dict[str, Any]) -> dict[str, Any]:
    return next(x for x in st["conditions"] if x["type"] == c.READY)


def card(namespace: str, uri: str) -> dict[str, Any]:
    """A model card on the artifact volume."""
    return dict(json.loads(host_path(namespace, uri).read_text()))


def test_grid_tries_every_combination_of_two_parameters_once(custom, digits, searches):
    st = succeeded(custom, digits, "grid")
    trials = st["trials"]
    # The cross product, each combination once, in itertools.product order (trial n, combination n).
    combos = [(t["parameters"]["learningRate"], t["parameters"]["batchSize"]) for t in trials]
    assert combos == list(itertools.product(GRID_RATES, GRID_BATCHES)), trials
    assert [t["name"] for t in trials] == [f"grid-r1-t{i}" for i in range(4)]
    assert sorted(j["metadata"]["name"] for j in run_jobs(digits, "grid")) == [t["name"] for t in trials]
    for t in trials:
        assert t["state"] == "Succeeded" and t["epoch"] == 1, t
        # The trainer trained with the trial's parameters: its model card's lineage records them.
        assert card(digits, t["modelCardUri"])["lineage"]["parameters"] == t["parameters"]
    assert 1 <= searches.most_running_at_once("grid") <= 2
    best = max(trials, key=lambda t: t["objective"])
    assert st["model"]["trial"] == best["name"] and st["model"]["parameters"] == best["parameters"]


def test_tpe_runs_two_trials_at_once_and_stops_at_the_goal(custom, digits, searches):
    st = succeeded(custom, digits, "tpe")
    trials = st["trials"]
    # parallelism: 2 — two trials' PyTorchJobs were seen Running at the same moment, never more.
    assert searches.most_running_at_once("tpe") == 2, searches.samples[-3:]
    # The goal ended the search before the budget was spent, and status says so.
    assert 2 <= len(trials) < TPE_MAX_TRIALS, trials
    reached = [t for t in trials if t["state"] == "Succeeded" and t["objective"] >= TPE_GOAL]
    assert reached, trials
    cond = ready(st)
    assert (cond["status"], cond["reason"]) == ("True", c.MODEL_REGISTERED)
    assert (
        f"the search stopped at the goal: trial {reached[0]['name']} reached val_accuracy >= {TPE_GOAL}"
        in (cond["message"])
    )
    assert f"after {len(trials)} of {TPE_MAX_TRIALS} trials" in cond["message"]
    # Every trial either succeeded or was stopped because another reached the goal.
    for t in trials:
        assert t["state"] == "Succeeded" or (t["state"], t["reason"]) == ("Stopped", c.GOAL_REACHED), t
        assert TPE_RATES[0] <= float(t["parameters"]["learningRate"]) <= TPE_RATES[1]
    assert st["bestObjective"] >= TPE_GOAL and st["percentComplete"] == 100


def test_median_stopping_stops_a_bad_trial_mid_run(custom, digits, searches):
    st = succeeded(custom, digits, "median")
    good, bad = st["trials"]
    assert (good["parameters"]["learningRate"], bad["parameters"]["learningRate"]) == (GOOD_RATE, BAD_RATE)
    assert good["state"] == "Succeeded" and good["epoch"] == MEDIAN_EPOCHS, good
    # The bad trial was judged after an epoch below the configured ones and stopped there.
    assert (bad["state"], bad["reason"]) == ("Stopped", c.MEDIAN_STOPPED), bad
    judged = len(bad["history"])
    assert 1 <= judged < MEDIAN_EPOCHS and (bad.get("epoch") or 0) < MEDIAN_EPOCHS, bad
    assert f"at epoch {judged} is worse than the median" in bad["message"], bad
    assert max(bad["history"]) < max(good["history"][:judged])
    assert "modelUri" not in bad  # it exported nothing
    # Its PyTorchJob ran, never finished, and was deleted; the good trial's job is still there.
    seen = searches.conditions_seen(bad["name"])
    assert "Running" in seen and not seen & {"Succeeded", "Failed"}, seen
    wait_until(
        "the stopped trial's PyTorchJob to be gone",
        lambda: [j["metadata"]["name"] for j in run_jobs(digits, "median")] == [good["name"]],
        timeout=120,
    )
    stopped = event_messages(digits, "median", "TrialStopped", kind="TrainingRun")
    assert any(bad["name"] in m and "worse than the median" in m for m in stopped), stopped
    assert st["model"]["trial"] == good["name"]


def test_architecture_as_a_search_dimension_registers_the_winners_network(custom, digits, searches):
    st = succeeded(custom, digits, "architecture")
    trials = st["trials"]
    assert sorted(t["parameters"]["architecture"] for t in trials) == sorted(ARCHITECTURES), trials
    for t in trials:
        # Each trial trained and exported its own network.
        assert t["state"] == "Succeeded", t
        assert card(digits, t["modelCardUri"])["architecture"] == t["parameters"]["architecture"]
    assert len({t["modelDigest"] for t in trials}) == 2
    best = max(trials, key=lambda t: t["objective"])
    model = st["model"]
    assert model["trial"] == best["name"] and model["parameters"] == best["parameters"]
    registered = card(digits, model["modelCardUri"])
    assert registered["architecture"] == best["parameters"]["architecture"]
    assert registered["onnx"]["digest"] == model["digest"]
