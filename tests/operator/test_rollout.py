"""The gray-release state machine of a ModelDeployment, table-driven, without a cluster.

`plan()` is a pure function of the spec, the old status and what the handler observed. `Sim` plays
the API server, the Deployment controller and the clock around it: it stores the status through its
wire form (JSON) between reconciles, as the API server would, keeps two simulated Deployments that
follow what each plan asks for (model digest, replicas) and converge to it unless told not to, and
answers the analysis queries `due_analysis` asks for with the values a test sets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from modelops_operator import controllers
from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.api.modeldeployment import (
    AnalysisMetric,
    AnalysisResult,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServedModel,
)
from modelops_operator.builders.modeldeployment import canary_replicas
from modelops_operator.reconcile.rollout import (
    Measurement,
    Plan,
    RolloutObserved,
    Track,
    due_analysis,
    judge,
    plan,
    requested_command,
    seconds,
    stamp,
)

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MIN_REPLICAS = 2


def served(version: int) -> ServedModel:
    digest = "sha256:" + hashlib.sha256(f"model-{version}".encode()).hexdigest()
    return ServedModel(version=f"digits-resnet:v{version}", uri=f"file:///m/v{version}/model.onnx", digest=digest)


M1, M2, M3 = served(1), served(2), served(3)
ERROR_RATE = {"name": "errorRate", "template": "errorRate", "max": 0.01}


def weight(w: int) -> dict[str, Any]:
    return {"setWeight": w}


def pause(duration: str | None = None) -> dict[str, Any]:
    return {"pause": {"duration": duration} if duration else {}}


def analysis(**fields: Any) -> dict[str, Any]:
    """An analysis step on the error rate: every 30 s, 2 clean measurements to go on."""
    return {"analysis": {"metrics": [ERROR_RATE], "interval": "30s", "count": 2, **fields}}


def spec_of(steps: list[dict[str, Any]] | None = None, **rollout: Any) -> ModelDeploymentSpec:
    body: dict[str, Any] = {
        "model": {"trainingRunRef": {"name": "digits-resnet"}},
        "autoscaling": {"minReplicas": MIN_REPLICAS, "maxReplicas": 8},
        "rollout": {**rollout},
    }
    if steps is not None:
        body["rollout"]["steps"] = steps
    return ModelDeploymentSpec.model_validate(body)


def roundtrip(status: ModelDeploymentStatus) -> ModelDeploymentStatus:
    """The status as the API server stores it and the next reconcile reads it back."""
    return ModelDeploymentStatus.model_validate(json.loads(json.dumps(status.wire())))


def cond(status: ModelDeploymentStatus, type_: str = c.READY):
    return c.get_condition(status.conditions, type_)


@dataclass
class Deployment:
    """A simulated Deployment: its spec (replicas, the model digest of its pod template) and how far
    its pods have got (maxSurge 1, maxUnavailable 0: the old pods stay ready while new ones start)."""

    replicas: int = 0
    digest: str | None = None
    ready: int = 0
    updated: int = 0
    settled: bool = True

    def apply(self, digest: str, replicas: int) -> None:
        if digest != self.digest:
            self.digest, self.updated, self.settled = digest, 0, False
        if replicas != self.replicas:
            self.replicas, self.settled = replicas, False

    def converge(self) -> None:
        self.ready = self.updated = self.replicas
        self.settled = True

    def track(self) -> Track:
        return Track(
            replicas=self.replicas,
            ready=self.ready,
            updated=self.updated,
            available=self.ready,
            digest=self.digest,
            settled=self.settled,
        )


class Sim:
    """A ModelDeployment, its two Deployments, a clock and Prometheus."""

    def __init__(self, steps: list[dict[str, Any]] | None = None, **rollout: Any) -> None:
        self.spec = spec_of(steps, **rollout)
        self.status = ModelDeploymentStatus()
        self.target = M1
        self.now = T0
        self.stable: Deployment | None = None
        self.canary: Deployment | None = None
        self.metrics: dict[str, float | tuple[float | None, float | None] | None] = {"errorRate": 0.0}
        """What Prometheus answers: a canary value, or (canary, stable) for comparisons."""
        self.due = None
        self.out: Plan | None = None

    # the world

    def reconcile(self, command: str | None = None, *, converge: bool = True) -> Plan:
        """One reconcile as the handler does it; then the Deployments converge to what it applied."""
        self.due = due_analysis(self.spec, self.status, self.now)
        measurements = None
        if self.due is not None:
            measurements = []
            for metric in self.due.metrics:
                value = self.metrics.get(metric.name)
                canary, stable = value if isinstance(value, tuple) else (value, None)
                measurements.append(Measurement(metric.name, canary, stable))
        seen = RolloutObserved(
            target=self.target,
            stable=self.stable.track() if self.stable else None,
            canary=self.canary.track() if self.canary else None,
            now=self.now,
            command=command,  # type: ignore[arg-type]
            measurements=measurements,
        )
        out = plan(self.spec, self.status, seen, 1)
        if self.stable is None:  # created at minReplicas; then the autoscaler owns its replicas
            self.stable = Deployment(replicas=MIN_REPLICAS)
        self.stable.apply(out.stable_model.digest, self.stable.replicas)
        self.canary = self.canary or Deployment()
        self.canary.apply(out.canary_model.digest, out.canary_replicas)
        if converge:
            self.stable.converge()
            self.canary.converge()
        self.status = roundtrip(out.status)
        self.out = out
        return out

    def wait(self, secs: float) -> None:
        self.now += timedelta(seconds=secs)

    def serving(self, model: ServedModel = M1) -> Sim:
        """Bring `model` to Healthy on the stable track."""
        self.target = model
        for _ in range(3):
            self.reconcile()
        assert self.status.phase == "Healthy", self.status
        return self

    def roll(self, model: ServedModel = M2, until_step: int | None = None) -> Sim:
        """Start rolling `model` out, reconciling (without time passing) until it is at `until_step`."""
        self.target = model
        for _ in range(10):
            self.reconcile()
            if self.status.current_step == until_step:
                return self
        raise AssertionError(f"never reached step {until_step}: {self.status}")

    # reading the outcome

    @property
    def reasons(self) -> list[str]:
        assert self.out is not None
        return [e.reason for e in self.out.events]

    def results(self, step: int | None = None) -> list[AnalysisResult]:
        return [r for r in self.status.analysis if step is None or r.step == step]


# --- the first model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "updated", "settled", "phase", "reason", "available"),
    [
        (0, 0, False, "Pending", c.ROLLING_STABLE, F),
        (1, 1, True, "Progressing", c.ROLLING_STABLE, T),
        (2, 2, False, "Progressing", c.ROLLING_STABLE, T),
        (2, 2, True, "Healthy", c.SERVING, T),
    ],
    ids=["no-pod-ready", "one-of-two", "not-settled", "rolled-out"],
)
def test_first_model_goes_straight_to_stable(ready, updated, settled, phase, reason, available):
    sim = Sim([weight(10), analysis()])
    out = sim.reconcile(converge=False)
    assert sim.status.stable == M1 and sim.status.canary is None and sim.status.current_step is None
    assert out.stable_model == M1 and out.canary_replicas == 0 and out.events == []
    assert sim.status.phase == "Pending"
    assert sim.stable is not None
    sim.stable.ready, sim.stable.updated, sim.stable.settled = ready, updated, settled
    sim.reconcile(converge=False)
    st = sim.status
    assert st.phase == phase and st.stable_version == "digits-resnet:v1"
    assert cond(st).reason == reason and cond(st).status == (T if phase == "Healthy" else F)
    assert cond(st, c.PROGRESSING).status == (F if phase == "Healthy" else T)
    assert cond(st, c.DEGRADED).status == F
    assert cond(st, c.AVAILABLE).status == available
    assert st.ready_replicas == ready and st.canary_weight == 0


def test_healthy_says_what_it_serves():
    sim = Sim().serving()
    assert sim.status.message == "serving model digits-resnet:v1"
    assert cond(sim.status).message == "serving model digits-resnet:v1"
    assert sim.status.replicas == MIN_REPLICAS and sim.status.observed_generation == 1
    assert sim.out is not None and sim.out.canary_model == M1 and sim.out.canary_replicas == 0


def test_a_scale_up_of_the_stable_track_is_not_a_rollout():
    sim = Sim().serving()
    assert sim.stable is not None
    # The autoscaler asked for 4 pods; 2 new ones of the same template are starting.
    sim.stable.replicas, sim.stable.total, sim.stable.updated = MIN_REPLICAS + 2, MIN_REPLICAS + 2, MIN_REPLICAS + 2
    sim.reconcile(converge=False)
    assert sim.status.phase == "Healthy" and cond(sim.status).reason == c.SERVING
    assert sim.out is not None and sim.out.events == []
    # Below the autoscaler's minimum it is a wait again.
    sim.stable.available = sim.stable.ready = MIN_REPLICAS - 1
    sim.reconcile(converge=False)
    assert sim.status.phase == "Progressing" and cond(sim.status).reason == c.ROLLING_STABLE


# --- starting a canary, setWeight -------------------------------------------------------------------


def test_a_new_model_starts_a_canary_at_step_zero():
    sim = Sim([weight(10), analysis(), weight(50)]).serving()
    sim.target = M2
    out = sim.reconcile(converge=False)
    st = sim.status
    assert sim.reasons == ["RolloutStarted"]
    assert "digits-resnet:v2" in out.events[0].message and "digits-resnet:v1" in out.events[0].message
    assert st.canary == M2 and st.stable == M1 and st.current_step == 0 and st.desired_weight == 10
    assert st.step_started_at == stamp(T0) and not st.aborted and st.analysis == []
    assert out.stable_model == M1 and out.canary_model == M2 and out.canary_replicas == 1
    assert st.phase == "Progressing" and cond(st, c.PROGRESSING).reason == c.ROLLOUT_IN_PROGRESS
    assert cond(st).status == F and "waiting for 1 canary pod(s)" in (st.message or "")


def ready_track(replicas: int, model: ServedModel) -> Track:
    """A Deployment with every pod of `model` ready."""
    return Track(replicas=replicas, ready=replicas, updated=replicas, available=replicas, digest=model.digest)


def at_step(step: int, **fields: Any) -> ModelDeploymentStatus:
    """A status mid-rollout of M2 beside M1, at `step` since T0."""
    base = ModelDeploymentStatus(
        stable=M1, canary=M2, current_step=step, step_started_at=stamp(T0), phase="Progressing"
    )
    return roundtrip(base.model_copy(update=fields))


@pytest.mark.parametrize(
    ("set_weight", "stable_replicas", "override", "ready", "digest", "need", "advances"),
    [
        (10, 2, None, 0, M2, 1, False),
        (10, 2, None, 1, M2, 1, True),
        (10, 2, None, 1, M3, 1, False),
        (50, 3, None, 2, M2, 3, False),
        (50, 3, None, 3, M2, 3, True),
        (50, 1, None, 1, M2, 2, False),
        (50, 1, None, 2, M2, 2, True),
        (10, 2, 4, 1, M2, 4, False),
        (10, 2, 4, 4, M2, 4, True),
        (100, 3, None, 3, M2, 3, True),
    ],
    ids=[
        "none-ready",
        "enough-ready",
        "wrong-digest",
        "half-short",
        "half-ready",
        "min-replicas-counts",
        "min-replicas-ready",
        "override-short",
        "override-ready",
        "all-traffic",
    ],
)
def test_set_weight_waits_for_enough_ready_canary_pods(
    set_weight, stable_replicas, override, ready, digest, need, advances
):
    spec = spec_of([weight(set_weight), pause()], canaryReplicas=override)
    stable = ready_track(stable_replicas, M1)
    canary = Track(replicas=need, ready=ready, updated=ready, available=ready, total=ready, digest=digest.digest)
    out = plan(spec, at_step(0), RolloutObserved(M2, stable, canary, T0 + timedelta(seconds=5)), 1)
    assert out.canary_replicas == need == canary_replicas(set_weight, max(stable_replicas, MIN_REPLICAS), override)
    assert out.status.desired_weight == set_weight
    if advances:
        assert out.status.current_step == 1 and out.status.phase == "Paused"
        assert out.status.step_started_at == stamp(T0 + timedelta(seconds=5))
    else:
        assert out.status.current_step == 0 and out.status.phase == "Progressing"
        up = ready if digest.digest == M2.digest else 0
        assert f"waiting for {need} canary pod(s) of the new model ({up} up)" in (out.status.message or "")


def test_the_canary_follows_the_autoscaled_stable():
    sim = Sim([weight(25), pause()]).serving()
    assert sim.stable is not None
    sim.stable.replicas = 6  # the autoscaler scaled up
    sim.stable.converge()
    out = sim.roll(M2, until_step=1).out
    assert out is not None and out.canary_replicas == 2  # ceil(6 * 25 / 75)


def test_set_weight_does_not_count_ready_pods_of_a_replaced_canary():
    sim = Sim([weight(10), analysis(), weight(50)]).serving()
    sim.roll(M2, until_step=1)  # one M2 canary pod ready, analysing
    sim.target = M3
    sim.reconcile(converge=False)  # the template now says M3; the M2 pod is still the ready one
    assert sim.status.canary == M3 and sim.status.current_step == 0
    assert sim.canary is not None and sim.canary.digest == M3.digest and sim.canary.ready == 1
    sim.canary.settled = True  # the controller saw the change and is surging a new pod (updated 0)
    sim.wait(5)
    sim.reconcile(converge=False)
    assert sim.status.current_step == 0, "advanced on a pod that serves the replaced model"


# --- pauses ----------------------------------------------------------------------------------------


def test_pause_with_a_duration_waits_then_advances():
    sim = Sim([weight(10), pause("1m"), weight(50)]).serving().roll(M2, until_step=1)
    assert sim.status.phase == "Progressing" and "pausing 1m (60 s left)" in (sim.status.message or "")
    sim.wait(30)
    sim.reconcile()
    assert sim.status.current_step == 1 and "(30 s left)" in (sim.status.message or "")
    sim.wait(30)
    sim.reconcile(converge=False)
    assert sim.status.current_step == 2 and sim.status.desired_weight == 50
    assert sim.status.step_started_at == stamp(T0 + timedelta(seconds=60))


def test_pause_without_duration_waits_for_promote():
    sim = Sim([weight(10), pause(), weight(50)]).serving().roll(M2, until_step=1)
    for _ in range(3):
        sim.wait(3600)
        out = sim.reconcile()
        assert out.command_done  # no command, nothing to remove
    st = sim.status
    assert st.phase == "Paused" and st.current_step == 1 and "modelops.dev/promote" in (st.message or "")
    assert cond(st).reason == c.ROLLOUT_PAUSED and cond(st, c.PROGRESSING).status == F
    assert cond(st, c.DEGRADED).status == F
    out = sim.reconcile("promote", converge=False)
    assert out.command_done and sim.status.current_step == 2 and sim.status.phase == "Progressing"


def test_promote_with_a_duration_skips_the_rest_of_the_pause():
    sim = Sim([weight(10), pause("1h"), weight(50)]).serving().roll(M2, until_step=1)
    out = sim.reconcile("promote", converge=False)
    assert out.command_done and sim.status.current_step == 2


# --- analysis ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "due"),
    [(0, False), (29, False), (30, True), (31, True), (600, True)],
)
def test_analysis_is_due_an_interval_after_the_step_began(after, due):
    spec = spec_of([weight(10), analysis()])
    got = due_analysis(spec, at_step(1), T0 + timedelta(seconds=after))
    assert (got is not None) == due
    if due:
        assert got is not None and [m.name for m in got.metrics] == ["errorRate"]


@pytest.mark.parametrize(
    ("after", "due"),
    [(29, False), (30, True)],
)
def test_analysis_is_due_an_interval_after_the_last_measurement(after, due):
    spec = spec_of([weight(10), analysis()])
    last = T0 + timedelta(seconds=100)
    result = AnalysisResult(metric="errorRate", value=0.0, result="Successful", step=1, measured_at=stamp(last))
    st = at_step(1, analysis=[result])
    assert (due_analysis(spec, st, last + timedelta(seconds=after)) is not None) == due


@pytest.mark.parametrize(
    "status",
    [
        ModelDeploymentStatus(stable=M1),
        at_step(0),
        at_step(1, aborted=True),
    ],
    ids=["no-canary", "set-weight-step", "aborted"],
)
def test_analysis_is_not_due_outside_an_analysis_step(status):
    spec = spec_of([weight(10), analysis()])
    assert due_analysis(spec, status, T0 + timedelta(hours=1)) is None


def test_count_clean_measurements_pass_the_analysis():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    sim.wait(10)
    sim.reconcile()
    assert sim.due is None and sim.results() == []
    sim.wait(20)
    sim.reconcile()
    assert sim.due is not None and [r.result for r in sim.results(1)] == ["Successful"]
    assert sim.status.current_step == 1 and "analysis 1/2 clean measurements" in (sim.status.message or "")
    sim.wait(30)
    sim.reconcile(converge=False)
    assert sim.reasons == ["AnalysisPassed"] and sim.status.current_step == 2
    assert sim.status.desired_weight == 50 and len(sim.results(1)) == 2


def measure(sim: Sim, values: list[float | None]) -> None:
    """One analysis measurement per value, an interval apart."""
    for value in values:
        if sim.status.aborted or sim.status.current_step != 1:
            return
        sim.metrics = {"errorRate": value}
        sim.wait(30)
        sim.reconcile()
        assert sim.due is not None


@pytest.mark.parametrize(
    ("limits", "values", "outcome"),
    [
        ({}, [0.0, 0.001], "passed"),
        ({}, [0.05], "aborted"),
        ({}, [0.0, 0.05], "aborted"),
        ({"failureLimit": 1}, [0.05, 0.0, 0.0], "passed"),
        ({"failureLimit": 1}, [0.05, 0.05], "aborted"),
        ({"failureLimit": 1}, [0.05], "waiting"),
        ({"inconclusiveLimit": 0}, [None], "paused"),
        ({"inconclusiveLimit": 1}, [None, 0.0, 0.0], "passed"),
        ({"inconclusiveLimit": 1}, [None, None], "paused"),
        ({}, [0.0, None], "waiting"),
    ],
    ids=[
        "clean",
        "one-failure",
        "late-failure",
        "failure-tolerated",
        "failures-beyond-limit",
        "failure-then-waits",
        "no-data",
        "no-data-tolerated",
        "no-data-beyond-limit",
        "no-data-then-waits",
    ],
)
def test_analysis_outcomes(limits, values, outcome):
    sim = Sim([weight(10), analysis(**limits), weight(50)]).serving().roll(M2, until_step=1)
    measure(sim, values)
    st = sim.status
    expected_phase = {"passed": "Progressing", "aborted": "Degraded", "paused": "Paused", "waiting": "Progressing"}
    assert st.phase == expected_phase[outcome]
    assert st.current_step == (2 if outcome == "passed" else 1)
    assert st.aborted == (outcome == "aborted")
    assert ("RolledBack" in sim.reasons) == (outcome == "aborted")
    assert ("AnalysisPassed" in sim.reasons) == (outcome == "passed")


def test_a_failed_analysis_rolls_back():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    sim.metrics = {"errorRate": 0.05}
    sim.wait(30)
    out = sim.reconcile(converge=False)
    st = sim.status
    assert st.aborted and st.phase == "Degraded" and st.desired_weight == 0 and st.canary == M2
    assert out.canary_replicas == 0 and out.stable_model == M1
    degraded = cond(st, c.DEGRADED)
    assert degraded.status == T and degraded.reason == c.ROLLED_BACK
    assert "errorRate" in degraded.message and "0.05" in degraded.message and "max 0.01" in degraded.message
    assert cond(st).status == F and cond(st).reason == c.ROLLED_BACK
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "RolledBack")]
    assert "digits-resnet:v2" in out.events[0].message and "errorRate" in out.events[0].message
    assert [(r.metric, r.value, r.result) for r in st.analysis] == [("errorRate", 0.05, "Failed")]
    # Stays rolled back: no more analysis, no more events.
    assert sim.canary is not None
    sim.canary.converge()
    sim.wait(3600)
    out = sim.reconcile()
    assert sim.due is None and out.events == [] and out.canary_replicas == 0 and sim.status.phase == "Degraded"
    assert sim.status.canary_weight == 0


def test_a_metric_below_its_min_names_the_min():
    metric = {"name": "throughput", "query": "sum(rate(x{ {{selector}} }[{{interval}}]))", "min": 10}
    sim = Sim([weight(10), analysis(metrics=[metric])]).serving().roll(M2, until_step=1)
    sim.metrics = {"throughput": 2.5}
    sim.wait(30)
    sim.reconcile()
    assert sim.status.aborted and "throughput = 2.5 outside min 10.0" in (sim.status.message or "")


def test_inconclusive_analysis_pauses_and_promote_skips_the_step():
    sim = Sim([weight(10), analysis(inconclusiveLimit=1), weight(50)]).serving().roll(M2, until_step=1)
    measure(sim, [None, None])
    st = sim.status
    assert st.phase == "Paused" and cond(st).reason == c.ROLLOUT_PAUSED and "inconclusive 2 times" in (st.message or "")
    assert [r.result for r in st.analysis] == ["Inconclusive", "Inconclusive"]
    assert all(r.value is None for r in st.analysis)
    out = sim.reconcile("promote", converge=False)
    assert out.command_done and sim.status.current_step == 2 and sim.status.phase == "Progressing"


def test_a_metric_missing_from_the_measurements_is_inconclusive():
    sim = Sim([weight(10), analysis(inconclusiveLimit=0)]).serving().roll(M2, until_step=1)
    sim.metrics = {}
    sim.wait(30)
    sim.reconcile()
    assert sim.status.phase == "Paused" and sim.results(1)[0].result == "Inconclusive"


@pytest.mark.parametrize(
    ("metric", "value", "stable", "expected"),
    [
        ({"max": 0.01}, 0.005, None, (0.005, "Successful")),
        ({"max": 0.01}, 0.01, None, (0.01, "Successful")),
        ({"max": 0.01}, 0.02, None, (0.02, "Failed")),
        ({"min": 0.9}, 0.5, None, (0.5, "Failed")),
        ({"min": 0.9, "max": 1.0}, 0.95, None, (0.95, "Successful")),
        ({"max": 0.01}, None, None, (None, "Inconclusive")),
        ({"max": 1.5, "compareToStable": True}, 0.03, 0.02, (pytest.approx(1.5), "Successful")),
        ({"max": 1.5, "compareToStable": True}, 0.04, 0.02, (2.0, "Failed")),
        ({"max": 1.5, "compareToStable": True}, 0.03, None, (None, "Inconclusive")),
        ({"max": 1.5, "compareToStable": True}, 0.03, 0.0, (None, "Inconclusive")),
        ({"max": 1.5, "compareToStable": True}, None, 0.02, (None, "Inconclusive")),
        ({"max": 1.5, "compareToStable": True}, 0.0, 0.02, (0.0, "Successful")),
    ],
    ids=[
        "below-max",
        "at-max",
        "above-max",
        "below-min",
        "within-both",
        "no-data",
        "ratio-at-max",
        "ratio-above",
        "no-stable-data",
        "stable-zero",
        "no-canary-data",
        "canary-zero",
    ],
)
def test_judge(metric, value, stable, expected):
    m = AnalysisMetric.model_validate({"name": "m", **metric})
    assert judge(m, Measurement("m", value, stable)) == expected


def test_compare_to_stable_records_the_ratio():
    latency = {"name": "latency", "template": "latencyP99", "max": 1.5, "compareToStable": True}
    sim = Sim([weight(10), analysis(metrics=[latency], count=1), weight(50)]).serving().roll(M2, until_step=1)
    sim.metrics = {"latency": (0.2, 0.1)}
    sim.wait(30)
    sim.reconcile()
    assert sim.status.aborted and sim.status.analysis[0].value == pytest.approx(2.0)
    assert "latency = 2 outside max 1.5" in (sim.status.message or "")


def test_a_restarted_operator_resumes_mid_analysis():
    sim = Sim([weight(10), analysis(count=3), weight(50)]).serving().roll(M2, until_step=1)
    measure(sim, [0.0, 0.0])
    before = sim.status
    assert sim.status.current_step == 1 and len(sim.results(1)) == 2
    # A new operator process: nothing but the stored status and the cluster's Deployments.
    restarted = Sim([weight(10), analysis(count=3), weight(50)])
    restarted.status = ModelDeploymentStatus.model_validate(json.loads(json.dumps(before.wire())))
    restarted.stable, restarted.canary, restarted.now, restarted.target = sim.stable, sim.canary, sim.now, M2
    assert restarted.status == before
    restarted.wait(10)
    restarted.reconcile()
    assert restarted.due is None and restarted.status.current_step == 1 and len(restarted.results(1)) == 2
    assert restarted.reasons == []
    restarted.wait(20)
    restarted.reconcile(converge=False)
    assert restarted.reasons == ["AnalysisPassed"] and restarted.status.current_step == 2
    assert restarted.status.step_started_at == stamp(sim.now + timedelta(seconds=30))


# --- promotion --------------------------------------------------------------------------------------


def test_after_the_last_step_the_canary_is_promoted():
    sim = Sim([weight(50)]).serving()
    sim.target = M2
    sim.reconcile()  # canary: 2 pods of M2
    out = sim.reconcile(converge=False)
    st = sim.status
    assert sim.reasons == ["Promoted"] and "digits-resnet:v2" in out.events[0].message
    assert st.stable == M2 and st.previous == M1 and st.canary is None and st.current_step is None
    assert st.stable_version == "digits-resnet:v2" and st.desired_weight == 0
    # The canary pods keep serving while the stable Deployment rolls to the new model.
    assert out.stable_model == M2 and out.canary_model == M2 and out.canary_replicas == 2
    assert st.phase == "Progressing" and cond(st).reason == c.ROLLING_STABLE
    assert st.canary_weight == 50
    assert sim.stable is not None and sim.canary is not None
    sim.stable.ready, sim.stable.updated = 2, 1  # half-way through
    out = sim.reconcile(converge=False)
    assert out.canary_replicas == 2 and sim.status.phase == "Progressing" and out.events == []
    sim.stable.converge()
    out = sim.reconcile()
    assert out.canary_replicas == 0 and out.stable_model == M2
    assert sim.status.phase == "Healthy" and cond(sim.status).reason == c.SERVING
    assert sim.status.canary_weight == 0 and sim.status.previous == M1


@pytest.mark.parametrize(
    ("stable", "rolled_out"),
    [
        (Track(replicas=2, ready=2, updated=2, available=2, digest=M2.digest), True),
        (Track(replicas=2, ready=2, updated=2, available=2, digest=M2.digest, settled=False), False),
        (Track(replicas=2, ready=2, updated=1, available=2, digest=M2.digest), False),
        (Track(replicas=2, ready=1, updated=2, available=1, digest=M2.digest), False),
        (Track(replicas=2, ready=2, updated=2, available=2, digest=M1.digest), False),
    ],
    ids=["rolled-out", "not-settled", "not-updated", "not-available", "old-digest"],
)
def test_the_canary_scales_down_once_the_stable_rolled_out(stable, rolled_out):
    promoted = roundtrip(ModelDeploymentStatus(stable=M2, previous=M1, phase="Progressing"))
    canary = ready_track(2, M2)
    out = plan(spec_of([weight(50)]), promoted, RolloutObserved(M2, stable, canary, T0), 1)
    assert stable.rolled_out(M2.digest) == rolled_out
    assert out.canary_replicas == (0 if rolled_out else 2)
    assert out.status.phase == ("Healthy" if rolled_out else "Progressing")


def test_empty_steps_promote_at_once():
    sim = Sim([]).serving()
    sim.target = M2
    out = sim.reconcile(converge=False)
    st = sim.status
    assert sim.reasons == ["RolloutStarted", "Promoted"]
    assert st.stable == M2 and st.previous == M1 and st.canary is None
    assert out.stable_model == M2 and out.canary_replicas == 0  # no canary pods of M2 ever ran
    assert sim.stable is not None
    sim.stable.converge()
    sim.reconcile()
    assert sim.status.phase == "Healthy" and sim.status.stable_version == "digits-resnet:v2"


# --- commands -----------------------------------------------------------------------------------------


def test_abort_by_hand_mid_rollout():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    out = sim.reconcile("abort", converge=False)
    st = sim.status
    assert out.command_done and st.aborted and st.phase == "Degraded" and out.canary_replicas == 0
    assert sim.reasons == ["RolledBack"] and "modelops.dev/abort" in (st.message or "")
    assert cond(st, c.DEGRADED).status == T and cond(st, c.DEGRADED).reason == c.ROLLED_BACK
    out = sim.reconcile("abort")  # a second abort: consumed, nothing more
    assert out.command_done and out.events == [] and sim.status.aborted


def test_retry_after_an_abort_starts_again_at_step_zero():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    sim.metrics = {"errorRate": 0.5}
    sim.wait(30)
    sim.reconcile()
    assert sim.status.aborted and sim.status.analysis
    sim.metrics = {"errorRate": 0.0}
    sim.wait(60)
    out = sim.reconcile("retry", converge=False)
    st = sim.status
    assert out.command_done and sim.reasons == ["RolloutRetried"]
    assert not st.aborted and st.current_step == 0 and st.analysis == [] and st.canary == M2
    assert st.step_started_at == stamp(sim.now) and st.phase == "Progressing" and st.desired_weight == 10
    assert out.canary_replicas == 1 and cond(st, c.DEGRADED).status == F
    assert sim.canary is not None
    sim.canary.converge()
    sim.reconcile()
    assert sim.status.current_step == 1


def test_retry_without_an_abort_is_consumed_and_does_nothing():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    before = sim.status
    out = sim.reconcile("retry")
    assert out.command_done and out.events == [] and sim.status.current_step == 1
    assert sim.status.step_started_at == before.step_started_at


def test_promote_on_an_aborted_canary_is_consumed_and_does_nothing():
    sim = Sim([weight(10), pause(), weight(50)]).serving().roll(M2, until_step=1)
    sim.reconcile("abort")
    before = sim.status
    out = sim.reconcile("promote")
    assert out.command_done and out.events == [] and out.canary_replicas == 0
    assert sim.status.aborted and sim.status.canary == M2 and sim.status.stable == M1
    assert sim.status.current_step == before.current_step and sim.status.phase == "Degraded"


@pytest.mark.parametrize("command", ["promote", "abort", "retry"])
def test_commands_without_a_canary_are_dropped(command):
    sim = Sim().serving()
    out = sim.reconcile(command)
    assert out.command_done and out.events == [] and sim.status.phase == "Healthy"


# --- a new spec mid-rollout ---------------------------------------------------------------------------


def test_a_newer_model_replaces_the_canary():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    measure(sim, [0.0])
    assert sim.results()
    sim.target = M3
    sim.wait(5)
    out = sim.reconcile(converge=False)
    st = sim.status
    assert sim.reasons == ["RolloutStarted"] and "replaces canary digits-resnet:v2" in out.events[0].message
    assert st.canary == M3 and st.stable == M1 and st.current_step == 0 and st.analysis == []
    assert st.step_started_at == stamp(sim.now) and out.canary_model == M3


def test_a_newer_model_replaces_an_aborted_canary():
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    sim.reconcile("abort")
    sim.target = M3
    out = sim.reconcile(converge=False)
    assert sim.reasons == ["RolloutStarted"] and not sim.status.aborted and sim.status.canary == M3
    assert sim.status.phase == "Progressing" and out.canary_replicas == 1


@pytest.mark.parametrize("aborted", [False, True])
def test_going_back_to_the_stable_model_cancels_the_canary(aborted):
    sim = Sim([weight(10), analysis(), weight(50)]).serving().roll(M2, until_step=1)
    if aborted:
        sim.reconcile("abort")
    sim.target = M1
    out = sim.reconcile()
    st = sim.status
    assert sim.reasons == ["RolloutCancelled"] and "digits-resnet:v1" in out.events[0].message
    assert st.canary is None and st.current_step is None and not st.aborted and st.stable == M1
    assert st.previous is None and out.canary_replicas == 0 and out.stable_model == M1
    sim.reconcile()
    assert sim.status.phase == "Healthy" and sim.reasons == []


# --- traffic ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stable_ready", "canary_ready", "aborted", "expected"),
    [
        (2, 1, False, 33),
        (1, 1, False, 50),
        (9, 1, False, 10),
        (3, 0, False, 0),
        (0, 0, False, 0),
        (2, 1, True, 0),
    ],
    ids=["one-of-three", "one-of-two", "one-of-ten", "none-ready", "nothing-ready", "aborted"],
)
def test_canary_weight_is_the_share_of_ready_pods(stable_ready, canary_ready, aborted, expected):
    stable = ready_track(stable_ready, M1)
    canary = Track(replicas=1, ready=canary_ready, updated=canary_ready, available=canary_ready, digest=M2.digest)
    out = plan(spec_of([weight(10), pause()]), at_step(0, aborted=aborted), RolloutObserved(M2, stable, canary, T0), 1)
    assert out.status.canary_weight == expected
    assert out.status.ready_replicas == stable_ready + canary_ready


# --- durations and time stamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("1h30m", 5400), ("1m500ms", 60.5), ("0s", 0)],
)
def test_seconds(text, expected):
    assert seconds(text) == pytest.approx(expected)


def test_stamps_are_utc_rfc3339():
    assert stamp(T0) == "2026-03-01T12:00:00Z"


def test_a_clock_off_utc_keeps_pause_durations():
    plus2 = timezone(timedelta(hours=2))
    assert stamp(datetime(2026, 3, 1, 14, 0, tzinfo=plus2)) == "2026-03-01T12:00:00Z"
    spec = spec_of([weight(10), pause("1m"), weight(50)])
    canary, stable = ready_track(1, M2), ready_track(2, M1)
    start = datetime(2026, 3, 1, 14, 0, tzinfo=plus2)
    first = plan(spec, at_step(0), RolloutObserved(M2, stable, canary, start), 1)
    assert first.status.current_step == 1
    later = plan(spec, roundtrip(first.status), RolloutObserved(M2, stable, canary, start + timedelta(seconds=61)), 1)
    assert later.status.current_step == 2


def test_measurements_count_only_for_the_step_they_were_taken_for():
    """Passing one analysis step can reach the next analysis step in the same pass (a setWeight
    between them already satisfied); the measurements just taken must not count for it too."""
    spec = spec_of([analysis(count=1), weight(50), analysis(count=1)])
    stable, canary = ready_track(1, M1), ready_track(8, M2)  # enough canary pods for 50%
    seen = RolloutObserved(M2, stable, canary, T0 + timedelta(seconds=31), measurements=[Measurement("errorRate", 0.0)])
    out = plan(spec, at_step(0), seen, 1)
    assert out.status.current_step == 2  # through the analysis and the satisfied setWeight
    assert [r.step for r in out.status.analysis] == [0]
    assert "analysis 0/1" in (out.status.message or "")


# --- manual commands: one definition for the event filter and the reconcile ---------------------


@pytest.mark.parametrize(
    ("annotations", "command"),
    [
        ({}, None),
        ({"modelops.dev/promote": "true"}, "promote"),
        ({"modelops.dev/promote": "yes"}, "promote"),
        ({"modelops.dev/promote": "1"}, "promote"),
        ({"modelops.dev/promote": "True "}, "promote"),
        ({"modelops.dev/abort": "true"}, "abort"),
        ({"modelops.dev/retry": "true"}, "retry"),
        ({"modelops.dev/promote": "false"}, None),  # asks for nothing: no wake-up, nothing to remove
        ({"modelops.dev/promote": ""}, None),
        ({"modelops.dev/abort": "no"}, None),
        ({"modelops.dev/promote": "false", "modelops.dev/abort": "true"}, "abort"),
        ({"modelops.dev/promote": "true", "modelops.dev/abort": "true"}, "promote"),
        ({"example.com/promote": "true", "modelops.dev/dependency-changed": "Dataset/d@1"}, None),
    ],
)
def test_a_command_is_an_annotation_set_to_true_and_the_event_filter_agrees(annotations, command):
    assert requested_command(annotations) == command
    assert controllers.commanded(MODEL_DEPLOYMENT, annotations) is (command is not None)
    assert controllers.commanded(DATASET, annotations) is False


# --- with an HTTPRoute ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_effect", "advances"),
    [(0, False), (10, True), (50, False)],
    ids=["route-not-in-effect", "route-carries-the-step", "route-carries-another-weight"],
)
def test_with_an_http_route_set_weight_waits_for_the_route_to_carry_it(in_effect, advances):
    spec = spec_of([weight(10), pause()], trafficRouting={"httpRoute": "digits-route"})
    seen = RolloutObserved(M2, ready_track(2, M1), ready_track(1, M2), T0, route_weight=in_effect)
    out = plan(spec, at_step(0), seen, 1)
    assert out.status.current_step == (1 if advances else 0)
    if not advances:
        assert out.status.message == (
            f"step 0: waiting for HTTPRoute digits-route to carry 10% to the canary ({in_effect}% in effect)"
        )


@pytest.mark.parametrize("in_effect", [0, 10, 50])
def test_with_an_http_route_canary_weight_is_the_weight_in_effect_not_the_pod_share(in_effect):
    """One canary pod beside two stable ones is a third of the pods; through the route the canary
    gets what the accepted route carries."""
    spec = spec_of([weight(10), pause()], trafficRouting={"httpRoute": "digits-route"})
    seen = RolloutObserved(M2, ready_track(2, M1), ready_track(1, M2), T0, route_weight=in_effect)
    out = plan(spec, at_step(0), seen, 1)
    assert out.status.canary_weight == in_effect
    assert out.status.desired_weight == 10
