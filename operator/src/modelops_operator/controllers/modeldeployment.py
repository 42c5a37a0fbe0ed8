"""The ModelDeployment controller: resolve the model, observe the two tracks, measure when an
analysis is due (and the A/B experiment's variants when a measurement of them is), decide
(`reconcile.experiment`, `reconcile.rollout` and `reconcile.modeldeployment`), write the children, say
why server pods cannot start, move `spec.model.mlflowAlias` to a newly promoted stable model, and report
what the stable track's autoscaler sees and does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelops_operator import kube, mlflow, prometheus
from modelops_operator.api import names
from modelops_operator.api.kinds import TRAINING_RUN
from modelops_operator.api.modeldeployment import Analysis, ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.builders import modeldeployment as bm
from modelops_operator.controllers.common import execute_all, secret_reader
from modelops_operator.reconcile import autoscaling, ownership, rollout
from modelops_operator.reconcile import experiment as ex
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile.actions import Event
from modelops_operator.reconcile.status import invalid_spec
from modelops_operator.settings import OperatorSettings

HPA = "HorizontalPodAutoscaler"


def measure(settings: OperatorSettings, analysis: Analysis, namespace: str, name: str) -> list[rollout.Measurement]:
    """Run each analysis metric's query for the canary (and the stable, for comparisons)."""
    out = []
    for metric in analysis.metrics:
        value = prometheus.query(
            settings.prometheus_url, rm.metric_query(metric, namespace, name, "canary", analysis.interval)
        )
        stable = None
        if metric.compare_to_stable:
            stable_query = rm.metric_query(metric, namespace, name, "stable", analysis.interval)
            stable = prometheus.query(settings.prometheus_url, stable_query)
        out.append(rollout.Measurement(metric.name, value, stable))
    return out


def observe_experiment(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    old: ModelDeploymentStatus,
    run: dict[str, Any] | None,
    settings: OperatorSettings,
    now: datetime,
) -> ex.ExperimentObserved | None:
    """What the experiment is decided from: its variants resolved from the TrainingRun already
    read, the per-variant measurements when due, and a `modelops.dev/promote-variant` command."""
    if spec.experiment is None:
        return None
    meta = body["metadata"]
    measurements = None
    if (queries := ex.due_queries(spec, body, old.experiment, now)) is not None:
        measurements = {
            variant: {measure: prometheus.query(settings.prometheus_url, q) for measure, q in by_measure.items()}
            for variant, by_measure in queries.items()
        }
    command = ((meta.get("annotations") or {}).get(names.PROMOTE_VARIANT_ANNOTATION) or "").strip() or None
    canary = old.canary if old.canary is not None and not old.aborted else None
    return ex.ExperimentObserved(ex.resolve_variants(spec, run), old.stable, canary, now, measurements, command)


def observe_rollout(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    old: ModelDeploymentStatus,
    target: ServedModel,
    settings: OperatorSettings,
    now: datetime,
) -> tuple[rollout.RolloutObserved, list[dict[str, Any] | None], dict[str, Any] | None]:
    """The two tracks' Deployments (as tracks, and as read), a manual command, the analysis
    measurements when due, and the HTTPRoute the spec names (what it carries in effect, and as read)."""
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    deployments = [kube.get_deployment(ns, bm.deployment_name(name, track)) for track in ("stable", "canary")]
    stable, canary = rm.track(deployments[0]), rm.track(deployments[1])
    command = rollout.requested_command(meta.get("annotations") or {})
    analysis = rollout.due_analysis(spec, old, now)
    measurements = measure(settings, analysis, ns, name) if analysis is not None else None
    route_name = spec.rollout.traffic_routing.http_route
    route = kube.get_http_route(ns, route_name) if route_name else None
    seen = rollout.RolloutObserved(
        target, stable, canary, now, command, measurements, rm.route_weight_in_effect(spec, body, route)
    )
    return seen, deployments, route


def reconcile(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    old: ModelDeploymentStatus,
    settings: OperatorSettings,
    now: datetime,
) -> tuple[ModelDeploymentStatus, list[Event]]:
    """Observe, decide, act; the new status and the Events to post."""
    meta = body["metadata"]
    ns, name, generation = meta.get("namespace") or "", meta.get("name") or "", int(meta.get("generation") or 0)
    at = now.replace(microsecond=0)  # conditions keep the second, as Kubernetes stores them
    if why_not := rm.refused_queries(spec, settings.custom_analysis_queries):
        return invalid_spec(old, generation, why_not, at=at), []
    ref = spec.model.training_run_ref
    run = kube.get_object(TRAINING_RUN, ns, ref.name) if ref else None
    target = rm.resolve_model(spec, run)
    if isinstance(target, rm.Waiting):
        return rm.waiting_status(old, generation, target, at=at), []
    seen, deployments, route = observe_rollout(body, spec, old, target, settings, now)
    want = rm.desired(
        body,
        spec,
        old,
        seen,
        settings,
        service_monitor=kube.crd_exists(names.SERVICEMONITOR.crd),
        prometheus_rule=spec.alerts.enabled and kube.crd_exists(names.PROMETHEUSRULE.crd),
        experiment=observe_experiment(body, spec, old, run, settings, now),
    )
    found = [kube.get_like(child) for child in want.children]
    claims = [ownership.claim(child, now_) for child, now_ in zip(want.children, found, strict=True)]
    outcome = rm.reconcile_model_deployment(body, spec, old, seen, want, claims, route)
    execute_all(body, outcome.actions)
    status = outcome.status
    if outcome.actions and rm.pods_matter(seen.stable, status):  # a refusal has none: nothing was written
        pods = kube.list_pods(ns, f"{names.MODEL_DEPLOYMENT_LABEL}={name}")
        status = rm.with_pods(status, pods, deployments, at=at)
    # spec.model.mlflowAlias follows the stable model: MLflow is called only when that changed.
    status = mlflow.apply_alias(spec, status, run, secret_reader(ns), at=at)
    hpa = next((obj for child, obj in zip(want.children, found, strict=True) if child["kind"] == HPA), None)
    status, scaled = autoscaling.with_autoscaler(status, hpa, generation, at=at)
    return status, [*outcome.events, *scaled]
