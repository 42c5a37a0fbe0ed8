"""The children of a ModelDeployment: stable and canary Deployments of the inference server (the
canary's made for the first canary, `reconcile.modeldeployment.desired`), the Service over both
(and one per track, for HTTPRoute backends), a PodDisruptionBudget, a HorizontalPodAutoscaler, and
(when prometheus-operator is installed) a ServiceMonitor.

A child is created when absent, and applied with server-side apply by the field manager
`modelops-operator` only while its controller owner reference is this ModelDeployment
(`reconcile.ownership`): what the operator sets it owns, so a manual edit of an owned field is
reverted at the next reconcile, and an object that holds what would be applied is not sent at all
(`ownership.claim` keeps it: the hash in `modelops.dev/applied` and every field match).
An object of a child's name that someone else made is never touched (reason `NameConflict`).
The stable Deployment is created with the autoscaler's minimum of `replicas`; the count stays in what is
applied, unchanged, until the HorizontalPodAutoscaler (or a person) changes it, and is left out after
that (`reconcile.modeldeployment.stable_replicas_to_apply`).

Traffic: the Service `<name>` selects the server pods of both tracks, so with replica-ratio
routing the canary's share of traffic is its share of the ready pods; the canary Deployment's
replica count is chosen from the step's weight and the stable's replicas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ServedModel
from modelops_operator.api.names import (
    APP_COMPONENT_LABEL,
    APP_NAME_LABEL,
    GPU,
    MODEL_DEPLOYMENT_LABEL,
    MODEL_DIGEST_ANNOTATION,
    SERVICEMONITOR,
    TRACK_LABEL,
    child_name,
)
from modelops_operator.builders.common import (
    apply_pod_settings,
    artifact_mounts,
    labels,
    owner_reference,
    place,
    pod_settings,
    restricted_container_security,
    restricted_pod_security,
)
from modelops_operator.settings import OperatorSettings

KIND = "ModelDeployment"
PORT = 8080
#: The server's gRPC port (the Open Inference Protocol's GRPCInferenceService and grpc.health.v1),
#: on the pods and, under the same number, on the Services (KServe's convention: 8080 and 8081).
GRPC_PORT = 8081
DRAIN_SECONDS = 30
#: Seconds a terminating server keeps serving while not ready, so endpoint lists drop it first.
SHUTDOWN_DELAY_SECONDS = 5
#: Longer than the server's delay and drain, so in-flight requests are answered before the kill.
GRACE_SECONDS = SHUTDOWN_DELAY_SECONDS + DRAIN_SECONDS + 15
#: Used when the spec asks for no resources: the autoscaler's CPU target needs a CPU request.
DEFAULT_REQUESTS = {"cpu": "500m", "memory": "512Mi"}


def deployment_name(name: str, track: str) -> str:
    """`<name>-<track>`: the Deployment and the Service of one track, by the same rule as every child
    (`child_name`), which the alert rules also use to select the stable Deployment."""
    return child_name(name, track)


def selector(name: str, track: str | None = None) -> dict[str, str]:
    """The labels that pick a ModelDeployment's server pods (of one track, or both)."""
    sel = {MODEL_DEPLOYMENT_LABEL: name}
    if track:
        sel[TRACK_LABEL] = track
    return sel


def job_stream(md: dict[str, Any]) -> str:
    """The Redis stream of a ModelDeployment's jobs: one per object, so several can share a Redis."""
    return f"modelops:jobs:{md['metadata']['namespace']}/{md['metadata']['name']}"


def _meta(md: dict[str, Any], name: str, component: str, **extra: Any) -> dict[str, Any]:
    owner = md["metadata"]["name"]
    return {
        "name": name,
        "namespace": md["metadata"]["namespace"],
        "labels": labels(KIND, owner, component),
        "ownerReferences": [owner_reference(md)],
        **extra,
    }


def canary_replicas(weight: int, stable_replicas: int, override: int | None = None) -> int:
    """Canary pods for a traffic weight under replica-ratio routing: the count whose share of all
    pods comes closest to `weight` from above, at least one while the weight is above 0."""
    if weight <= 0:
        return 0
    if override is not None:
        return override
    if weight >= 100:
        return max(1, stable_replicas)
    return max(1, math.ceil(stable_replicas * weight / (100 - weight)))


def experiment_setting(name: str, key_header: str, variants: Sequence[tuple[str, ServedModel, int]]) -> str:
    """The server's `MODELOPS_EXPERIMENT` (the A/B contract): the experiment's name, the key
    header and each variant's name, model and weight, the control first, as compact JSON."""
    doc = {
        "name": name,
        "keyHeader": key_header,
        "variants": [
            {
                "name": v_name,
                "uri": model.uri,
                "digest": model.digest,
                "version": model.version or model.digest[7:19],
                "weight": weight,
            }
            for v_name, model, weight in variants
        ],
    }
    return json.dumps(doc, separators=(",", ":"))


def pod_template(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    model: ServedModel,
    track: str,
    settings: OperatorSettings,
    experiment: Sequence[tuple[str, ServedModel, int]] = (),
) -> dict[str, Any]:
    """The server pod of one track, serving `model`, or (on the stable track, while an A/B
    experiment runs) every variant of `experiment`, whose first is `model`."""
    name = md["metadata"]["name"]
    server = spec.server
    env = {
        "MODELOPS_MODEL_URI": model.uri,
        "MODELOPS_MODEL_DIGEST": model.digest,
        "MODELOPS_MODEL_NAME": name,
        "MODELOPS_MODEL_VERSION": model.version or model.digest[7:19],
        "MODELOPS_PORT": str(PORT),
        "MODELOPS_GRPC_PORT": str(GRPC_PORT),
        "MODELOPS_WORKERS": str(server.workers),
        "MODELOPS_MAX_BATCH_SIZE": str(server.max_batch_size),
        "MODELOPS_MAX_BATCH_DELAY_MS": str(server.max_batch_delay_ms),
        "MODELOPS_QUEUE_CAPACITY": str(server.queue_capacity),
        "MODELOPS_DRAIN_TIMEOUT_S": str(DRAIN_SECONDS),
        "MODELOPS_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_SECONDS),
        "MODELOPS_DEVICE": "cuda" if server.gpus else "cpu",
        "MODELOPS_CACHE_DIR": "/tmp/models",
        "MODELOPS_LOG_FORMAT": "json",
    }
    if experiment:
        assert spec.experiment is not None
        env["MODELOPS_EXPERIMENT"] = experiment_setting(
            spec.experiment.name or name, spec.experiment.key_header, experiment
        )
    env_from_secrets: list[dict[str, Any]] = []
    if spec.jobs is not None:
        jobs = spec.jobs
        env |= {
            "MODELOPS_JOB_STREAM": job_stream(md),
            "MODELOPS_JOB_WORKERS": str(jobs.consumers_per_pod),
            "MODELOPS_JOB_CLAIM_IDLE_S": str(jobs.claim_idle_seconds),
            "MODELOPS_JOB_TTL_S": str(jobs.ttl_seconds),
            "MODELOPS_JOB_QUEUE_CAPACITY": str(jobs.queue_capacity),
            "MODELOPS_JOB_CALLBACK_HOSTS": ",".join(jobs.callback_hosts),
            "MODELOPS_BATCH_ROOTS": ",".join(jobs.batch_roots),
            "MODELOPS_BATCH_MAX_IMAGES": str(jobs.batch_max_images),
        }
        ref = jobs.redis_secret_ref
        env_from_secrets.append(
            {"name": "MODELOPS_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    resources = {k: dict(v) for k, v in server.resources.wire().items() if v}
    requests = resources.setdefault("requests", {})
    for key, value in DEFAULT_REQUESTS.items():
        # A limit alone makes Kubernetes request the limit; only a resource with neither gets ours.
        if key not in requests and key not in resources.get("limits", {}):
            requests[key] = value
    if server.gpus:
        resources.setdefault("limits", {})[GPU] = str(server.gpus)
        requests[GPU] = str(server.gpus)
    if not requests:
        del resources["requests"]
    uris = [model.uri, *(m.uri for _, m, _ in experiment if m.uri != model.uri)]
    volumes, mounts = artifact_mounts(uris, settings)
    for mount in mounts:
        mount["readOnly"] = True
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    container = {
        "name": "server",
        "image": settings.server_image,
        "command": ["python", "-m", "modelops_server"],
        "env": [*({"name": k, "value": v} for k, v in env.items()), *env_from_secrets],
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "startupProbe": probe("/v2/health/live", 2, 90),  # fetching and checking a large model takes time
        "readinessProbe": probe("/v2/health/ready", 2, 2),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        "resources": resources,
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(name, track)},
            }
        ],
    }
    place(pod, server.placement)
    if server.gpus and not any(t.get("key") == GPU for t in pod.get("tolerations", [])):
        pod.setdefault("tolerations", []).append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    template = {
        "metadata": {
            "labels": {**labels(KIND, name, "server"), **selector(name, track)},
            "annotations": {
                MODEL_DIGEST_ANNOTATION: model.digest,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod,
    }
    apply_pod_settings(template, pod_settings(settings.workload_defaults, spec.pod_settings), "server")
    return template


def build_deployment(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    model: ServedModel,
    track: str,
    settings: OperatorSettings,
    replicas: int | None,
    experiment: Sequence[tuple[str, ServedModel, int]] = (),
) -> dict[str, Any]:
    """The `apps/v1` Deployment of a track; `replicas` None leaves the count to the autoscaler;
    `experiment` the variants its pods serve (see `pod_template`)."""
    name = md["metadata"]["name"]
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, deployment_name(name, track), f"server-{track}"),
        "spec": {
            "selector": {"matchLabels": selector(name, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": pod_template(md, spec, model, track, settings, experiment),
        },
    }
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def build_services(md: dict[str, Any], spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The Service over both tracks (what clients use), and, when `rollout.trafficRouting.httpRoute`
    names an HTTPRoute, one per track: the route's backends. Without a route the split is the
    tracks' share of the pods behind the one Service, and two more Services would each cost the
    cluster a ClusterIP, an Endpoints and an EndpointSlice for nothing: four writes a Service, 4,000
    of the 27,900 writes while 1,000 objects converged (bench/results/scale_grace_end_rerun.json).

    Each has the REST port (80) and the gRPC port (8081, ``appProtocol: grpc``, so that meshes and
    Gateway implementations speak HTTP/2 to it)."""
    name = md["metadata"]["name"]
    out = []
    tracks = ("stable", "canary") if spec.rollout.traffic_routing.http_route else ()
    for track in (None, *tracks):
        svc_name = deployment_name(name, track) if track else name
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(md, svc_name, f"service-{track}" if track else "service"),
                "spec": {
                    "selector": selector(name, track),
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                        {
                            "name": "grpc",
                            "port": GRPC_PORT,
                            "targetPort": "grpc",
                            "protocol": "TCP",
                            "appProtocol": "grpc",
                        },
                    ],
                },
            }
        )
    return out


def service_url(md: dict[str, Any]) -> str:
    meta = md["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local"


def build_pdb(md: dict[str, Any]) -> dict[str, Any]:
    """At most one stable pod down at a time by voluntary disruption (drains, evictions)."""
    name = md["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(md, name, "disruption-budget"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, "stable")}},
    }


def build_hpa(md: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The `autoscaling/v2` HorizontalPodAutoscaler of the stable Deployment."""
    name, auto = md["metadata"]["name"], spec.autoscaling
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": auto.target_cpu_utilization},
            },
        }
    ]
    if auto.custom_metric is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": auto.custom_metric.name},
                    "target": {"type": "AverageValue", "averageValue": str(auto.custom_metric.target_average_value)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, name, "autoscaler"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(name, "stable")},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": auto.scale_down_stabilization_seconds}},
        },
    }


def build_service_monitor(md: dict[str, Any]) -> dict[str, Any]:
    """A prometheus-operator ServiceMonitor over the Service of both tracks (the one every
    ModelDeployment has; the track Services select the same pods again), keeping the pod labels
    that analysis queries and alert rules select on (`modelops_dev_modeldeployment`,
    `modelops_dev_track`)."""
    name = md["metadata"]["name"]
    return {
        "apiVersion": SERVICEMONITOR.api_version,
        "kind": SERVICEMONITOR.kind,
        "metadata": _meta(md, name, "service-monitor"),
        "spec": {
            "selector": {
                "matchLabels": {
                    MODEL_DEPLOYMENT_LABEL: name,
                    APP_NAME_LABEL: "modelops",
                    APP_COMPONENT_LABEL: "service",
                },
            },
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            "podTargetLabels": [MODEL_DEPLOYMENT_LABEL, TRACK_LABEL],
        },
    }


#: A path match of every request: what the Gateway API fills in for a rule or match without one.
_EVERY_PATH = {"path": {"type": "PathPrefix", "value": "/"}}


def route_backend(name: str, track: str, weight: int) -> dict[str, Any]:
    """A backendRef of an HTTPRoute rule to a track's Service, with the Gateway API's defaults
    written out (group, kind) so that the rule reads back as it was written."""
    return {"group": "", "kind": "Service", "name": deployment_name(name, track), "port": 80, "weight": weight}


def http_route_rules(spec: ModelDeploymentSpec, name: str, weight: int, canary_serves: bool) -> list[dict[str, Any]]:
    """The rules the operator owns in the user's HTTPRoute: one sending `weight`% of every request
    to the canary Service and the rest to the stable one, and, with a header route and while a
    canary serves (`canary_serves`), one before it sending the requests that carry the header to
    the canary whatever the weight. Without a serving canary the header rule is left out, so marked
    requests go where the others go (the stable Service), never to a Service without pods.

    Every rule has a backendRef to `<name>-canary`: that is how the operator knows its rules (see
    `reconcile.routing`). Defaults are written out, as the API server would store them."""
    rules: list[dict[str, Any]] = []
    header = spec.rollout.traffic_routing.header_route
    if header is not None and canary_serves:
        match = {"headers": [{"type": "Exact", "name": header.name, "value": header.value}], **_EVERY_PATH}
        rules.append({"matches": [match], "backendRefs": [route_backend(name, "canary", 1)]})
    backends = [route_backend(name, "stable", 100 - weight), route_backend(name, "canary", weight)]
    rules.append({"matches": [dict(_EVERY_PATH)], "backendRefs": backends})
    return rules
