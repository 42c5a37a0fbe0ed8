"""The gray release of a ModelDeployment: a pure state machine over its status.

Every reconcile calls `plan()` with what the controller observed (the model the spec resolves to, the
two Deployments, the time, a manual command from an annotation, and analysis measurements when
`due_analysis()` asked for them). It returns the new status, which model each track serves, the
canary's replica count and the Events to post. All state lives in status, so an operator restart
resumes a rollout at the step it was in.

    new model ──► canary = new, step 0
        setWeight w   canary pods for w% of traffic; next step once they are ready (and, with
                      an HTTPRoute, once it carries w% in effect)
        pause         for a duration, or until `modelops.dev/promote`
        analysis      every `interval`, each metric's Prometheus query against its condition;
                      `count` clean measurements go on; more than `failureLimit` failed ones
                      abort; more than `inconclusiveLimit` without data pause for a human
    after the last step ──► promote: previous = stable, stable = canary; the stable Deployment
        rolls to the new model while the canary pods still serve; then the canary scales to 0
    abort (analysis failed, or `modelops.dev/abort`) ──► canary at 0%, phase Degraded, Event;
        `modelops.dev/retry` starts the steps again; a newer model replaces the canary
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import (
    Analysis,
    AnalysisMetric,
    AnalysisResult,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServedModel,
)
from modelops_operator.builders.modeldeployment import canary_replicas
from modelops_operator.reconcile.actions import Event

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
Command = Literal["promote", "abort", "retry"]
#: The annotation of each manual command, in the order they are looked for.
COMMANDS: dict[Command, str] = {
    "promote": names.PROMOTE_ANNOTATION,
    "abort": names.ABORT_ANNOTATION,
    "retry": names.RETRY_ANNOTATION,
}
#: Values of a command annotation that ask for the command (any case); any other value asks for
#: nothing.
COMMAND_VALUES = frozenset({"true", "yes", "1"})
MAX_RESULTS = 256
_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def requested_command(annotations: Mapping[str, str]) -> Command | None:
    """The manual command an object's annotations ask for (`modelops.dev/promote=true`, ...): the
    first of promote, abort, retry whose annotation is `true`, `yes` or `1`; None when none is.

    The one definition of a command: the operator reconciles at once on an event that carries one
    and removes its annotation once acted on. An annotation with another value (`promote=false`)
    is no command: it neither wakes the object nor waits to be removed.
    """
    for command, key in COMMANDS.items():
        if (annotations.get(key) or "").strip().lower() in COMMAND_VALUES:
            return command
    return None


def seconds(duration: str) -> float:
    """A Go-style duration (`30s`, `1m30s`, `500ms`) in seconds."""
    return sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(duration))


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Track:
    """What the controller saw of one track's Deployment."""

    replicas: int = 0
    """Pods the Deployment asks for (`spec.replicas`)."""
    ready: int = 0
    updated: int = 0
    available: int = 0
    total: int = 0
    """Pods that exist, old template and new (`status.replicas`)."""
    digest: str | None = None
    """The model digest of its pod template."""
    settled: bool = True
    """The Deployment controller has seen its latest spec (observedGeneration == generation)."""
    replicas_ours: bool = False
    """The operator still owns `spec.replicas` (its field manager set it, and no autoscaler or person
    has changed it since)."""

    def rolled_out(self, digest: str) -> bool:
        """Every pod runs `digest`'s model and is available."""
        return self.serving(digest, self.replicas)

    def serving(self, digest: str, count: int) -> bool:
        """At least `count` pods run `digest`'s model and are available, and no pod of an older
        template is left (what `ready` alone cannot tell during a rolling update)."""
        return (
            self.settled
            and self.digest == digest
            and self.updated >= count
            and self.available >= count
            and self.total <= self.updated
        )


@dataclass(frozen=True)
class Measurement:
    """One analysis metric measured once: the canary's value, and the stable's for comparisons."""

    metric: str
    value: float | None
    stable_value: float | None = None


@dataclass
class RolloutObserved:
    """What the rollout is decided from: the model the spec resolves to, the two tracks' Deployments,
    the time, a manual command, and the measurements `due_analysis` asked for."""

    target: ServedModel
    """The model the spec asks for (resolved by the controller)."""
    stable: Track | None = None
    canary: Track | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When it was seen: the time of steps, measurements and any condition that changes."""
    command: Command | None = None
    measurements: list[Measurement] | None = None
    """Taken for the current analysis step because `due_analysis` said so."""
    route_weight: int | None = None
    """With `trafficRouting.httpRoute`: the canary weight the HTTPRoute carries in effect (accepted
    by a Gateway at its latest generation, backends resolved; 0 when no split is in effect). None
    splits by replica ratio."""


@dataclass(frozen=True)
class Plan:
    status: ModelDeploymentStatus
    stable_model: ServedModel
    canary_model: ServedModel
    canary_replicas: int
    events: list[Event]
    command_done: bool
    """The command annotation was acted on (or is meaningless now): the controller removes it."""


def _step_analysis(spec: ModelDeploymentSpec, step: int | None) -> Analysis | None:
    steps = spec.rollout.steps
    return steps[step].analysis if step is not None and step < len(steps) else None


def due_analysis(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> Analysis | None:
    """The analysis to measure now, if the rollout is at an analysis step whose next measurement is due."""
    if status.canary is None or status.aborted:
        return None
    analysis = _step_analysis(spec, status.current_step)
    if analysis is None:
        return None
    taken = [parse_stamp(r.measured_at) for r in status.analysis if r.step == status.current_step]
    last = max((t for t in taken if t is not None), default=None) or parse_stamp(status.step_started_at)
    if last is None:
        return analysis
    return analysis if now >= last + timedelta(seconds=seconds(analysis.interval)) else None


def judge(metric: AnalysisMetric, m: Measurement) -> tuple[float | None, str]:
    """(value compared, result) of one measurement against its metric's condition."""
    value = m.value
    if metric.compare_to_stable:
        value = value / m.stable_value if value is not None and m.stable_value else None
    if value is None:
        return None, "Inconclusive"
    if (metric.max is not None and value > metric.max) or (metric.min is not None and value < metric.min):
        return value, "Failed"
    return value, "Successful"


class _Rollout:
    def __init__(
        self, spec: ModelDeploymentSpec, old: ModelDeploymentStatus, seen: RolloutObserved, generation: int
    ) -> None:
        self.spec, self.seen, self.generation = spec, seen, generation
        self.status = old.model_copy(update={"observed_generation": generation})
        self.events: list[Event] = []
        self.command_done = seen.command is None
        self.now = seen.now
        self.paused = False
        #: The step `seen.measurements` were taken for (`due_analysis` looked at the stored step).
        self.measured_step = old.current_step

    def update(self, **fields: object) -> None:
        self.status = self.status.model_copy(update=fields)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message[:1024]))

    def consume(self, command: Command) -> bool:
        if self.seen.command == command:
            self.command_done = True
            return True
        return False

    # --- transitions ----------------------------------------------------------------------

    def start(self, target: ServedModel, why: str) -> None:
        self.measured_step = None  # measurements taken for the replaced rollout count for nothing
        self.update(
            canary=target,
            current_step=0,
            step_started_at=stamp(self.now),
            desired_weight=0,
            analysis=[],
            aborted=False,
        )
        self.event("Normal", "RolloutStarted", why)

    def advance(self) -> None:
        self.update(current_step=(self.status.current_step or 0) + 1, step_started_at=stamp(self.now))

    def promote(self) -> None:
        st = self.status
        assert st.canary is not None
        self.event(
            "Normal",
            "Promoted",
            f"model {st.canary.version} promoted to stable; {st.stable.version if st.stable else 'nothing'} "
            "is kept as status.previous for an instant rollback",
        )
        self.update(
            previous=st.stable,
            stable=st.canary,
            canary=None,
            current_step=None,
            step_started_at=None,
            desired_weight=0,
        )

    def abort(self, why: str) -> None:
        self.update(aborted=True, desired_weight=0)
        version = self.status.canary.version if self.status.canary else "?"
        self.event("Warning", "RolledBack", f"canary {version} rolled back: {why}")
        self.update(message=f"rolled back: {why}")

    # --- the machine ------------------------------------------------------------------------

    def run(self) -> Plan:
        target = self.seen.target
        st = self.status
        if st.stable is None:  # the first model: nothing to compare it with
            self.update(stable=target)
        elif target.digest == st.stable.digest:
            if st.canary is not None:
                self.event("Normal", "RolloutCancelled", f"the spec asks for stable {target.version} again")
                self.update(canary=None, current_step=None, step_started_at=None, desired_weight=0, aborted=False)
        elif st.canary is None or st.canary.digest != target.digest:
            if st.canary is not None:
                why = f"model {target.version} replaces canary {st.canary.version} mid-rollout"
            else:
                why = f"rolling out model {target.version} as a canary beside {st.stable.version}"
            self.start(target, why)
        self.apply_command()
        if self.status.canary is not None and not self.status.aborted:
            self.walk_steps()
        return self.result()

    def apply_command(self) -> None:
        st = self.status
        if st.canary is None:
            self.command_done = True  # nothing to promote, abort or retry
            return
        if self.consume("abort") and not st.aborted:
            self.abort("aborted by hand (modelops.dev/abort)")
        elif self.consume("retry"):
            if st.aborted:
                self.update(aborted=False, current_step=0, step_started_at=stamp(self.now), analysis=[], message=None)
                self.event("Normal", "RolloutRetried", f"retrying the rollout of {st.canary.version} from step 0")
        elif self.seen.command == "promote" and st.aborted:
            self.command_done = True  # promoting a rolled-back canary needs a retry first

    def walk_steps(self) -> None:
        steps = self.spec.rollout.steps
        for _ in range(len(steps) + 1):
            step = self.status.current_step or 0
            if step >= len(steps):
                self.promote()
                return
            s = steps[step]
            if s.set_weight is not None:
                self.update(desired_weight=s.set_weight)
                need = canary_replicas(s.set_weight, self.stable_replicas(), self.spec.rollout.canary_replicas)
                seen = self.seen.canary or Track()
                if not seen.serving(self.canary_digest() or "", need):
                    have = seen.updated if seen.digest == self.canary_digest() else 0
                    self.update(message=f"step {step}: waiting for {need} canary pod(s) of the new model ({have} up)")
                    return
                routed = self.seen.route_weight
                if routed is not None and routed != s.set_weight:
                    route = self.spec.rollout.traffic_routing.http_route
                    self.update(
                        message=f"step {step}: waiting for HTTPRoute {route} to carry {s.set_weight}% to the canary "
                        f"({routed}% in effect)"
                    )
                    return
                self.advance()
            elif s.pause is not None:
                if self.consume("promote"):
                    self.advance()
                    continue
                if s.pause.duration is None:
                    self.paused = True
                    self.update(message=f"step {step}: paused until promoted (annotate modelops.dev/promote=true)")
                    return
                started = parse_stamp(self.status.step_started_at) or self.now
                left = started + timedelta(seconds=seconds(s.pause.duration)) - self.now
                if left > timedelta(0):
                    self.update(message=f"step {step}: pausing {s.pause.duration} ({int(left.total_seconds())} s left)")
                    return
                self.advance()
            elif s.analysis is not None:
                if self.consume("promote"):
                    self.advance()
                    continue
                if not self.analyse(step, s.analysis):
                    return
                self.advance()

    def canary_digest(self) -> str | None:
        return self.status.canary.digest if self.status.canary else None

    def scaling(self, stable: Track, digest: str) -> bool:
        """The stable track serves `digest` on every pod and at least the autoscaler's minimum are
        available: pods missing beyond that are a scale-up under way, not a rollout."""
        return (
            stable.settled
            and stable.digest == digest
            and stable.updated >= stable.replicas
            and stable.total <= stable.updated
            and stable.available >= self.spec.autoscaling.min_replicas
        )

    def stable_replicas(self) -> int:
        seen = self.seen.stable
        return max(seen.replicas if seen else 0, self.spec.autoscaling.min_replicas)

    def analyse(self, step: int, analysis: Analysis) -> bool:
        """Record measurements taken now; True when the step's analysis passed."""
        if self.seen.measurements is not None and step == self.measured_step:
            self.measured_step = None  # taken for this step only: a step reached later in this pass waits its interval
            by_name = {m.metric: m for m in self.seen.measurements}
            results = list(self.status.analysis)
            for metric in analysis.metrics:
                value, result = judge(metric, by_name.get(metric.name, Measurement(metric.name, None)))
                results.append(
                    AnalysisResult(
                        metric=metric.name, value=value, result=result, step=step, measured_at=stamp(self.now)
                    )
                )
            self.update(analysis=results[-MAX_RESULTS:])
        rounds: dict[str, list[AnalysisResult]] = {}
        for r in self.status.analysis:
            if r.step == step:
                rounds.setdefault(r.measured_at, []).append(r)
        failed = [rs for rs in rounds.values() if any(r.result == "Failed" for r in rs)]
        unclear = [rs for rs in rounds.values() if rs not in failed and any(r.result == "Inconclusive" for r in rs)]
        passed = [rs for rs in rounds.values() if all(r.result == "Successful" for r in rs)]
        if len(failed) > analysis.failure_limit:
            worst = next(r for r in failed[-1] if r.result == "Failed")
            metric = next(m for m in analysis.metrics if m.name == worst.metric)
            bound = (
                f"max {metric.max}"
                if metric.max is not None and (worst.value or 0) > metric.max
                else f"min {metric.min}"
            )
            self.abort(f"analysis at step {step}: {worst.metric} = {worst.value:.4g} outside {bound}")
            return False
        if len(unclear) > analysis.inconclusive_limit:
            self.paused = True
            self.update(
                message=f"step {step}: analysis inconclusive {len(unclear)} times (no data: is traffic reaching the "
                "canary?); paused: annotate modelops.dev/promote=true to go on, or modelops.dev/abort=true"
            )
            return False
        if len(passed) >= analysis.count:
            self.event("Normal", "AnalysisPassed", f"step {step}: {len(passed)} clean measurements")
            return True
        self.update(message=f"step {step}: analysis {len(passed)}/{analysis.count} clean measurements")
        return False

    # --- results ------------------------------------------------------------------------------

    def result(self) -> Plan:
        st = self.status
        stable_seen, canary_seen = self.seen.stable or Track(), self.seen.canary or Track()
        assert st.stable is not None
        stable_done = stable_seen.rolled_out(st.stable.digest)
        if st.canary is not None and not st.aborted:
            replicas = canary_replicas(st.desired_weight, self.stable_replicas(), self.spec.rollout.canary_replicas)
            canary_model = st.canary
        elif st.canary is None and not stable_done and canary_seen.digest == st.stable.digest:
            replicas, canary_model = canary_seen.replicas, st.stable  # promoted: canary serves until stable rolled
        else:
            replicas, canary_model = 0, st.canary or st.stable
        ready = stable_seen.ready + canary_seen.ready
        if self.seen.route_weight is not None:
            weight = self.seen.route_weight
        else:  # the shared Service spreads requests over the ready pods of both tracks
            weight = round(100 * canary_seen.ready / ready) if ready and replicas else 0
        paused = st.canary is not None and not st.aborted and self.paused
        if st.canary is not None and st.aborted:
            phase, reason = "Degraded", c.ROLLED_BACK
        elif paused:
            phase, reason = "Paused", c.ROLLOUT_PAUSED
        elif st.canary is not None:
            phase, reason = "Progressing", c.ROLLOUT_IN_PROGRESS
        elif not stable_done and not self.scaling(stable_seen, st.stable.digest):
            phase, reason = ("Progressing" if stable_seen.ready else "Pending"), c.ROLLING_STABLE
            self.update(message=f"stable rolling out model {st.stable.version} ({stable_seen.available} available)")
        else:
            phase, reason = "Healthy", c.SERVING
            self.update(message=f"serving model {st.stable.version}")
        self.update(
            phase=phase,
            stable_version=st.stable.version,
            canary_weight=weight,
            replicas=stable_seen.replicas + canary_seen.replicas,
            ready_replicas=ready,
        )
        msg = self.status.message or reason
        available = T if stable_seen.ready > 0 else F
        conds = self.status.conditions
        g, at = self.generation, self.now.replace(microsecond=0)
        conds = c.set_condition(
            conds,
            c.AVAILABLE,
            available,
            c.MINIMUM_REPLICAS_AVAILABLE if available == T else c.NO_READY_REPLICAS,
            f"{stable_seen.ready} stable server pod(s) ready",
            g,
            at,
        )
        conds = c.set_condition(
            conds, c.PROGRESSING, T if phase in ("Progressing", "Pending") else F, reason, msg, g, at
        )
        conds = c.set_condition(conds, c.DEGRADED, T if phase == "Degraded" else F, reason, msg, g, at)
        conds = c.set_condition(conds, c.READY, T if phase == "Healthy" else F, reason, msg, g, at)
        self.update(conditions=conds)
        return Plan(self.status, st.stable, canary_model, replicas, self.events, self.command_done)


def plan(spec: ModelDeploymentSpec, old: ModelDeploymentStatus, seen: RolloutObserved, generation: int) -> Plan:
    """The next state of a ModelDeployment's rollout; see the module docstring."""
    return _Rollout(spec, old, seen, generation).run()
