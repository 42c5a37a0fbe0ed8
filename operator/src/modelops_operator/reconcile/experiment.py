"""A ModelDeployment's A/B experiment: a pure state machine over `status.experiment`.

    Pending ──► Running ──► Concluded ──► Promoted
       │           │            ▲ (promotion: Manual waits for `modelops.dev/promote-variant`)
       │           └── end reached and every variant has minSamplesPerVariant outcomes:
       │               the test is run once and its winner recorded
       └── waits for the first model, for a canary rollout to end, for its variants to resolve

While it is Running or Concluded the stable track's pods serve every variant (the server setting
`MODELOPS_EXPERIMENT`, built by `builders.modeldeployment.experiment_setting`), and a change of
`spec.model` waits: the rollout is held on the stable model (`ExperimentPlan.holds`). Promotion
makes the chosen variant the stable model the way a canary promotion does (the old stable kept in
`status.previous`); the pods then drop the experiment. The spec's experiment is pinned by its
fingerprint: a new name, key header or set of variants starts a new experiment.

**The test.** Each variant's feedback outcomes are Bernoulli trials; a challenger `i` is compared
with the control `0` by a one-sided two-proportion z-test with the pooled proportion:
`z = (p_i - p_0) / sqrt(p (1 - p) (1/n_i + 1/n_0))`, `p-value = P(Z > z) = erfc(z / sqrt 2) / 2`.
With `k` variants, each of the `k - 1` comparisons is held to `alpha / (k - 1)` (Bonferroni),
`alpha = 1 - confidence`. The test is run once, at the end, never while data comes in (looking
repeatedly and stopping at the first significant look would inflate false positives). Assumptions:
outcomes independent, one per request (duplicate or missing feedback biases the rates), and samples
large enough for the normal approximation (`minSamplesPerVariant` >= 30, and more when a rate is near
0 or 1). The winner is the significantly better challenger with the highest success rate that also
meets the error-rate and p99-latency limits; otherwise the control wins ("no significant
difference").
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import (
    Experiment,
    ExperimentStatus,
    ModelDeploymentSpec,
    ServedModel,
    VariantStatus,
)
from modelops_operator.reconcile.actions import Event
from modelops_operator.reconcile.rollout import parse_stamp, seconds, stamp

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
#: The measurements of one variant, by name (see `variant_queries`).
MEASURES = ("requests", "errorRate", "latencyP99", "successes", "failures")


@dataclass(frozen=True)
class Variant:
    """A variant with its model resolved."""

    name: str
    model: ServedModel
    weight: int
    dataset: str | None = None
    """The Dataset it was trained on, as its TrainingRun registered it (None for a URI)."""


@dataclass(frozen=True)
class Blocked:
    """The variants cannot be resolved or served together: why, in a reason and a message."""

    reason: str
    message: str


def experiment_name(spec: ModelDeploymentSpec, md_name: str) -> str:
    assert spec.experiment is not None
    return spec.experiment.name or md_name


def resolve_variants(spec: ModelDeploymentSpec, training_run: dict[str, Any] | None) -> list[Variant] | Blocked:
    """The experiment's variants with their models: a version from the TrainingRun's
    `status.models`, or a URI with its digest. Variants the TrainingRun registered from different
    Datasets are refused (their classes and input size may differ); whatever the TrainingRun
    cannot tell (URIs, versions of one Dataset) the server checks on the model cards."""
    exp, ref = spec.experiment, spec.model.training_run_ref
    assert exp is not None
    status = (training_run or {}).get("status") or {}
    models = {int(m.get("version", 0)): m for m in status.get("models") or []}
    if status.get("model"):
        models.setdefault(int(status["model"].get("version", 0)), status["model"])
    out = []
    for v in exp.variants:
        if v.uri is not None and v.digest is not None:
            out.append(Variant(v.name, ServedModel(version=v.digest[7:19], uri=v.uri, digest=v.digest), v.weight))
            continue
        assert ref is not None and v.version is not None
        m = models.get(v.version)
        if m is None or not m.get("uri") or not m.get("digest"):
            have = ", ".join(str(n) for n in sorted(models)) or "none"
            return Blocked(
                c.EXPERIMENT_VARIANT_NOT_REGISTERED,
                f'variant {v.name}: TrainingRun "{ref.name}" has not registered version {v.version} '
                f"(registered: {have}); fix spec.experiment.variants or wait for the version",
            )
        model = ServedModel(version=f"{ref.name}:v{v.version}", uri=m["uri"], digest=m["digest"])
        out.append(Variant(v.name, model, v.weight, m.get("dataset")))
    datasets = {v.dataset for v in out if v.dataset}
    if len(datasets) > 1:
        trained = ", ".join(f"{v.name} on {v.dataset}" for v in out if v.dataset)
        return Blocked(
            c.EXPERIMENT_VARIANTS_INCOMPATIBLE,
            f"variants trained on different Datasets ({trained}) may differ in classes and input size; "
            "compare models of one Dataset",
        )
    return out


def fingerprint(exp: Experiment, name: str) -> str:
    """What identifies an experiment: its name, key header and variants (not its end or test)."""
    doc = {"name": name, "keyHeader": exp.key_header, "variants": [v.wire() for v in exp.variants]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# --- the statistics -------------------------------------------------------------------------------


def z_test(successes: int, trials: int, control_successes: int, control_trials: int) -> tuple[float, float]:
    """(z, one-sided p-value) of a challenger's success rate being above the control's: the pooled
    two-proportion z-test. No variance (both all successes, or all failures) gives (0, 1): no evidence."""
    if trials <= 0 or control_trials <= 0:
        raise ValueError("both samples need at least one outcome")
    p1, p0 = successes / trials, control_successes / control_trials
    pooled = (successes + control_successes) / (trials + control_trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / trials + 1 / control_trials))
    if se == 0:
        return 0.0, 1.0
    z = (p1 - p0) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Decision:
    winner: str
    p_value: float | None
    message: str


def decide(exp: Experiment, table: list[VariantStatus]) -> Decision:
    """The winner of a table whose variants all have outcomes (see the module docstring)."""
    control, challengers = table[0], table[1:]
    alpha = (1 - exp.confidence) / len(challengers)
    n0 = (control.successes or 0) + (control.failures or 0)
    candidates: list[tuple[float, VariantStatus, float]] = []
    notes = []
    for v in challengers:
        n = (v.successes or 0) + (v.failures or 0)
        _, p = z_test(v.successes or 0, n, control.successes or 0, n0)
        v.p_value = p
        if p >= alpha:
            notes.append(f"{v.name}: p={p:.3g} >= {alpha:.3g}")
        elif (why := _over_limits(exp, v)) is not None:
            notes.append(f"{v.name}: significant (p={p:.3g}) but {why}")
        else:
            candidates.append((v.success_rate or 0.0, v, p))
    test = f"one-sided two-proportion z-test, alpha {1 - exp.confidence:.3g} over {len(challengers)} comparison(s)"
    if not candidates:
        return Decision(
            control.name, None, f"no challenger significantly better than {control.name} ({test}): " + "; ".join(notes)
        )
    rate, best, p = max(candidates, key=lambda t: t[0])
    base = control.success_rate or 0.0
    return Decision(
        best.name, p, f"{best.name} wins: success rate {rate:.3f} vs {base:.3f} for {control.name}, p={p:.3g} ({test})"
    )


def _over_limits(exp: Experiment, v: VariantStatus) -> str | None:
    lim = exp.metrics
    if v.error_rate is None or v.latency_p99 is None:
        return "its error rate or latency has no data"
    if v.error_rate > lim.max_error_rate:
        return f"error rate {v.error_rate:.4g} above {lim.max_error_rate}"
    if v.latency_p99 > lim.max_latency_p99_seconds:
        return f"p99 latency {v.latency_p99:.3g}s above {lim.max_latency_p99_seconds}s"
    return None


# --- the queries ----------------------------------------------------------------------------------


def variant_queries(namespace: str, md_name: str, experiment: str, v: VariantStatus, range_s: int) -> dict[str, str]:
    """The PromQL of each of `MEASURES` for one variant over the experiment so far (`range_s`).

    Every measure reads counters at their highest value in the range, per pod, summed over pods: a
    pod the autoscaler removed still counts (a container restarted within one pod loses what it
    counted before). Not `increase`: Prometheus finds a new pod some seconds after it serves, and
    `increase` cannot see what a counter had counted before its first sample, so a burst of traffic
    at an experiment's start left a variant with no error rate or p99 at all (0 / 0; the CI's A/B
    test, about half its runs). The server's per-version series (requests by code, latency
    buckets) are read only on the experiment's own pods (those with its counters): pods serving the
    same version before the experiment are left out, so that history does not count either."""
    owner = names.prometheus_label(names.MODEL_DEPLOYMENT_LABEL)
    base = f'namespace="{namespace}",{owner}="{md_name}"'
    exp = f'{base},experiment="{experiment}",variant="{v.name}"'
    ver = f'{base},version="{v.version}"'
    r = f"{max(1, range_s)}s"
    ours = f'modelops_experiment_requests_total{{{base},experiment="{experiment}"}}'
    pods = f"group by (pod) (max_over_time({ours}[{r}]))"

    def on_pods(selector: str) -> str:
        return f"(max_over_time({selector}[{r}]) and on (pod) {pods})"

    total = "sum(" + on_pods("modelops_requests_total{" + ver + "}") + ")"
    errors = "sum(" + on_pods("modelops_requests_total{" + ver + ',code=~"5.."}') + ")"
    buckets = on_pods("modelops_request_duration_seconds_bucket{" + ver + "}")
    return {
        "requests": f"sum(max_over_time(modelops_experiment_requests_total{{{exp}}}[{r}]))",
        "errorRate": f"({errors} or (0 * {total})) / {total}",
        "latencyP99": f"histogram_quantile(0.99, sum by (le) ({buckets}))",
        "successes": f'sum(max_over_time(modelops_experiment_outcomes_total{{{exp},outcome="success"}}[{r}]))',
        "failures": f'sum(max_over_time(modelops_experiment_outcomes_total{{{exp},outcome="failure"}}[{r}]))',
    }


def due_queries(
    spec: ModelDeploymentSpec, md: dict[str, Any], old: ExperimentStatus | None, now: datetime
) -> dict[str, dict[str, str]] | None:
    """The queries to run now, per variant, if the experiment is running and a measurement is due."""
    exp = spec.experiment
    if exp is None or old is None or old.phase != "Running":
        return None
    if old.fingerprint != fingerprint(exp, experiment_name(spec, md["metadata"]["name"])):
        return None
    started = parse_stamp(old.started_at)
    last = parse_stamp(old.measured_at)
    if started is None or (last is not None and now < last + timedelta(seconds=seconds(exp.interval))):
        return None
    range_s = int(max((now - started).total_seconds(), seconds(exp.interval)))
    meta = md["metadata"]
    name = experiment_name(spec, meta["name"])
    return {v.name: variant_queries(meta.get("namespace") or "", meta["name"], name, v, range_s) for v in old.variants}


# --- the machine ----------------------------------------------------------------------------------


@dataclass
class ExperimentObserved:
    """What the experiment is decided from."""

    variants: list[Variant] | Blocked
    stable: ServedModel | None
    """The stable model (status.stable) before this reconcile."""
    canary: ServedModel | None
    """A canary that rolls out (not rolled back)."""
    now: datetime
    measurements: dict[str, dict[str, float | None]] | None = None
    """Per variant, each of `MEASURES`, when `due_queries` asked for them."""
    command: str | None = None
    """The variant named by `modelops.dev/promote-variant`."""


@dataclass
class ExperimentPlan:
    status: ExperimentStatus
    events: list[Event] = field(default_factory=list)
    serving: list[Variant] | None = None
    """The variants the stable pods serve now (None: no experiment in the pods)."""
    holds: bool = False
    """The rollout stays on the stable model: a change of spec.model waits."""
    promote: ServedModel | None = None
    """The model to make stable now."""
    command_done: bool = True
    reason: str = c.EXPERIMENT_PENDING


def _count(value: float | None) -> int | None:
    return None if value is None else round(value)


def _served(v: VariantStatus) -> Variant:
    assert v.uri is not None and v.digest is not None
    return Variant(v.name, ServedModel(version=v.version, uri=v.uri, digest=v.digest), v.weight)


def plan(
    spec: ModelDeploymentSpec, md_name: str, old: ExperimentStatus | None, seen: ExperimentObserved
) -> ExperimentPlan:
    """The experiment's next state; see the module docstring."""
    exp = spec.experiment
    assert exp is not None
    name = experiment_name(spec, md_name)
    fp = fingerprint(exp, name)
    st = (
        old.model_copy(deep=True)
        if old is not None and old.fingerprint == fp
        else ExperimentStatus(name=name, fingerprint=fp)
    )
    out = ExperimentPlan(st, command_done=seen.command is None)
    if st.phase == "Promoted":
        out.holds, out.reason, out.command_done = True, c.EXPERIMENT_PROMOTED, True
        return out
    if st.phase == "Pending" and not _start(out, seen):
        return out
    return _run(exp, out, seen)


def _start(out: ExperimentPlan, seen: ExperimentObserved) -> bool:
    """Start a pending experiment if it can; else say why in its message and reason."""
    st = out.status
    if isinstance(seen.variants, Blocked):
        st.message, out.reason = seen.variants.message, seen.variants.reason
        return False
    if seen.stable is None:
        st.message = "waiting for the first model to serve"
        return False
    if seen.canary is not None:
        st.message = f"waiting for the canary rollout of {seen.canary.version} to end (promote or abort it)"
        return False
    control = seen.variants[0]
    if control.model.digest != seen.stable.digest:
        st.message = (
            f"the control (first variant, {control.name}: {control.model.version}) must be the stable model "
            f"{seen.stable.version}: put the stable model first"
        )
        out.reason = c.EXPERIMENT_CONTROL_NOT_STABLE
        return False
    st.phase, st.started_at = "Running", stamp(seen.now)
    st.variants = [
        VariantStatus(name=v.name, version=v.model.version, uri=v.model.uri, digest=v.model.digest, weight=v.weight)
        for v in seen.variants
    ]
    listing = ", ".join(f"{v.name} ({v.model.version}) {v.weight}%" for v in seen.variants)
    out.events.append(Event("Normal", "ExperimentStarted", f"experiment {st.name} started: {listing}"))
    return True


def _run(exp: Experiment, out: ExperimentPlan, seen: ExperimentObserved) -> ExperimentPlan:
    """A running or concluded experiment: record measurements, act on a command, conclude, promote."""
    st = out.status
    out.holds, out.serving = True, [_served(v) for v in st.variants]
    if seen.measurements is not None and st.phase == "Running":
        for v in st.variants:
            m = seen.measurements.get(v.name) or {}
            v.requests, v.successes, v.failures = (
                _count(m.get("requests")),
                _count(m.get("successes")),
                _count(m.get("failures")),
            )
            v.error_rate, v.latency_p99 = m.get("errorRate"), m.get("latencyP99")
            n = (v.successes or 0) + (v.failures or 0)
            v.success_rate = (v.successes or 0) / n if n else None
        st.measured_at = stamp(seen.now)
    if seen.command is not None:
        out.command_done = True
        chosen = next((v for v in st.variants if v.name == seen.command), None)
        if chosen is None:
            known = ", ".join(v.name for v in st.variants)
            out.events.append(
                Event(
                    "Warning",
                    "ExperimentPromotionRefused",
                    f"modelops.dev/promote-variant names no variant of {st.name}: {seen.command!r} (variants: {known})",
                )
            )
        else:
            return _promote(out, chosen, "by hand (modelops.dev/promote-variant)", seen)
    if st.phase == "Running":
        _maybe_conclude(exp, out, seen.now)
    if st.phase == "Concluded":
        winner = next(v for v in st.variants if v.name == st.winner)
        if exp.promotion == "Automatic":
            return _promote(out, winner, "by rule (promotion: Automatic)", seen)
        out.reason = c.EXPERIMENT_CONCLUDED
        st.message = f"{st.message}; annotate modelops.dev/promote-variant={winner.name} to promote it"[:1024]
        return out
    out.reason = c.EXPERIMENT_RUNNING
    return out


def _maybe_conclude(exp: Experiment, out: ExperimentPlan, now: datetime) -> None:
    st = out.status
    started = parse_stamp(st.started_at) or now
    total = sum(v.requests or 0 for v in st.variants)
    ends = []
    if exp.duration is not None and now >= started + timedelta(seconds=seconds(exp.duration)):
        ends.append(f"duration {exp.duration} passed")
    if exp.max_requests is not None and total >= exp.max_requests:
        ends.append(f"{total} requests >= maxRequests {exp.max_requests}")
    outcomes = {v.name: (v.successes or 0) + (v.failures or 0) for v in st.variants}
    short = {n: k for n, k in outcomes.items() if k < exp.min_samples_per_variant}
    have = ", ".join(f"{n} {k}" for n, k in outcomes.items())
    if not ends:
        st.message = f"running: {total} requests, outcomes {have} (at least {exp.min_samples_per_variant} each needed)"
        return
    if short:
        st.message = f"{' and '.join(ends)}; waiting for {exp.min_samples_per_variant} outcomes per variant ({have})"
        return
    d = decide(exp, st.variants)
    st.phase, st.winner, st.p_value, st.concluded_at = "Concluded", d.winner, d.p_value, stamp(now)
    st.message = d.message[:1024]
    out.events.append(Event("Normal", "ExperimentConcluded", f"experiment {st.name}: {d.message}"))


def _promote(out: ExperimentPlan, v: VariantStatus, how: str, seen: ExperimentObserved) -> ExperimentPlan:
    st = out.status
    st.phase, st.promoted = "Promoted", v.name
    st.message = f"{v.name} ({v.version}) promoted {how}; the experiment is over"
    out.serving, out.holds, out.reason = None, True, c.EXPERIMENT_PROMOTED
    model = _served(v).model
    if seen.stable is None or seen.stable.digest != model.digest:
        out.promote = model
    out.events.append(Event("Normal", "ExperimentPromoted", f"experiment {st.name}: {st.message}"))
    return out


def experiment_condition_status(reason: str) -> ConditionStatus:
    """The `Experiment` condition: True while it runs or waits for a person."""
    return T if reason in (c.EXPERIMENT_RUNNING, c.EXPERIMENT_CONCLUDED) else F
