"""The alert rules of a ModelDeployment: a prometheus-operator `PrometheusRule` `<name>-alerts`.

One rule group, `modelops.<namespace>.<name>`, with five alerts, each labelled `severity` (the
spec's), `namespace` and `modeldeployment`, and annotated `summary`, `description` and, when the
spec names a runbook base URL, `runbook_url` (`<base>/<AlertName>`):

    ModelDeploymentHighErrorRate         share of 5xx answers (stable and canary) over 5m above alerts.errorRate
    ModelDeploymentHighLatencyP99        p99 request latency over 5m above alerts.latencyP99Seconds
    ModelDeploymentNoReadyReplicas       the stable Deployment has no available replica (kube-state-metrics)
    ModelDeploymentCanaryAnalysisFailed  the operator aborted a rollout (`modelops_rollout_aborted`)
    ModelDeploymentModelLoadFailures     a server failed to load a model in the last 10m

The server's series carry the pod labels `modelops.dev/modeldeployment` and `modelops.dev/track`,
mapped by Prometheus to `modelops_dev_modeldeployment` and `modelops_dev_track`, plus `namespace`.
Thresholds are written with `repr`, so a float reaches PromQL without loss.
"""

from __future__ import annotations

from typing import Any

from modelops_operator.api import names
from modelops_operator.api.modeldeployment import Alerts, ModelDeploymentSpec
from modelops_operator.builders.common import labels, owner_reference

COMPONENT = "alerts"

HIGH_ERROR_RATE = "ModelDeploymentHighErrorRate"
HIGH_LATENCY_P99 = "ModelDeploymentHighLatencyP99"
NO_READY_REPLICAS = "ModelDeploymentNoReadyReplicas"
CANARY_ANALYSIS_FAILED = "ModelDeploymentCanaryAnalysisFailed"
MODEL_LOAD_FAILURES = "ModelDeploymentModelLoadFailures"
ALERT_NAMES = (HIGH_ERROR_RATE, HIGH_LATENCY_P99, NO_READY_REPLICAS, CANARY_ANALYSIS_FAILED, MODEL_LOAD_FAILURES)

#: Range of the error-rate and latency queries.
RATE_WINDOW = "5m"
#: How far back a model load failure keeps its alert active.
LOAD_FAILURE_WINDOW = "10m"
#: The Prometheus labels the server pods' `modelops.dev/*` labels become (labelmap).
MD_LABEL = names.prometheus_label(names.MODEL_DEPLOYMENT_LABEL)
TRACK_LABEL = names.prometheus_label(names.TRACK_LABEL)


def group_name(namespace: str, name: str) -> str:
    """The rule group's name, unique per ModelDeployment within a Prometheus."""
    return f"modelops.{namespace}.{name}"


def _quote(value: str) -> str:
    """A PromQL string literal (double-quoted, backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector(*matchers: tuple[str, str, str]) -> str:
    """`{label op "value", ...}` from (label, op, value) triples."""
    return "{" + ",".join(f"{label}{op}{_quote(value)}" for label, op, value in matchers) + "}"


def _alert(
    alert: str, expr: str, for_: str, namespace: str, name: str, alerts: Alerts, summary: str, description: str
) -> dict[str, Any]:
    annotations = {"summary": summary, "description": description}
    if alerts.runbook_url:
        annotations["runbook_url"] = f"{alerts.runbook_url.rstrip('/')}/{alert}"
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": alerts.severity, "namespace": namespace, "modeldeployment": name},
        "annotations": annotations,
    }


def rule_groups(namespace: str, name: str, alerts: Alerts) -> list[dict[str, Any]]:
    """The Prometheus rule groups (one group named `modelops.<namespace>.<name>`) for a ModelDeployment."""
    where = f"ModelDeployment {namespace}/{name}"
    server = (("namespace", "=", namespace), (MD_LABEL, "=", name))
    requests = f"modelops_requests_total{_selector(*server)}"
    errors = f"modelops_requests_total{_selector(*server, ('code', '=~', '5..'))}"
    buckets = f"modelops_request_duration_seconds_bucket{_selector(*server)}"
    load_failures = f"modelops_model_loads_total{_selector(*server, ('result', '=', 'failure'))}"
    stable = names.child_name(name, "stable")
    deployment = _selector(("namespace", "=", namespace), ("deployment", "=", stable))
    available = f"kube_deployment_status_replicas_available{deployment}"
    aborted = f"modelops_rollout_aborted{_selector(('namespace', '=', namespace), ('modeldeployment', '=', name))}"
    threshold_percent = f"{alerts.error_rate * 100:g}%"

    rules = [
        _alert(
            HIGH_ERROR_RATE,
            # No traffic makes the denominator empty (`> 0`), so the ratio is empty, not NaN: no alert.
            f"sum(rate({errors}[{RATE_WINDOW}])) / (sum(rate({requests}[{RATE_WINDOW}])) > 0) > {alerts.error_rate!r}",
            alerts.for_,
            namespace,
            name,
            alerts,
            f"{where} answers too many requests with 5xx",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {where} (stable and canary) failed with "
            f"a 5xx status over the last {RATE_WINDOW}; the threshold is {threshold_percent}.",
        ),
        _alert(
            HIGH_LATENCY_P99,
            # Without traffic every bucket's rate is 0 and histogram_quantile is NaN, never above anything.
            f"histogram_quantile(0.99, sum by (le) (rate({buckets}[{RATE_WINDOW}]))) > {alerts.latency_p99_seconds!r}",
            alerts.for_,
            namespace,
            name,
            alerts,
            f"{where} answers slowly",
            f"The 99th percentile of request latency of {where} is {{{{ $value | humanizeDuration }}}} over the "
            f"last {RATE_WINDOW}; the threshold is {alerts.latency_p99_seconds!r}s.",
        ),
        _alert(
            NO_READY_REPLICAS,
            f"{available} == 0",
            alerts.for_,
            namespace,
            name,
            alerts,
            f"{where} has no ready server",
            f"The Deployment {namespace}/{stable} has no available replica: {where} cannot serve requests.",
        ),
        _alert(
            CANARY_ANALYSIS_FAILED,
            # `max` merges the series of several operator replicas or scrapes into one alert.
            f"max({aborted}) == 1",
            # No `for`: the operator aborts only after the canary failed its analysis (failureLimit
            # measurements over the analysis interval), so the condition already held for a while,
            # and the gauge stays 1 until the next rollout: waiting again would only delay the alert.
            "0m",
            namespace,
            name,
            alerts,
            f"A rollout of {where} was aborted",
            f"The canary of {where} failed its analysis and was rolled back; the stable model keeps serving. "
            f"See `kubectl -n {namespace} describe modeldeployment {name}` for the failed measurements.",
        ),
        _alert(
            MODEL_LOAD_FAILURES,
            # The server creates the failure series at its first failure, with value 1, which
            # `increase` cannot see (it needs two samples); `unless ... offset` catches a series
            # that did not exist a window ago.
            f"sum by ({TRACK_LABEL}) (increase({load_failures}[{LOAD_FAILURE_WINDOW}]) > 0 "
            f"or ({load_failures} unless {load_failures} offset {LOAD_FAILURE_WINDOW})) > 0",
            alerts.for_,
            namespace,
            name,
            alerts,
            f"{where} failed to load a model",
            f"Servers of {where} on the {{{{ $labels.{TRACK_LABEL} }}}} track failed to load a model about "
            f"{{{{ $value | humanize }}}} times in the last {LOAD_FAILURE_WINDOW} (bad URI, digest mismatch, "
            "unreadable or incompatible ONNX file); see the server logs.",
        ),
    ]
    return [{"name": group_name(namespace, name), "rules": rules}]


def build_prometheus_rule(md: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The monitoring.coreos.com/v1 PrometheusRule `<name>-alerts` (labels from
    builders.common.labels("ModelDeployment", name, "alerts"), owner reference to md),
    spec.groups = rule_groups(...).

    Built whatever `spec.alerts.enabled` says: whether to create or delete it is the reconciler's call.
    """
    name: str = md["metadata"]["name"]
    namespace: str = md["metadata"]["namespace"]
    return {
        "apiVersion": names.PROMETHEUSRULE.api_version,
        "kind": names.PROMETHEUSRULE.kind,
        "metadata": {
            "name": names.child_name(name, COMPONENT),
            "namespace": namespace,
            "labels": labels("ModelDeployment", name, COMPONENT),
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {"groups": rule_groups(namespace, name, spec.alerts)},
    }
