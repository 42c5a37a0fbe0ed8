"""A ModelDeployment's model, and the Prometheus queries of its canary analysis.

The model is a TrainingRun's registered version (the latest, or a pinned one from
`status.models`), or a URI with its digest. Until it resolves, the deployment waits with a reason
a user can act on and creates nothing; once it resolves, `rollout.plan` takes over.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from modelops_operator.reconcile.status import refused

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


def waiting_status(old: ModelDeploymentStatus, generation: int, why: Waiting) -> ModelDeploymentStatus:
    """The status while the model cannot be resolved. A deployment already serving keeps serving
    (its children are left alone) and says why it cannot move on."""
    conds = c.set_condition(old.conditions, c.MODEL_RESOLVED, F, why.reason, why.message, generation)
    conds = c.waiting(conds, why.reason, why.message, generation)
    phase = old.phase if old.stable is not None else "Pending"
    return old.model_copy(update={"phase": phase, "observed_generation": generation, "conditions": conds})


def refused_status(
    old: ModelDeploymentStatus, generation: int, reason: str, messages: list[str]
) -> ModelDeploymentStatus:
    """The status when the operator will not write the children: another's object holds a child's
    name (NameConflict), or the HTTPRoute is not handed over (RouteNotDelegated). Nothing was
    written; what runs keeps running."""
    return refused(old, generation, reason, messages, old.phase if old.stable is not None else "Failed")


def resolved_condition(status: ModelDeploymentStatus, generation: int, model: ServedModel) -> ModelDeploymentStatus:
    msg = f"model {model.version} ({model.digest}) at {model.uri}"
    conds = c.set_condition(status.conditions, c.MODEL_RESOLVED, ConditionStatus.TRUE, c.MODEL_FOUND, msg, generation)
    return status.model_copy(update={"conditions": conds})


def pods_blocked(status: ModelDeploymentStatus, generation: int, problem: str) -> ModelDeploymentStatus:
    """Server pods that cannot start (an image that cannot be pulled, a missing ConfigMap, no node
    that fits): say so in Kubernetes' own words. Ready turns False with reason PodPending unless the
    stable track already serves (a canary that cannot start leaves the old model serving, and only
    the message tells)."""
    ready = c.get_condition(status.conditions, c.READY)
    update: dict[str, object] = {"message": problem}
    if ready is None or ready.status != ConditionStatus.TRUE:
        update["conditions"] = c.set_condition(
            status.conditions, c.READY, ConditionStatus.FALSE, c.POD_PENDING, problem, generation
        )
    return status.model_copy(update=update)


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
