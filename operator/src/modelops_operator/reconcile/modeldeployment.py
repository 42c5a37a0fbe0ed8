"""A ModelDeployment's reconciliation: its model, its children, and the queries of its analysis.

The model is a TrainingRun's registered version (the latest, or a pinned one from
`status.models`), or a URI with its digest. Until it resolves, the deployment waits with a reason
a user can act on and creates nothing; once it resolves, `rollout.plan` decides what each track
serves, `desired` builds the children that follow, and `reconcile_model_deployment` turns the plan
and the children found into the status and the actions: create or apply each child, set the
HTTPRoute's weights, remove a consumed command's annotation, set the rolled-back gauge.

The controller observes in the order the decisions need it, so that no call is made whose answer
is not used: the TrainingRun (when the model follows one), the two Deployments, the analysis
measurements (when one is due), the HTTPRoute (the rollout waits for the weight it carries), the
objects holding the children's names, and the server pods (when `pods_matter`). The operator's
rules in the HTTPRoute, and what a Gateway says of it, are `reconcile.routing`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import (
    AnalysisMetric,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServedModel,
)
from modelops_operator.builders import alerts as ba
from modelops_operator.builders import modeldeployment as bm
from modelops_operator.reconcile import experiment as ex
from modelops_operator.reconcile import ownership, rollout, routing
from modelops_operator.reconcile.actions import Action, Event, Outcome
from modelops_operator.reconcile.pods import pod_problem, replica_failure
from modelops_operator.reconcile.status import refused
from modelops_operator.settings import OperatorSettings

F = ConditionStatus.FALSE


@dataclass(frozen=True)
class Waiting:
    """The model cannot be resolved yet: why, in a reason and a message."""

    reason: str
    message: str


def resolve_model(spec: ModelDeploymentSpec, training_run: dict[str, Any] | None) -> ServedModel | Waiting:
    """The model the spec asks for."""
    src, ref = spec.model, spec.model.training_run_ref
    if src.uri is not None and src.digest is not None:
        return ServedModel(version=src.digest[7:19], uri=src.uri, digest=src.digest)
    assert ref is not None
    if training_run is None:
        msg = f'TrainingRun "{ref.name}" does not exist in this namespace; create it or fix spec.model.trainingRunRef'
        return Waiting(c.TRAINING_RUN_NOT_FOUND, msg)
    status = training_run.get("status") or {}
    models = {int(m.get("version", 0)): m for m in status.get("models") or []}
    latest = status.get("model")
    if latest:
        models.setdefault(int(latest.get("version", 0)), latest)
    chosen = models.get(ref.version) if ref.version is not None else (max(models.items())[1] if models else None)
    if chosen is None or not chosen.get("uri") or not chosen.get("digest"):
        wanted = f"version {ref.version}" if ref.version else "a model"
        return Waiting(c.MODEL_NOT_REGISTERED, f'TrainingRun "{ref.name}" has not registered {wanted} yet')
    return ServedModel(version=f"{ref.name}:v{chosen['version']}", uri=chosen["uri"], digest=chosen["digest"])


def waiting_status(
    old: ModelDeploymentStatus, generation: int, why: Waiting, *, at: datetime | None = None
) -> ModelDeploymentStatus:
    """The status while the model cannot be resolved. A deployment already serving keeps serving
    (its children are left alone) and says why it cannot move on."""
    conds = c.set_condition(old.conditions, c.MODEL_RESOLVED, F, why.reason, why.message, generation, at)
    conds = c.waiting(conds, why.reason, why.message, generation, at=at)
    phase = old.phase if old.stable is not None else "Pending"
    return old.model_copy(update={"phase": phase, "observed_generation": generation, "conditions": conds})


def refused_status(
    old: ModelDeploymentStatus, generation: int, reason: str, messages: list[str], *, at: datetime | None = None
) -> ModelDeploymentStatus:
    """The status when the operator will not write the children: another's object holds a child's
    name (NameConflict), or the HTTPRoute is not handed over (RouteNotDelegated) or has no room for
    the operator's rules (RouteTooManyRules). Nothing was
    written; what runs keeps running."""
    return refused(old, generation, reason, messages, old.phase if old.stable is not None else "Failed", at=at)


def resolved_condition(
    status: ModelDeploymentStatus, generation: int, model: ServedModel, *, at: datetime | None = None
) -> ModelDeploymentStatus:
    msg = f"model {model.version} ({model.digest}) at {model.uri}"
    conds = c.set_condition(
        status.conditions, c.MODEL_RESOLVED, ConditionStatus.TRUE, c.MODEL_FOUND, msg, generation, at
    )
    return status.model_copy(update={"conditions": conds})


def pods_blocked(
    status: ModelDeploymentStatus, generation: int, problem: str, *, at: datetime | None = None
) -> ModelDeploymentStatus:
    """Server pods that cannot start (an image that cannot be pulled, a missing ConfigMap, no node
    that fits): say so in Kubernetes' own words. Ready turns False with reason PodPending unless the
    stable track already serves (a canary that cannot start leaves the old model serving, and only
    the message tells)."""
    ready = c.get_condition(status.conditions, c.READY)
    update: dict[str, object] = {"message": problem}
    if ready is None or ready.status != ConditionStatus.TRUE:
        update["conditions"] = c.set_condition(
            status.conditions, c.READY, ConditionStatus.FALSE, c.POD_PENDING, problem, generation, at
        )
    return status.model_copy(update=update)


def track(deployment: dict[str, Any] | None) -> rollout.Track | None:
    """What the rollout reads of one track's Deployment (None when there is none)."""
    if deployment is None:
        return None
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return rollout.Track(
        replicas=int(spec.get("replicas") or 0),
        ready=int(st.get("readyReplicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        available=int(st.get("availableReplicas") or 0),
        total=int(st.get("replicas") or 0),
        digest=annotations.get(names.MODEL_DIGEST_ANNOTATION),
        settled=int(st.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 0),
        replicas_ours=ownership.owns(deployment, ("spec", "replicas")),
    )


def stable_replicas_to_apply(spec: ModelDeploymentSpec, stable: rollout.Track | None) -> int | None:
    """The stable Deployment's `spec.replicas` in what the operator applies: the autoscaler's
    minimum when the Deployment is created; the count it has while the operator still owns the
    field; None (left out, the autoscaler's) once another has changed it. Dropping it any earlier
    would remove the field, as the sole owner's apply removes what it no longer sets, and the
    Deployment would fall to its default of one pod until the autoscaler's next sync: the
    Kubernetes documentation's "transferring ownership" race. Keeping the count the Deployment
    already has leaves every decision of size to the autoscaler, and a stable track that has it
    is not applied again."""
    if stable is None:
        return spec.autoscaling.min_replicas
    return stable.replicas if stable.replicas_ours else None


@dataclass(frozen=True)
class Desired:
    """The rollout's next state, and the children that serve it (in the order they are written)."""

    plan: rollout.Plan
    children: list[dict[str, Any]]
    experiment: ex.ExperimentPlan | None = None
    """The A/B experiment's next state, with `spec.experiment`."""


def desired(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    old: ModelDeploymentStatus,
    seen: rollout.RolloutObserved,
    settings: OperatorSettings,
    *,
    service_monitor: bool,
    prometheus_rule: bool,
    experiment: ex.ExperimentObserved | None = None,
) -> Desired:
    """The rollout's plan and the children it implies: the two tracks' Deployments, the Services,
    the PodDisruptionBudget, the HorizontalPodAutoscaler, and the ServiceMonitor and PrometheusRule
    when their CRDs are installed (and, for the rule, the spec's alerts are on). A stable track
    created now starts at the autoscaler's minimum; an existing one keeps what the autoscaler set.
    The canary's Deployment is made when the first canary needs pods, and kept (at 0 replicas
    between rollouts) from then on: a ModelDeployment never rolled out has no idle Deployment, its
    ReplicaSet and their status writes (10% of the writes while 1,000 objects converge,
    bench/results/scale_lazy_canary.json), and one that did never has it deleted and made again.

    With `spec.experiment` (and what the controller saw for it, `experiment`), the experiment is
    decided first: a promotion replaces the stable model, a running or finished experiment holds
    the rollout on it, and the stable pods serve the variants while it runs."""
    generation = int(md["metadata"].get("generation") or 0)
    exp_plan = None
    if spec.experiment is not None and experiment is not None:
        exp_plan = ex.plan(spec, md["metadata"]["name"], old.experiment, experiment)
        if exp_plan.promote is not None:  # as a canary promotion does: the old stable kept for a rollback
            old = old.model_copy(update={"previous": old.stable, "stable": exp_plan.promote})
        if exp_plan.holds and old.stable is not None:  # a change of spec.model waits
            seen = replace(seen, target=old.stable)
    plan = rollout.plan(spec, old, seen, generation)
    stable_replicas = stable_replicas_to_apply(spec, seen.stable)
    serving = [(v.name, v.model, v.weight) for v in exp_plan.serving] if exp_plan and exp_plan.serving else []
    children = [bm.build_deployment(md, spec, plan.stable_model, "stable", settings, stable_replicas, serving)]
    if plan.canary_replicas > 0 or seen.canary is not None:  # made for the first canary, then kept at 0
        children.append(bm.build_deployment(md, spec, plan.canary_model, "canary", settings, plan.canary_replicas))
    children += [
        *bm.build_services(md, spec),
        bm.build_pdb(md),
        bm.build_hpa(md, spec),
    ]
    if service_monitor:
        children.append(bm.build_service_monitor(md))
    if prometheus_rule:
        children.append(ba.build_prometheus_rule(md, spec))
    return Desired(plan, children, exp_plan)


def canary_serves(status: ModelDeploymentStatus, canary: rollout.Track | None) -> bool:
    """A canary rolls out (not rolled back) and some of its pods are ready: only then does the
    HTTPRoute send it anything (its weight, the header's requests)."""
    return status.canary is not None and not status.aborted and canary is not None and canary.ready > 0


def route_weight(status: ModelDeploymentStatus, canary: rollout.Track | None) -> int:
    """The canary's share of the HTTPRoute's traffic: the step's weight while a canary serves,
    else 0 (a rolled-back canary, or one without a ready pod, gets none)."""
    return status.desired_weight if canary_serves(status, canary) else 0


def route_weight_in_effect(spec: ModelDeploymentSpec, md: dict[str, Any], route: dict[str, Any] | None) -> int | None:
    """What the rollout reads of the HTTPRoute (`RolloutObserved.route_weight`): the canary's weight
    in effect, 0 when no split is; None without `trafficRouting.httpRoute`."""
    route_name = spec.rollout.traffic_routing.http_route
    if not route_name:
        return None
    return routing.route_state(route, md["metadata"]["name"], route_name).weight if route is not None else 0


def reconcile_model_deployment(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    old: ModelDeploymentStatus,
    seen: rollout.RolloutObserved,
    want: Desired,
    claims: list[ownership.Claim],
    route: dict[str, Any] | None,
) -> Outcome[ModelDeploymentStatus]:
    """The status and the actions once the model resolved and the children's names were looked up
    (`claims`, one per child of `want`) along with the HTTPRoute the spec names (`route`). A name
    held by another's object, or a route not handed over, writes nothing."""
    meta = md["metadata"]
    ns, name, generation = meta.get("namespace") or "", meta.get("name") or "", int(meta.get("generation") or 0)
    at = seen.now.replace(microsecond=0)
    if taken := ownership.conflicts(claims):
        return Outcome(refused_status(old, generation, c.NAME_CONFLICT, taken, at=at))
    route_name = spec.rollout.traffic_routing.http_route
    if route_name and (why := ownership.route_delegated(route, ns, route_name, name)):
        return Outcome(refused_status(old, generation, c.ROUTE_NOT_DELEGATED, [why], at=at))
    plan = want.plan
    rules = []
    if route_name and route is not None:
        rules = bm.http_route_rules(
            spec, name, route_weight(plan.status, seen.canary), canary_serves(plan.status, seen.canary)
        )
        if why := routing.too_many_rules(route, rules, name, route_name):
            return Outcome(refused_status(old, generation, c.ROUTE_TOO_MANY_RULES, [why], at=at))
    actions = [
        Action(
            "create" if claim.verb == "create" else "apply",
            claim.body["kind"],
            claim.body["metadata"]["name"],
            claim.body,
            fields=claim.upgrade,
        )
        for claim in claims
        if claim.verb != "keep"
    ]
    status = plan.status
    if route_name and route is not None:
        if (patch := routing.route_patch(route, rules, name)) is not None:
            actions.append(Action("patch", names.HTTPROUTE.kind, route_name, patch))
        status = routing.with_route(status, routing.route_state(route, name, route_name), generation, at=at)
    if seen.command is not None and plan.command_done:
        actions.append(Action("annotate", "ModelDeployment", name, {rollout.COMMANDS[seen.command]: None}))
    status, exp_events = with_experiment(status, spec, want.experiment, seen.target, generation, at=at)
    promote_variant = (meta.get("annotations") or {}).get(names.PROMOTE_VARIANT_ANNOTATION)
    if promote_variant is not None and (want.experiment is None or want.experiment.command_done):
        actions.append(Action("annotate", "ModelDeployment", name, {names.PROMOTE_VARIANT_ANNOTATION: None}))
    aborted = plan.status.aborted and plan.status.canary is not None
    actions.append(Action("gauge", "ModelDeployment", name, value=1.0 if aborted else 0.0))
    status = resolved_condition(status, generation, seen.target, at=at)
    return Outcome(status.model_copy(update={"url": bm.service_url(md)}), actions, [*exp_events, *plan.events])


def with_experiment(
    status: ModelDeploymentStatus,
    spec: ModelDeploymentSpec,
    plan: ex.ExperimentPlan | None,
    target: ServedModel,
    generation: int,
    *,
    at: datetime | None = None,
) -> tuple[ModelDeploymentStatus, list[Event]]:
    """`status` with the experiment's (`status.experiment`, the `Experiment` condition, a word in
    the message when the spec's model waits for it), and the experiment's Events. Without
    `spec.experiment`, a finished experiment's record stays and any other is dropped."""
    if plan is None:
        old = status.experiment
        if spec.experiment is None and old is not None and old.phase != "Promoted":
            conds = [cond for cond in status.conditions if cond.type != c.EXPERIMENT]
            return status.model_copy(update={"experiment": None, "conditions": conds}), []
        return status, []
    exp = plan.status
    conds = c.set_condition(
        status.conditions,
        c.EXPERIMENT,
        ex.experiment_condition_status(plan.reason),
        plan.reason,
        exp.message or plan.reason,
        generation,
        at,
    )
    update: dict[str, object] = {"experiment": exp, "conditions": conds}
    stable = status.stable
    if plan.holds and stable is not None and target.digest != stable.digest:
        waits = f"; spec.model {target.version} waits for experiment {exp.name} (remove spec.experiment to roll it out)"
        update["message"] = ((status.message or "") + waits)[:1024]
    return status.model_copy(update=update), list(plan.events)


def pods_matter(stable: rollout.Track | None, status: ModelDeploymentStatus) -> bool:
    """Whether the server pods may explain a wait: the stable track is missing or short of
    available pods, or a canary rolls out."""
    return stable is None or stable.available < stable.replicas or status.canary is not None


def with_pods(
    status: ModelDeploymentStatus,
    pods: list[dict[str, Any]],
    deployments: Sequence[dict[str, Any] | None] = (),
    *,
    at: datetime | None = None,
) -> ModelDeploymentStatus:
    """`status` with the reason server pods cannot start, if one cannot (see `pods_blocked`): from
    the pods, or, when the API server refused them, from the Deployments' `ReplicaFailure`."""
    problem = pod_problem(pods, at) or replica_failure(deployments)
    return pods_blocked(status, status.observed_generation, problem, at=at) if problem else status


def _selector(namespace: str, name: str, track: str) -> str:
    owner, track_label = names.prometheus_label(names.MODEL_DEPLOYMENT_LABEL), names.prometheus_label(names.TRACK_LABEL)
    return f'namespace="{namespace}",{owner}="{name}",{track_label}="{track}"'


def refused_queries(spec: ModelDeploymentSpec, allowed: bool) -> str | None:
    """Why the spec's analysis cannot run here, or None: a `custom` metric runs any PromQL against
    the shared Prometheus (and its value lands in status), so it needs the operator's opt-in."""
    custom = sorted(
        {
            m.name
            for step in spec.rollout.steps
            if step.analysis
            for m in step.analysis.metrics
            if m.template == "custom"
        }
    )
    if custom and not allowed:
        return (
            f"spec.rollout.steps[].analysis.metrics: custom metrics ({', '.join(custom)}) are turned off on this "
            "operator (they could read any tenant's series); use the errorRate and latencyP99 templates, or ask the "
            "operator's admin for settings.customAnalysisQueries"
        )
    return None


def metric_query(metric: AnalysisMetric, namespace: str, name: str, track: str, interval: str) -> str:
    """The PromQL of an analysis metric for one track. No traffic gives no data (Inconclusive),
    never a passing zero: the error rate's numerator defaults to 0 only when its denominator exists."""
    sel = _selector(namespace, name, track)
    if metric.template == "errorRate":
        total = f"sum(rate(modelops_requests_total{{{sel}}}[{interval}]))"
        errors = f'sum(rate(modelops_requests_total{{{sel},code=~"5.."}}[{interval}]))'
        return f"({errors} or (0 * {total})) / {total}"
    if metric.template == "latencyP99":
        buckets = f"rate(modelops_request_duration_seconds_bucket{{{sel}}}[{interval}])"
        return f"histogram_quantile(0.99, sum by (le) ({buckets}))"
    assert metric.query is not None
    return (
        metric.query.replace("{{selector}}", sel)
        .replace("{{stableSelector}}", _selector(namespace, name, "stable"))
        .replace("{{interval}}", interval)
    )
