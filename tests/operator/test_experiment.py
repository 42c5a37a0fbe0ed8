"""A/B experiments of a ModelDeployment, without a cluster: the statistics against hand-computed
values, the server setting read back by the contract's own rules, the variants' resolution, and the
state machine from Pending to Running, Concluded and Promoted with measurements a test sets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelops_operator import controllers
from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.api.modeldeployment import (
    Experiment,
    ExperimentStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServedModel,
    VariantStatus,
)
from modelops_operator.api.names import PROMOTE_VARIANT_ANNOTATION
from modelops_operator.reconcile import experiment as ex
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile import ownership, rollout
from modelops_operator.settings import OperatorSettings
from tests.support.objects import model_deployment
from tests.support.tools import missing

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RUN = "digits-resnet"


def served(version: int) -> ServedModel:
    digest = "sha256:" + hashlib.sha256(f"model-{version}".encode()).hexdigest()
    return ServedModel(version=f"{RUN}:v{version}", uri=f"file:///m/v{version}/model.onnx", digest=digest)


M1, M2, M3 = served(1), served(2), served(3)


def run_status(*versions: int, datasets: dict[int, str] | None = None) -> dict[str, Any]:
    """A TrainingRun that registered `versions` (each on Dataset `digits` unless told)."""
    models = []
    for v in versions:
        m = served(v)
        models.append({"version": v, "uri": m.uri, "digest": m.digest, "dataset": (datasets or {}).get(v, "digits")})
    return {"metadata": {"name": RUN}, "status": {"models": models, "model": models[-1]}}


def experiment(*variants: tuple[str, int, int], **fields: Any) -> dict[str, Any]:
    """spec.experiment with (name, version, weight) variants; default a 50/50 of v1 and v2 for 1h."""
    chosen = variants or (("control", 1, 50), ("b", 2, 50))
    return {
        "variants": [{"name": n, "version": v, "weight": w} for n, v, w in chosen],
        "duration": "1h",
        "minSamplesPerVariant": 100,
        **fields,
    }


def md(exp: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    builder = model_deployment("digits", RUN).set("spec.model.trainingRunRef.version", 1)
    if exp is not None:
        builder.set("spec.experiment", exp)
    body = builder.obj()
    body["metadata"].update(namespace="ns", uid="u-1", generation=2, annotations=annotations or {})
    return body


def spec_of(body: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(body["spec"])


# --- the statistics -------------------------------------------------------------------------------

#: (successes, trials, control successes, control trials, z, p-value bounds). z by hand from the
#: pooled formula; p from a standard normal table (Φ at the two table points around z).
Z_CASES = [
    # p = 0.6, se = sqrt(0.6 * 0.4 * (1/100 + 1/100)) = 0.0692820, z = 0.2 / se; Φ(2.88) = 0.99801, Φ(2.89) = 0.99807
    ("70% vs 50% of 100", 70, 100, 50, 100, 2.886751, (0.00193, 0.00199)),
    # p = 0.575, se = sqrt(0.575 * 0.425 * 0.002) = 0.0221077, z = 0.05 / se; Φ(2.26) = 0.98809, Φ(2.27) = 0.98840
    ("60% vs 55% of 1000", 600, 1000, 550, 1000, 2.261656, (0.0116, 0.0120)),
    # p = 0.56, se = sqrt(0.56 * 0.44 * 0.002) = 0.0221992, z = 0.04 / se; Φ(1.80) = 0.96407, Φ(1.81) = 0.96485
    ("58% vs 54% of 1000", 580, 1000, 540, 1000, 1.801868, (0.0351, 0.0360)),
    # worse than the control: p = 0.45, se = sqrt(0.45 * 0.55 * 0.02) = 0.0703562; Φ(1.42) = 0.92220, Φ(1.43) = 0.92364
    ("40% vs 50% of 100", 40, 100, 50, 100, -1.421338, (0.9222, 0.9237)),
    ("equal rates: no evidence either way", 50, 100, 50, 100, 0.0, (0.5, 0.5)),
    ("unequal sizes, equal rates", 30, 60, 100, 200, 0.0, (0.5, 0.5)),
    ("no variance (all successes): no evidence", 100, 100, 100, 100, 0.0, (1.0, 1.0)),
]


@pytest.mark.parametrize(
    ("s1", "n1", "s0", "n0", "z", "p_range"), [c[1:] for c in Z_CASES], ids=[c[0] for c in Z_CASES]
)
def test_two_proportion_z_test(s1, n1, s0, n0, z, p_range):
    got_z, got_p = ex.z_test(s1, n1, s0, n0)
    assert got_z == pytest.approx(z, abs=1e-5)
    assert p_range[0] <= got_p <= p_range[1]


def test_z_test_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="at least one outcome"):
        ex.z_test(0, 0, 5, 10)


def row(name: str, successes: int, trials: int, *, error_rate: float = 0.0, p99: float = 0.1) -> VariantStatus:
    return VariantStatus(
        name=name,
        successes=successes,
        failures=trials - successes,
        success_rate=successes / trials,
        error_rate=error_rate,
        latency_p99=p99,
    )


def exp_model(n: int = 2, **fields: Any) -> Experiment:
    variants = [("control", 1, 50), ("b", 2, 50)] if n == 2 else [("control", 1, 34), ("b", 2, 33), ("c", 3, 33)]
    return Experiment.model_validate(experiment(*variants, **fields))


DECIDE_CASES = [
    ("b significantly better wins", exp_model(), [row("control", 500, 1000), row("b", 600, 1000)], "b", "b wins"),
    (
        "b not significant: the control wins",
        exp_model(),
        [row("control", 50, 100), row("b", 55, 100)],
        "control",
        "no challenger significantly better",
    ),
    (
        "b significant but its error rate is over the limit",
        exp_model(),
        [row("control", 500, 1000), row("b", 600, 1000, error_rate=0.05)],
        "control",
        "error rate 0.05 above 0.01",
    ),
    (
        "b significant but too slow",
        exp_model(),
        [row("control", 500, 1000), row("b", 600, 1000, p99=0.9)],
        "control",
        "p99 latency 0.9s above 0.5s",
    ),
    (
        "p = 0.036 passes alpha 0.05 with one comparison",
        exp_model(),
        [row("control", 540, 1000), row("b", 580, 1000)],
        "b",
        "b wins",
    ),
    (
        "p = 0.036 fails the Bonferroni alpha 0.025 of two comparisons",
        exp_model(3),
        [row("control", 540, 1000), row("b", 580, 1000), row("c", 530, 1000)],
        "control",
        "b: p=0.0358 >= 0.025",
    ),
    (
        "two significant challengers: the higher success rate wins",
        exp_model(3),
        [row("control", 500, 1000), row("b", 600, 1000), row("c", 650, 1000)],
        "c",
        "c wins",
    ),
    (
        "p = 0.078 (60% vs 50% of 100) is no win at confidence 0.95",
        exp_model(),
        [row("control", 50, 100), row("b", 60, 100)],
        "control",
        "b: p=0.0776 >= 0.05",
    ),
    (
        "the same at confidence 0.9 wins",
        exp_model(confidence=0.9),
        [row("control", 50, 100), row("b", 60, 100)],
        "b",
        "p=0.0776",
    ),
]


@pytest.mark.parametrize(
    ("exp", "table", "winner", "says"), [c[1:] for c in DECIDE_CASES], ids=[c[0] for c in DECIDE_CASES]
)
def test_decide(exp, table, winner, says):
    d = ex.decide(exp, table)
    assert d.winner == winner
    assert says in d.message
    assert "z-test" in d.message
    assert (d.p_value is None) == (winner == "control")
    assert all(v.p_value is not None for v in table[1:])


# --- the server setting, read back by the contract --------------------------------------------------

VARIANT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


def read_setting(raw: str) -> dict[str, Any]:
    """The contract's reader of `MODELOPS_EXPERIMENT`, written from the contract's text alone."""
    doc = json.loads(raw)
    assert set(doc) == {"name", "keyHeader", "variants"}
    variants = doc["variants"]
    assert 2 <= len(variants) <= 4
    for v in variants:
        assert set(v) == {"name", "uri", "digest", "version", "weight"}
        assert VARIANT_NAME.match(v["name"])
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", v["digest"])
        assert isinstance(v["weight"], int) and v["weight"] > 0
    assert sum(v["weight"] for v in variants) == 100
    assert len({v["name"] for v in variants}) == len(variants)
    assert len({v["version"] for v in variants}) == len(variants)
    return doc


def assign(doc: dict[str, Any], key: str) -> str:
    """The contract's assignment: the first variant whose cumulative weight exceeds the bucket."""
    bucket = int(hashlib.sha256(f"{doc['name']}\0{key}".encode()).hexdigest()[:8], 16) % 100
    total = 0
    for v in doc["variants"]:
        total += v["weight"]
        if total > bucket:
            return str(v["name"])
    raise AssertionError("weights do not reach 100")


SETTINGS = OperatorSettings()


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e
    }


def reconcile(
    body: dict[str, Any],
    old: ModelDeploymentStatus,
    *,
    run: dict[str, Any] | None = None,
    target: ServedModel = M1,
    stable: rollout.Track | None = None,
    canary: rollout.Track | None = None,
    now: datetime = T0,
    measurements: dict[str, dict[str, float | None]] | None = None,
) -> tuple[rm.Desired, Any]:
    """One reconcile through the pure layers, as the controller runs them."""
    spec = spec_of(body)
    seen = rollout.RolloutObserved(target, stable, canary, now)
    command = (body["metadata"]["annotations"].get(PROMOTE_VARIANT_ANNOTATION) or "").strip() or None
    exp_seen = None
    if spec.experiment is not None:
        canary = old.canary if old.canary is not None and not old.aborted else None
        variants = ex.resolve_variants(spec, run or run_status(1, 2, 3))
        exp_seen = ex.ExperimentObserved(variants, old.stable, canary, now, measurements, command)
    want = rm.desired(
        body, spec, old, seen, SETTINGS, service_monitor=False, prometheus_rule=False, experiment=exp_seen
    )
    claims = [ownership.claim(child, child) for child in want.children]
    return want, rm.reconcile_model_deployment(body, spec, old, seen, want, claims, None)


def serving(model: ServedModel, replicas: int = 1) -> rollout.Track:
    return rollout.Track(replicas=replicas, ready=replicas, updated=replicas, available=replicas, digest=model.digest)


def test_stable_pods_get_the_experiment_setting_per_contract():
    body = md(experiment(("control", 1, 34), ("b", 2, 33), ("c", 3, 33), name="checkout-2026-12", keyHeader="x-client"))
    # The canary's Deployment exists (at 0 replicas) from a rollout before the experiment.
    want, out = reconcile(body, ModelDeploymentStatus(stable=M1), stable=serving(M1), canary=rollout.Track())
    stable, canary = want.children[0], want.children[1]
    assert canary["kind"] == "Deployment" and canary["metadata"]["name"].endswith("-canary"), canary
    env = env_of(stable)
    doc = read_setting(env["MODELOPS_EXPERIMENT"])
    assert doc["name"] == "checkout-2026-12" and doc["keyHeader"] == "x-client"
    want_variants = [("control", M1, 34), ("b", M2, 33), ("c", M3, 33)]
    assert [(v["name"], v["uri"], v["digest"], v["version"], v["weight"]) for v in doc["variants"]] == [
        (n, m.uri, m.digest, m.version, w) for n, m, w in want_variants
    ]
    # the control stays the single model of the contract's MODELOPS_MODEL_*
    assert (env["MODELOPS_MODEL_URI"], env["MODELOPS_MODEL_DIGEST"], env["MODELOPS_MODEL_VERSION"]) == (
        M1.uri,
        M1.digest,
        M1.version,
    )
    assert "MODELOPS_EXPERIMENT" not in env_of(canary)
    shares = {n: 0 for n, _, _ in want_variants}
    for i in range(10_000):
        shares[assign(doc, f"user-{i}")] += 1
    assert all(abs(shares[n] / 100 - w) < 3 for n, _, w in want_variants), shares  # the weights, by the contract's hash
    assert out.status.experiment.phase == "Running"
    assert [e.reason for e in out.events] == ["ExperimentStarted"]


def test_the_experiment_name_defaults_to_the_deployments():
    want, _ = reconcile(md(experiment()), ModelDeploymentStatus(stable=M1), stable=serving(M1))
    assert read_setting(env_of(want.children[0])["MODELOPS_EXPERIMENT"])["name"] == "digits"


# --- resolving the variants ---------------------------------------------------------------------

RESOLVE_CASES = [
    ("registered versions", experiment(), run_status(1, 2), None),
    (
        "a version not registered yet",
        experiment(("control", 1, 50), ("b", 4, 50)),
        run_status(1, 2),
        (
            c.EXPERIMENT_VARIANT_NOT_REGISTERED,
            'variant b: TrainingRun "digits-resnet" has not registered version 4 (registered: 1, 2)',
        ),
    ),
    (
        "no TrainingRun at all",
        experiment(),
        None,
        (c.EXPERIMENT_VARIANT_NOT_REGISTERED, "registered: none"),
    ),
    (
        "versions trained on different Datasets",
        experiment(),
        run_status(1, 2, datasets={2: "fashion"}),
        (c.EXPERIMENT_VARIANTS_INCOMPATIBLE, "control on digits, b on fashion"),
    ),
]


@pytest.mark.parametrize(("exp", "run", "blocked"), [c[1:] for c in RESOLVE_CASES], ids=[c[0] for c in RESOLVE_CASES])
def test_resolve_variants(exp, run, blocked):
    got = ex.resolve_variants(spec_of(md(exp)), run)
    if blocked is None:
        assert [(v.name, v.model, v.weight) for v in got] == [("control", M1, 50), ("b", M2, 50)]
    else:
        assert isinstance(got, ex.Blocked)
        assert got.reason == blocked[0] and blocked[1] in got.message


def test_uri_variants_need_no_training_run():
    digest = "sha256:" + "c" * 64
    exp = experiment()
    exp["variants"][1] = {"name": "b", "uri": "s3://models/b/model.onnx", "digest": digest, "weight": 50}
    got = ex.resolve_variants(spec_of(md(exp)), run_status(1))
    assert got[1].model == ServedModel(version=digest[7:19], uri="s3://models/b/model.onnx", digest=digest)


# --- the state machine ----------------------------------------------------------------------------


def running(*, measured: datetime | None = None, **fields: Any) -> ModelDeploymentStatus:
    """M1 stable; the default experiment running since T0."""
    spec = spec_of(md(experiment(**fields)))
    assert spec.experiment is not None
    exp = ExperimentStatus(
        name="digits",
        phase="Running",
        started_at=rollout.stamp(T0),
        measured_at=rollout.stamp(measured) if measured else None,
        fingerprint=ex.fingerprint(spec.experiment, "digits"),
        variants=[
            VariantStatus(name="control", version=M1.version, uri=M1.uri, digest=M1.digest, weight=50),
            VariantStatus(name="b", version=M2.version, uri=M2.uri, digest=M2.digest, weight=50),
        ],
    )
    return ModelDeploymentStatus(stable=M1, experiment=exp)


def measured(control: tuple[int, int], b: tuple[int, int], requests: int = 400) -> dict[str, dict[str, float | None]]:
    """Per variant: (successes, failures) of feedback, and healthy error rate and latency."""

    def one(s: int, f: int) -> dict[str, float | None]:
        return {"requests": requests / 2, "errorRate": 0.0, "latencyP99": 0.05, "successes": s, "failures": f}

    return {"control": one(*control), "b": one(*b)}


LATER = T0 + timedelta(hours=1, minutes=1)
#: b at 70%, control at 50%, 200 outcomes each: p = 0.00002, far below 0.05.
CLEAR_WIN = measured((100, 100), (140, 60))


@pytest.mark.parametrize(
    ("name", "old", "now", "data", "fields", "phase", "winner", "stable", "events", "says"),
    [
        (
            "measured mid-way: still running",
            running(),
            T0 + timedelta(minutes=5),
            CLEAR_WIN,
            {},
            "Running",
            None,
            M1,
            [],
            "running: 400 requests",
        ),
        (
            "ended, too few outcomes: runs on",
            running(),
            LATER,
            measured((40, 40), (60, 20)),
            {},
            "Running",
            None,
            M1,
            [],
            "duration 1h passed; waiting for 100 outcomes per variant (control 80, b 80)",
        ),
        (
            "maxRequests ends it before its duration",
            running(maxRequests=300),
            T0 + timedelta(minutes=5),
            CLEAR_WIN,
            {"maxRequests": 300},
            "Concluded",
            "b",
            M1,
            ["ExperimentConcluded"],
            "annotate modelops.dev/promote-variant=b",
        ),
        (
            "ended, manual: concluded, waiting for a person",
            running(),
            LATER,
            CLEAR_WIN,
            {},
            "Concluded",
            "b",
            M1,
            ["ExperimentConcluded"],
            "b wins",
        ),
        (
            "ended, automatic: b promoted at once",
            running(promotion="Automatic"),
            LATER,
            CLEAR_WIN,
            {"promotion": "Automatic"},
            "Promoted",
            "b",
            M2,
            ["ExperimentConcluded", "ExperimentPromoted"],
            "b (digits-resnet:v2) promoted by rule",
        ),
        (
            "ended, automatic, no difference: the control stays",
            running(promotion="Automatic"),
            LATER,
            measured((100, 100), (102, 98)),
            {"promotion": "Automatic"},
            "Promoted",
            "control",
            M1,
            ["ExperimentConcluded", "ExperimentPromoted"],
            "control (digits-resnet:v1) promoted by rule",
        ),
    ],
)
def test_experiment_runs_concludes_and_promotes(name, old, now, data, fields, phase, winner, stable, events, says):
    body = md(experiment(**fields))
    want, out = reconcile(body, old, stable=serving(M1), now=now, measurements=data)
    st = out.status
    exp = st.experiment
    assert (exp.phase, exp.winner, st.stable) == (phase, winner, stable)
    assert [e.reason for e in out.events if e.reason.startswith("Experiment")] == events
    assert says in exp.message
    assert [(v.name, v.successes, v.failures) for v in exp.variants] == [
        ("control", *[int(data["control"][k]) for k in ("successes", "failures")]),
        ("b", *[int(data["b"][k]) for k in ("successes", "failures")]),
    ]
    env = env_of(want.children[0])
    assert ("MODELOPS_EXPERIMENT" in env) == (phase != "Promoted")  # the pods drop the experiment once it is over
    assert env["MODELOPS_MODEL_DIGEST"] == stable.digest
    if phase == "Promoted" and stable != M1:
        assert st.previous == M1  # kept for a rollback, as a canary promotion keeps it
    cond = c.get_condition(st.conditions, c.EXPERIMENT)
    assert cond.status == (ConditionStatus.FALSE if phase == "Promoted" else ConditionStatus.TRUE)


def test_manual_promotion_by_annotation():
    concluded_out = reconcile(md(experiment()), running(), stable=serving(M1), now=LATER, measurements=CLEAR_WIN)[1]
    old = ModelDeploymentStatus.model_validate(concluded_out.status.wire())  # stored as the API server would
    assert old.experiment.phase == "Concluded" and old.experiment.variants[1].p_value < 0.05
    # a person overrides the test: the control, whatever it found
    body = md(experiment(), annotations={PROMOTE_VARIANT_ANNOTATION: "control"})
    want, out = reconcile(body, old, stable=serving(M1), now=LATER + timedelta(minutes=1))
    assert (out.status.experiment.phase, out.status.experiment.promoted, out.status.stable) == (
        "Promoted",
        "control",
        M1,
    )
    assert "by hand" in out.status.experiment.message
    assert ("annotate", "ModelDeployment", "digits") in [(a.verb, a.kind, a.name) for a in out.actions]
    assert next(a for a in out.actions if a.verb == "annotate").body == {PROMOTE_VARIANT_ANNOTATION: None}
    assert "MODELOPS_EXPERIMENT" not in env_of(want.children[0])
    # and b by annotation while still running makes b stable
    body = md(experiment(), annotations={PROMOTE_VARIANT_ANNOTATION: " b "})
    _, out = reconcile(body, running(), stable=serving(M1), now=T0 + timedelta(minutes=1))
    assert (out.status.experiment.phase, out.status.stable, out.status.previous) == ("Promoted", M2, M1)


def test_promoting_an_unknown_variant_is_refused_and_the_annotation_removed():
    body = md(experiment(), annotations={PROMOTE_VARIANT_ANNOTATION: "nope"})
    _, out = reconcile(body, running(), stable=serving(M1), now=T0 + timedelta(minutes=1))
    assert out.status.experiment.phase == "Running"
    refused = [e for e in out.events if e.reason == "ExperimentPromotionRefused"]
    assert refused and refused[0].type == "Warning" and "'nope' (variants: control, b)" in refused[0].message
    assert next(a for a in out.actions if a.verb == "annotate").body == {PROMOTE_VARIANT_ANNOTATION: None}


def test_a_promoted_experiment_stays_over_and_holds_the_stable_model():
    old = reconcile(
        md(experiment(promotion="Automatic")),
        running(promotion="Automatic"),
        stable=serving(M1),
        now=LATER,
        measurements=CLEAR_WIN,
    )[1].status
    old = ModelDeploymentStatus.model_validate(old.wire())
    # spec.model (v1) differs from the promoted b (v2): it waits, no canary starts
    want, out = reconcile(
        md(experiment(promotion="Automatic")), old, stable=serving(M2), now=LATER + timedelta(minutes=5)
    )
    assert out.status.experiment.phase == "Promoted" and out.status.stable == M2
    assert out.status.canary is None and want.plan.canary_replicas == 0
    assert "spec.model digits-resnet:v1 waits for experiment digits" in out.status.message
    assert out.events == []


def test_a_new_model_waits_while_the_experiment_runs():
    _, out = reconcile(md(experiment()), running(), target=M3, stable=serving(M1), now=T0 + timedelta(seconds=10))
    assert out.status.canary is None and out.status.experiment.phase == "Running"
    assert "spec.model digits-resnet:v3 waits" in out.status.message


@pytest.mark.parametrize(
    ("name", "old", "run", "reason", "says"),
    [
        ("no stable model yet", ModelDeploymentStatus(), None, c.EXPERIMENT_PENDING, "waiting for the first model"),
        (
            "a canary rollout under way",
            ModelDeploymentStatus(stable=M1, canary=M3, current_step=0, step_started_at=rollout.stamp(T0)),
            None,
            c.EXPERIMENT_PENDING,
            "waiting for the canary rollout of digits-resnet:v3 to end",
        ),
        (
            "the control is not the stable model",
            ModelDeploymentStatus(stable=M3),
            None,
            c.EXPERIMENT_CONTROL_NOT_STABLE,
            "must be the stable model digits-resnet:v3",
        ),
        (
            "variants incompatible",
            ModelDeploymentStatus(stable=M1),
            run_status(1, 2, datasets={2: "fashion"}),
            c.EXPERIMENT_VARIANTS_INCOMPATIBLE,
            "may differ in classes and input size",
        ),
    ],
)
def test_an_experiment_that_cannot_start(name, old, run, reason, says):
    target = old.stable or M1
    want, out = reconcile(md(experiment()), old, run=run, target=target, stable=serving(target))
    exp = out.status.experiment
    assert exp.phase == "Pending" and says in exp.message
    cond = c.get_condition(out.status.conditions, c.EXPERIMENT)
    assert (cond.status, cond.reason) == (ConditionStatus.FALSE, reason)
    assert "MODELOPS_EXPERIMENT" not in env_of(want.children[0])


def test_new_variants_start_a_new_experiment():
    old = running()
    body = md(experiment(("control", 1, 50), ("c", 3, 50)))
    _, out = reconcile(body, old, stable=serving(M1), now=T0 + timedelta(hours=2))
    exp = out.status.experiment
    assert exp.phase == "Running" and exp.started_at == rollout.stamp(T0 + timedelta(hours=2))
    assert [v.name for v in exp.variants] == ["control", "c"]


def test_removing_the_experiment_drops_a_running_one():
    old = running().model_copy(
        update={"conditions": c.set_condition([], c.EXPERIMENT, ConditionStatus.TRUE, c.EXPERIMENT_RUNNING, "x", 1)}
    )
    want, out = reconcile(md(), old, stable=serving(M1))
    assert out.status.experiment is None and c.get_condition(out.status.conditions, c.EXPERIMENT) is None
    assert "MODELOPS_EXPERIMENT" not in env_of(want.children[0])


# --- the queries ----------------------------------------------------------------------------------


def test_queries_select_each_variant_over_the_experiment_so_far():
    spec, body = spec_of(md(experiment(interval="1m"))), md(experiment(interval="1m"))
    old = running(interval="1m", measured=T0 + timedelta(minutes=9, seconds=30))
    assert ex.due_queries(spec, body, old.experiment, T0 + timedelta(minutes=10)) is None  # within the interval
    queries = ex.due_queries(spec, body, old.experiment, T0 + timedelta(minutes=10, seconds=30))
    assert queries is not None and set(queries) == {"control", "b"}
    b = queries["b"]
    assert set(b) == set(ex.MEASURES)
    sel = 'namespace="ns",modelops_dev_modeldeployment="digits"'
    assert b["successes"] == (
        f'sum(max_over_time(modelops_experiment_outcomes_total{{{sel},experiment="digits",variant="b",outcome="success"}}[630s]))'
    )
    assert f'{sel},experiment="digits",variant="b"' in b["requests"]
    assert f'version="{M2.version}"' in b["errorRate"] and 'code=~"5.."' in b["errorRate"]
    assert b["latencyP99"].startswith("histogram_quantile(0.99,") and f'version="{M2.version}"' in b["latencyP99"]
    concluded = old.experiment.model_copy(update={"phase": "Concluded"})
    assert ex.due_queries(spec, body, concluded, T0 + timedelta(hours=3)) is None  # decided once, never re-tested


# --- bad input ------------------------------------------------------------------------------------

BAD = [
    (
        "weights not summing to 100",
        {"variants": [{"name": "a", "version": 1, "weight": 50}, {"name": "b", "version": 2, "weight": 40}]},
        "weights must sum to 100 (they sum to 90)",
    ),
    (
        "duplicate names",
        {"variants": [{"name": "a", "version": 1, "weight": 50}, {"name": "a", "version": 2, "weight": 50}]},
        "variant names must be unique",
    ),
    ("one variant", {"variants": [{"name": "a", "version": 1, "weight": 99}]}, "at least 2 items"),
    (
        "one model twice",
        {"variants": [{"name": "a", "version": 1, "weight": 50}, {"name": "b", "version": 1, "weight": 50}]},
        "versions (and digests) must be unique",
    ),
    (
        "version and uri",
        {
            "variants": [
                {"name": "a", "version": 1, "uri": "s3://x/m.onnx", "digest": "sha256:" + "a" * 64, "weight": 50},
                {"name": "b", "version": 2, "weight": 50},
            ]
        },
        "variant a: set exactly one of version and uri",
    ),
    ("no end", {"duration": None}, "an experiment needs an end"),
    ("an upper-case header", {"keyHeader": "X-User-Id"}, "keyHeader"),
    ("too few samples for the approximation", {"minSamplesPerVariant": 10}, "minSamplesPerVariant"),
]


@pytest.mark.parametrize(("fields", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_experiments_are_refused(fields, says):
    exp = {k: v for k, v in {**experiment(), **fields}.items() if v is not None}
    with pytest.raises(ValidationError, match=re.escape(says)):
        spec_of(md(exp))


def test_version_variants_need_a_training_run():
    body = md(experiment())
    body["spec"]["model"] = {"uri": "s3://m/model.onnx", "digest": "sha256:" + "a" * 64}
    with pytest.raises(ValidationError, match=r"need model\.trainingRunRef"):
        spec_of(body)


# --- the queries in Prometheus' own engine (promtool) ----------------------------------------------

BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
PROMTOOL = BIN / "promtool"


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    base = {"namespace": "ns", "modelops_dev_modeldeployment": "digits", **labels}
    return {"series": metric + "{" + ",".join(f'{k}="{v}"' for k, v in base.items()) + "}", "values": values}


def test_the_queries_measure_what_they_say_in_prometheus(tmp_path):
    """Each variant query evaluated by promtool over series shaped like the server pods' metrics:
    a pod that left mid-experiment still counts, and so does one Prometheus first scraped after its
    traffic; other experiments, deployments and namespaces do not, nor a pod that served the
    version before the experiment; error rate and p99 come out as computed by hand."""
    if not os.access(PROMTOOL, os.X_OK):
        missing(f"promtool ({PROMTOOL})", "build it with `hack/build-binaries.sh prometheus` (hack/setup.sh does)")
    b = VariantStatus(name="b", version=M2.version, weight=50)
    queries = ex.variant_queries("ns", "digits", "ab", b, 630)
    outcomes, requests_total = "modelops_experiment_outcomes_total", "modelops_experiment_requests_total"
    buckets = "modelops_request_duration_seconds_bucket"
    exp_b = {"experiment": "ab", "variant": "b"}
    ver = {"version": M2.version, "endpoint": "classify"}
    input_series = [
        # b's outcomes on two pods; p2 went away after 4 minutes (scaled down): 100 + 20 successes, 30 failures
        series(outcomes, "0+10x10", outcome="success", pod="p1", **exp_b),
        series(outcomes, "0+5x4", outcome="success", pod="p2", **exp_b),
        series(outcomes, "0+3x10", outcome="failure", pod="p1", **exp_b),
        series(requests_total, "0+20x10", keyed="true", pod="p1", **exp_b),
        series(requests_total, "0+2x10", keyed="false", pod="p1", **exp_b),
        # what the selectors must leave out
        series(outcomes, "0+50x10", outcome="success", pod="p1", experiment="ab", variant="control"),
        series(outcomes, "0+50x10", outcome="success", pod="p1", experiment="older", variant="b"),
        series(outcomes, "0+50x10", outcome="success", pod="p9", experiment="ab", variant="b", namespace="other"),
        {
            "series": f'{outcomes}{{namespace="ns",modelops_dev_modeldeployment="else",experiment="ab",'
            'variant="b",outcome="success"}',
            "values": "0+50x10",
        },
        # b's answers on p1: 10% are 500s; half its requests within 0.1 s, all within 0.5 s
        series("modelops_requests_total", "0+90x10", code="200", pod="p1", **ver),
        series("modelops_requests_total", "0+10x10", code="500", pod="p1", **ver),
        series("modelops_requests_total", "0+90x10", code="500", pod="p1", version=M1.version, endpoint="classify"),
        series(buckets, "0+50x10", le="0.1", pod="p1", **ver),
        series(buckets, "0+100x10", le="0.5", pod="p1", **ver),
        series(buckets, "0+100x10", le="+Inf", pod="p1", **ver),
        # p3: first scraped after its 40 requests (36 answered, 4 failed; 20 within 0.1 s): they count
        series(requests_total, "40x10", keyed="true", pod="p3", **exp_b),
        series("modelops_requests_total", "36x10", code="200", pod="p3", **ver),
        series("modelops_requests_total", "4x10", code="500", pod="p3", **ver),
        series(buckets, "20x10", le="0.1", pod="p3", **ver),
        series(buckets, "40x10", le="0.5", pod="p3", **ver),
        series(buckets, "40x10", le="+Inf", pod="p3", **ver),
        # p0 served b's version before the experiment (no experiment counters): left out
        series("modelops_requests_total", "0+90x10", code="500", pod="p0", **ver),
        series(buckets, "0+90x10", le="+Inf", pod="p0", **ver),
    ]
    expected = {
        "successes": 120.0,
        "failures": 30.0,
        "requests": 260.0,
        "errorRate": 0.1,  # (100 + 4) / (1000 + 40)
        # by hand: rank 0.99 * 1040 = 1029.6 in (0.1, 0.5] holding 520: 0.1 + 0.4 * (1029.6 - 520) / 520
        "latencyP99": 0.492,
    }
    unit = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    {"expr": queries[m], "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": v}]}
                    for m, v in expected.items()
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(test_file)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("annotations", "wakes"),
    [
        ({PROMOTE_VARIANT_ANNOTATION: "b"}, True),
        ({PROMOTE_VARIANT_ANNOTATION: ""}, True),  # wakes, and is removed as naming nothing
        ({"example.com/promote-variant": "b"}, False),
    ],
)
def test_promote_variant_wakes_the_deployment_at_once(annotations, wakes):
    assert controllers.commanded(MODEL_DEPLOYMENT, annotations) is wakes
    assert controllers.commanded(DATASET, annotations) is False


def test_an_empty_promote_variant_is_removed_and_does_nothing():
    body = md(experiment(), annotations={PROMOTE_VARIANT_ANNOTATION: " "})
    _, out = reconcile(body, running(), stable=serving(M1), now=T0 + timedelta(minutes=1))
    assert out.status.experiment.phase == "Running" and out.events == []
    assert next(a for a in out.actions if a.verb == "annotate").body == {PROMOTE_VARIANT_ANNOTATION: None}
