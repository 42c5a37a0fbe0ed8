"""The ModelDeployment's children (Deployments, Services, PDB, HPA, ServiceMonitor, HTTPRoute patch),
its model resolution and its analysis queries, table-driven, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import (
    AnalysisMetric,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServedModel,
)
from modelops_operator.api.names import GPU, TRACK_LABEL, child_name
from modelops_operator.api.names import MODEL_DEPLOYMENT_LABEL as OWNER_LABEL
from modelops_operator.api.names import MODEL_DIGEST_ANNOTATION as DIGEST_ANNOTATION
from modelops_operator.builders.alerts import NO_READY_REPLICAS, rule_groups
from modelops_operator.builders.modeldeployment import (
    DEFAULT_REQUESTS,
    DRAIN_SECONDS,
    build_deployment,
    build_hpa,
    build_pdb,
    build_service_monitor,
    build_services,
    canary_replicas,
    deployment_name,
    http_route_rules,
    pod_template,
    service_url,
)
from modelops_operator.reconcile.modeldeployment import (
    Waiting,
    metric_query,
    pods_blocked,
    resolve_model,
    resolved_condition,
    waiting_status,
)
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, model_deployment

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
SETTINGS = OperatorSettings(artifact_pvc="modelops-artifacts")
ARTIFACTS = "/var/lib/modelops/artifacts"
MODEL = ServedModel(
    version="digits-resnet:v3", uri=f"file://{ARTIFACTS}/runs/ns/digits-resnet/t/model.onnx", digest=DIGEST
)
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def md_obj(spec: dict[str, Any] | None = None, name: str = "digits") -> dict[str, Any]:
    body = model_deployment(name).obj()
    body["spec"].update(spec or {})
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    return body


def spec_of(body: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(body["spec"])


def deploy(
    spec: dict[str, Any] | None = None,
    *,
    track: str = "stable",
    model: ServedModel = MODEL,
    settings: OperatorSettings = SETTINGS,
    replicas: int | None = 2,
) -> dict[str, Any]:
    body = md_obj(spec)
    return build_deployment(body, spec_of(body), model, track, settings, replicas)


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return pod(dep)["containers"][0]


def env(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(dep)["env"]}


# --- the Deployment of each track -------------------------------------------------------------------


@pytest.mark.parametrize("track", ["stable", "canary"])
def test_a_deployment_per_track(track):
    dep = deploy(track=track)
    sel = {OWNER_LABEL: "digits", TRACK_LABEL: track}
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment"
    assert dep["metadata"]["name"] == f"digits-{track}" == deployment_name("digits", track)
    assert dep["metadata"]["namespace"] == "ns"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True
    assert dep["spec"]["selector"] == {"matchLabels": sel}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items() and labels["app.kubernetes.io/managed-by"] == "modelops-operator"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


LONG_NAMES = [
    "a" * 55 + "-" + "b" * 7,  # cut for `-<track>` right after a dash: the alert used to select `a…a--stable`
    "a" * 54 + "--" + "b" * 7,  # two dashes at the cut
    "m" * 63,
    "d" * 30 + "-" * 33,
]


@pytest.mark.parametrize("name", ["digits", *LONG_NAMES])
def test_every_reference_to_a_track_names_the_deployment_the_builder_names(name):
    """The Deployment's name, the Services', the autoscaler's target, the HTTPRoute's backends and
    the NoReadyReplicas alert's selector come from one naming rule, for long names too."""
    body = md_obj(
        {"rollout": {"trafficRouting": {"httpRoute": "r"}}, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
        name=name,
    )
    spec = spec_of(body)
    built = {t: build_deployment(body, spec, MODEL, t, SETTINGS, 1)["metadata"]["name"] for t in ("stable", "canary")}
    for track, dep_name in built.items():
        assert dep_name == deployment_name(name, track) == child_name(name, track)
        assert len(dep_name) <= 63 and not dep_name.removesuffix(f"-{track}").endswith("-")
    services = {s["metadata"]["name"] for s in build_services(body, spec)}
    assert set(built.values()) <= services
    assert build_hpa(body, spec)["spec"]["scaleTargetRef"]["name"] == built["stable"]
    backends = http_route_rules(spec, name, 10, canary_serves=True)[-1]["backendRefs"]
    assert [b["name"] for b in backends] == [built["stable"], built["canary"]]
    (group,) = rule_groups("ns", name, spec.alerts)
    (alert,) = [r for r in group["rules"] if r["alert"] == NO_READY_REPLICAS]
    assert f'deployment="{built["stable"]}"' in alert["expr"]


def test_child_names_fit_and_do_not_end_the_owner_part_with_a_dash():
    assert child_name("a" * 55 + "-" + "b" * 7, "stable") == "a" * 55 + "-stable"
    assert child_name("digits", "prepare", "0123abcd") == "digits-prepare-0123abcd"
    assert len(child_name("x" * 300, "alerts")) == 63


def test_tracks_differ_only_in_names_and_labels():
    stable, canary = deploy(track="stable"), deploy(track="canary")
    assert container(stable) == container(canary)
    assert pod(stable)["topologySpreadConstraints"] != pod(canary)["topologySpreadConstraints"]


def test_long_names_fit():
    name = "a" * 63
    body = md_obj(name=name)
    dep = build_deployment(body, spec_of(body), MODEL, "canary", SETTINGS, 1)
    assert len(dep["metadata"]["name"]) <= 63 and dep["metadata"]["name"].endswith("-canary")


@pytest.mark.parametrize(
    ("probe", "path", "period", "failures"),
    [
        ("readinessProbe", "/v2/health/ready", 2, 2),
        ("livenessProbe", "/v2/health/live", 10, 3),
        ("startupProbe", "/v2/health/live", 2, 90),
    ],
)
def test_probes(probe, path, period, failures):
    p = container(deploy())[probe]
    assert p["httpGet"] == {"path": path, "port": "http"}
    assert p["periodSeconds"] == period and p["failureThreshold"] == failures


def test_the_server_port():
    assert container(deploy())["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert env(deploy())["MODELOPS_GRPC_PORT"] == "8081"  # the server listens where the port says


@pytest.mark.parametrize(
    ("model", "version"),
    [
        (MODEL, "digits-resnet:v3"),
        (ServedModel(uri="s3://b/m.onnx", digest=DIGEST), DIGEST[7:19]),
    ],
    ids=["registered", "no-version"],
)
def test_the_model_is_passed_in_the_environment(model, version):
    e = env(deploy(model=model))
    assert e["MODELOPS_MODEL_URI"] == model.uri
    assert e["MODELOPS_MODEL_DIGEST"] == DIGEST
    assert e["MODELOPS_MODEL_NAME"] == "digits"
    assert e["MODELOPS_MODEL_VERSION"] == version
    assert e["MODELOPS_PORT"] == "8080"


def test_server_settings_are_passed_in_the_environment():
    server = {"workers": 4, "maxBatchSize": 32, "maxBatchDelayMs": 2.5, "queueCapacity": 100}
    e = env(deploy({"server": server}))
    assert e["MODELOPS_WORKERS"] == "4" and e["MODELOPS_MAX_BATCH_SIZE"] == "32"
    assert e["MODELOPS_MAX_BATCH_DELAY_MS"] == "2.5" and e["MODELOPS_QUEUE_CAPACITY"] == "100"
    assert all(isinstance(v, str) for v in e.values())


def test_pod_annotations_carry_the_digest_and_prometheus_scraping():
    annotations = deploy()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        DIGEST_ANNOTATION: DIGEST,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


#: The `restricted` Pod Security Standard, written out (not taken from the builder's own helpers,
#: so a change there that weakens it fails here).
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_restricted_security():
    dep = deploy()
    assert pod(dep)["securityContext"] == RESTRICTED_POD
    assert container(dep)["securityContext"] == RESTRICTED_CONTAINER
    assert pod(dep)["automountServiceAccountToken"] is False
    # A read-only root needs a writable /tmp (the model cache).
    assert {"name": "tmp", "mountPath": "/tmp"} in container(dep)["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod(dep)["volumes"]
    assert env(dep)["MODELOPS_CACHE_DIR"].startswith("/tmp/")


@pytest.mark.parametrize("track", ["stable", "canary"])
def test_topology_spread_over_nodes(track):
    (spread,) = pod(deploy(track=track))["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": {OWNER_LABEL: "digits", TRACK_LABEL: track}}


def test_the_grace_period_outlasts_the_drain():
    dep = deploy()
    assert DRAIN_SECONDS == 30 and env(dep)["MODELOPS_DRAIN_TIMEOUT_S"] == "30"
    assert pod(dep)["terminationGracePeriodSeconds"] > DRAIN_SECONDS


@pytest.mark.parametrize(
    ("server", "gpus", "tolerations", "device"),
    [
        ({}, None, None, "cpu"),
        ({"gpus": 1}, "1", [GPU_TOLERATION], "cuda"),
        ({"gpus": 2}, "2", [GPU_TOLERATION], "cuda"),
        (
            {"gpus": 1, "placement": {"tolerations": [{"key": "pool", "operator": "Exists"}]}},
            "1",
            [{"key": "pool", "operator": "Exists"}, GPU_TOLERATION],
            "cuda",
        ),
        (
            {"gpus": 1, "placement": {"tolerations": [{"key": GPU, "operator": "Equal", "value": "a100"}]}},
            "1",
            [{"key": GPU, "operator": "Equal", "value": "a100"}],
            "cuda",
        ),
    ],
    ids=["cpu", "one-gpu", "two-gpus", "own-toleration-kept", "own-gpu-toleration-not-doubled"],
)
def test_gpus_are_requested_and_their_taint_tolerated(server, gpus, tolerations, device):
    dep = deploy({"server": server})
    resources = container(dep)["resources"]
    assert resources.get("limits", {}).get(GPU) == gpus
    assert resources["requests"].get(GPU) == gpus
    assert pod(dep).get("tolerations") == tolerations
    assert env(dep)["MODELOPS_DEVICE"] == device


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({}, {"requests": DEFAULT_REQUESTS}),
        (
            {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
            {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        ),
        ({"requests": {"cpu": 1}}, {"requests": {"cpu": 1, "memory": DEFAULT_REQUESTS["memory"]}}),
        # A limit alone: Kubernetes requests the limit, so no default request (it could exceed it).
        ({"limits": {"cpu": "4", "memory": "8Gi"}}, {"limits": {"cpu": "4", "memory": "8Gi"}}),
    ],
    ids=["none", "given", "cpu-only", "limits-only"],
)
def test_resources(resources, expected):
    assert container(deploy({"server": {"resources": resources}}))["resources"] == expected


def test_the_default_cpu_request_is_there_for_the_autoscaler():
    assert DEFAULT_REQUESTS["cpu"] and container(deploy())["resources"]["requests"]["cpu"] == DEFAULT_REQUESTS["cpu"]


def test_a_cpu_request_is_added_when_only_memory_is_requested():
    requests = container(deploy({"server": {"resources": {"requests": {"memory": "1Gi"}}}}))["resources"]["requests"]
    assert requests.get("cpu") and requests["memory"] == "1Gi"


def test_default_requests_never_exceed_the_limits():
    limits = {"cpu": "250m", "memory": "256Mi"}
    resources = container(deploy({"server": {"resources": {"limits": limits}}}))["resources"]
    for name, limit in limits.items():
        requested = resources.get("requests", {}).get(name)
        assert requested is None or quantity(requested) <= quantity(limit), (name, requested, limit)


def quantity(text: str | int) -> float:
    """A CPU or memory quantity (the suffixes used here) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    value = str(text)
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize(
    ("uri", "settings", "mounted"),
    [
        (f"file://{ARTIFACTS}/runs/ns/d/t/model.onnx", SETTINGS, True),
        ("s3://bucket/model.onnx", SETTINGS, False),
        (f"file://{ARTIFACTS}/runs/ns/d/t/model.onnx", OperatorSettings(), False),
    ],
    ids=["file-with-pvc", "object-store", "no-pvc-configured"],
)
def test_the_artifact_pvc_is_mounted_read_only_for_file_models(uri, settings, mounted):
    dep = deploy(model=ServedModel(version="v", uri=uri, digest=DIGEST), settings=settings)
    volumes = {v["name"]: v for v in pod(dep)["volumes"]}
    mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
    assert ("artifacts" in volumes) == mounted == ("artifacts" in mounts)
    if mounted:
        assert volumes["artifacts"]["persistentVolumeClaim"] == {"claimName": "modelops-artifacts"}
        assert mounts["artifacts"] == {"name": "artifacts", "mountPath": ARTIFACTS, "readOnly": True}


@pytest.mark.parametrize(("replicas", "expected"), [(None, "absent"), (0, 0), (3, 3)])
def test_replicas_are_left_to_the_autoscaler_when_none(replicas, expected):
    spec = deploy(replicas=replicas)["spec"]
    assert spec.get("replicas", "absent") == expected


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ({}, {}),
        ({"nodeSelector": {"pool": "serve"}}, {"nodeSelector": {"pool": "serve"}}),
        ({"priorityClassName": "serving-high"}, {"priorityClassName": "serving-high"}),
    ],
    ids=["none", "node-selector", "priority-class"],
)
def test_placement(placement, expected):
    p = pod(deploy({"server": {"placement": placement}}))
    assert {k: p[k] for k in ("nodeSelector", "tolerations", "priorityClassName") if k in p} == expected


def test_pod_template_is_the_deployments_template():
    body = md_obj()
    dep = build_deployment(body, spec_of(body), MODEL, "canary", SETTINGS, 1)
    assert dep["spec"]["template"] == pod_template(body, spec_of(body), MODEL, "canary", SETTINGS)


# --- Services, PDB, HPA, ServiceMonitor ----------------------------------------------------------------


ROUTED = {"rollout": {"trafficRouting": {"httpRoute": "r"}}}


def test_a_routed_deployment_has_a_service_per_track_beside_the_shared_one():
    services = build_services(md_obj(ROUTED), spec_of(md_obj(ROUTED)))
    assert [s["metadata"]["name"] for s in services] == ["digits", "digits-stable", "digits-canary"]
    assert [s["spec"]["selector"] for s in services] == [
        {OWNER_LABEL: "digits"},
        {OWNER_LABEL: "digits", TRACK_LABEL: "stable"},
        {OWNER_LABEL: "digits", TRACK_LABEL: "canary"},
    ]
    for s in services:
        assert s["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        ]
        assert s["metadata"]["namespace"] == "ns" and s["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert service_url(md_obj()) == "http://digits.ns.svc.cluster.local"


def test_without_a_route_the_shared_service_is_the_only_one():
    (service,) = build_services(md_obj(), spec_of(md_obj()))
    assert service["metadata"]["name"] == "digits" and service["spec"]["selector"] == {OWNER_LABEL: "digits"}
    assert service == build_services(md_obj(ROUTED), spec_of(md_obj(ROUTED)))[0]


def test_the_services_select_the_deployments_pods():
    services = {s["metadata"]["name"]: s for s in build_services(md_obj(ROUTED), spec_of(md_obj(ROUTED)))}
    for track in ("stable", "canary"):
        pod_labels = deploy(track=track)["spec"]["template"]["metadata"]["labels"]
        for name in ("digits", f"digits-{track}"):
            assert services[name]["spec"]["selector"].items() <= pod_labels.items()
        other = "canary" if track == "stable" else "stable"
        assert not services[f"digits-{other}"]["spec"]["selector"].items() <= pod_labels.items()


def test_pdb_covers_the_stable_pods():
    pdb = build_pdb(md_obj())
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {OWNER_LABEL: "digits", TRACK_LABEL: "stable"}},
    }


@pytest.mark.parametrize(
    ("autoscaling", "bounds", "metrics"),
    [
        (
            {},
            (1, 3),
            [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        ),
        (
            {"minReplicas": 2, "maxReplicas": 10, "targetCpuUtilization": 50, "customMetric": {}},
            (2, 10),
            [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "modelops_inflight_requests"},
                        "target": {"type": "AverageValue", "averageValue": "8"},
                    },
                },
            ],
        ),
        (
            {"customMetric": {"name": "modelops_queue_depth", "targetAverageValue": "500m"}},
            (1, 3),
            [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "modelops_queue_depth"},
                        "target": {"type": "AverageValue", "averageValue": "500m"},
                    },
                },
            ],
        ),
    ],
    ids=["cpu-only", "custom-default", "custom-named"],
)
def test_hpa(autoscaling, bounds, metrics):
    body = md_obj({"autoscaling": autoscaling})
    hpa = build_hpa(body, spec_of(body))
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["metadata"]["name"] == "digits"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits-stable"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == bounds
    assert hpa["spec"]["metrics"] == metrics


def test_service_monitor_keeps_the_pod_labels_queries_select_on():
    sm = build_service_monitor(md_obj())
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert sm["spec"]["podTargetLabels"] == [OWNER_LABEL, TRACK_LABEL]
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def _matches(selector: dict[str, Any], obj: dict[str, Any]) -> bool:
    """A label selector (matchLabels, matchExpressions) against an object's labels."""
    have = obj["metadata"]["labels"]
    if not selector.get("matchLabels", {}).items() <= have.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": have.get(key) in values,
            "NotIn": have.get(key) not in values,
            "Exists": key in have,
            "DoesNotExist": key not in have,
        }[op]
        if not ok:
            return False
    return True


def test_service_monitor_selects_the_shared_service_and_no_track_service():
    """Each pod scraped once: through the Service every ModelDeployment has, never also through a
    track Service (which selects the same pods again), with or without a route."""
    for spec in (None, ROUTED):
        body = md_obj(spec)
        sm = build_service_monitor(body)
        services = {s["metadata"]["name"]: s for s in build_services(body, spec_of(body))}
        assert [name for name, svc in services.items() if _matches(sm["spec"]["selector"], svc)] == ["digits"]
        assert sm["spec"]["podTargetLabels"] == [OWNER_LABEL, TRACK_LABEL]


# --- the HTTPRoute patch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 10, 50, 100])
def test_http_route_weights_sum_to_100(weight):
    body = md_obj({"rollout": {"trafficRouting": {"httpRoute": "digits"}}})
    (rule,) = http_route_rules(spec_of(body), "digits", weight, canary_serves=True)
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [
        ("digits-stable", 100 - weight),
        ("digits-canary", weight),
    ]
    assert sum(b["weight"] for b in rule["backendRefs"]) == 100


HEADER_ROUTING = {"httpRoute": "digits", "headerRoute": {"name": "x-canary", "value": "yes"}}


def test_the_header_route_comes_first_while_a_canary_serves():
    body = md_obj({"rollout": {"trafficRouting": HEADER_ROUTING}})
    header, split = http_route_rules(spec_of(body), "digits", 10, canary_serves=True)
    (match,) = header["matches"]
    assert match["headers"] == [{"type": "Exact", "name": "x-canary", "value": "yes"}]
    assert [(b["name"], b["weight"]) for b in header["backendRefs"]] == [("digits-canary", 1)]
    assert [b["weight"] for b in split["backendRefs"]] == [90, 10]


def test_no_header_rule_without_a_serving_canary():
    """Marked requests must not go to a canary Service without pods: without a serving canary the
    header rule is left out, and they follow the weighted rule (all to stable at weight 0)."""
    body = md_obj({"rollout": {"trafficRouting": HEADER_ROUTING}})
    (split,) = http_route_rules(spec_of(body), "digits", 0, canary_serves=False)
    assert "headers" not in split["matches"][0]
    assert [(b["name"], b["weight"]) for b in split["backendRefs"]] == [("digits-stable", 100), ("digits-canary", 0)]


# --- canary replicas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "stable", "override", "expected"),
    [
        (0, 3, None, 0),
        (0, 3, 5, 0),
        (10, 0, None, 1),
        (10, 1, None, 1),
        (10, 9, None, 1),
        (10, 10, None, 2),
        (25, 3, None, 1),
        (25, 4, None, 2),
        (50, 3, None, 3),
        (75, 2, None, 6),
        (99, 1, None, 99),
        (100, 3, None, 3),
        (100, 0, None, 1),
        (10, 3, 4, 4),
        (100, 3, 2, 2),
    ],
)
def test_canary_replicas(weight, stable, override, expected):
    assert canary_replicas(weight, stable, override) == expected


@pytest.mark.parametrize("stable", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("weight", [5, 10, 20, 25, 33, 50, 60, 90])
def test_canary_replicas_carry_at_least_their_weight(weight, stable):
    n = canary_replicas(weight, stable)
    assert 100 * n / (n + stable) >= weight
    assert n == 1 or 100 * (n - 1) / (n - 1 + stable) < weight  # the fewest that do


# --- the model ------------------------------------------------------------------------------------------------


def registered(*versions: int, latest: int | None = None) -> dict[str, Any]:
    def entry(v: int) -> dict[str, Any]:
        return {"version": v, "uri": f"file:///m/v{v}.onnx", "digest": "sha256:" + f"{v:02x}" * 32}

    status: dict[str, Any] = {"models": [entry(v) for v in versions]}
    if latest is not None:
        status["model"] = entry(latest)
    return {"status": status}


def resolve(spec: dict[str, Any], run: dict[str, Any] | None) -> ServedModel | Waiting:
    return resolve_model(ModelDeploymentSpec.model_validate(spec), run)


URI_SPEC = {"model": {"uri": "s3://bucket/model.onnx", "digest": DIGEST}}
REF_SPEC = {"model": {"trainingRunRef": {"name": "digits-resnet"}}}
PINNED = {"model": {"trainingRunRef": {"name": "digits-resnet", "version": 2}}}


@pytest.mark.parametrize(
    ("spec", "run", "expected"),
    [
        (URI_SPEC, None, ("s3://bucket/model.onnx", DIGEST[7:19])),
        (REF_SPEC, registered(1, 2, 3, latest=3), ("file:///m/v3.onnx", "digits-resnet:v3")),
        (REF_SPEC, registered(3, 1, 2), ("file:///m/v3.onnx", "digits-resnet:v3")),
        (REF_SPEC, registered(latest=4), ("file:///m/v4.onnx", "digits-resnet:v4")),
        (REF_SPEC, registered(1, 2, latest=5), ("file:///m/v5.onnx", "digits-resnet:v5")),
        (PINNED, registered(1, 2, 3, latest=3), ("file:///m/v2.onnx", "digits-resnet:v2")),
        (PINNED, registered(latest=2), ("file:///m/v2.onnx", "digits-resnet:v2")),
    ],
    ids=["uri", "latest", "latest-unordered", "only-status-model", "model-newer-than-list", "pinned", "pinned-latest"],
)
def test_resolve_model(spec, run, expected):
    model = resolve(spec, run)
    assert isinstance(model, ServedModel)
    assert (model.uri, model.version) == expected
    if spec is URI_SPEC:
        assert model.digest == DIGEST


@pytest.mark.parametrize(
    ("spec", "run", "reason", "words"),
    [
        (REF_SPEC, None, c.TRAINING_RUN_NOT_FOUND, "does not exist"),
        (REF_SPEC, {}, c.MODEL_NOT_REGISTERED, "a model"),
        (REF_SPEC, {"status": {}}, c.MODEL_NOT_REGISTERED, "a model"),
        (REF_SPEC, {"status": {"models": []}}, c.MODEL_NOT_REGISTERED, "a model"),
        (PINNED, registered(1, 3, latest=3), c.MODEL_NOT_REGISTERED, "version 2"),
        (
            REF_SPEC,
            {"status": {"model": {"version": 1, "uri": "file:///m/v1.onnx"}}},
            c.MODEL_NOT_REGISTERED,
            "a model",
        ),
    ],
    ids=["run-missing", "no-status", "empty-status", "no-models", "pinned-absent", "no-digest"],
)
def test_unresolved_models_wait(spec, run, reason, words):
    why = resolve(spec, run)
    assert isinstance(why, Waiting) and why.reason == reason
    assert '"digits-resnet"' in why.message and words in why.message


def test_waiting_before_anything_serves_is_pending():
    why = Waiting(c.MODEL_NOT_REGISTERED, "not yet")
    st = waiting_status(ModelDeploymentStatus(), 4, why)
    assert st.phase == "Pending" and st.observed_generation == 4
    for type_ in (c.MODEL_RESOLVED, c.READY, c.PROGRESSING):
        got = c.get_condition(st.conditions, type_)
        assert got is not None and got.status == F and got.reason == c.MODEL_NOT_REGISTERED and got.message == "not yet"


def test_waiting_while_serving_keeps_serving():
    old = ModelDeploymentStatus(phase="Healthy", stable=MODEL, stable_version=MODEL.version)
    st = waiting_status(old, 5, Waiting(c.TRAINING_RUN_NOT_FOUND, "gone"))
    assert st.phase == "Healthy" and st.stable == MODEL and st.observed_generation == 5
    ready = c.get_condition(st.conditions, c.READY)
    assert ready is not None and ready.status == F and ready.reason == c.TRAINING_RUN_NOT_FOUND


def test_resolved_condition():
    st = resolved_condition(ModelDeploymentStatus(), 3, MODEL)
    got = c.get_condition(st.conditions, c.MODEL_RESOLVED)
    assert got is not None and got.status == T and got.reason == c.MODEL_FOUND and got.observed_generation == 3
    assert MODEL.digest in got.message and MODEL.uri in got.message and "digits-resnet:v3" in got.message
    assert c.get_condition(st.conditions, c.READY) is None  # Ready is the rollout's to say


# --- analysis queries ------------------------------------------------------------------------------------------

CANARY = 'namespace="ns",modelops_dev_modeldeployment="digits",modelops_dev_track="canary"'
STABLE = 'namespace="ns",modelops_dev_modeldeployment="digits",modelops_dev_track="stable"'


def query(metric: dict[str, Any], track: str = "canary", interval: str = "30s") -> str:
    return metric_query(
        AnalysisMetric.model_validate({"name": "m", "max": 1, **metric}), "ns", "digits", track, interval
    )


def test_error_rate_query_has_no_data_without_traffic():
    q = query({"template": "errorRate"}, interval="1m")
    total = f"sum(rate(modelops_requests_total{{{CANARY}}}[1m]))"
    errors = f'sum(rate(modelops_requests_total{{{CANARY},code=~"5.."}}[1m]))'
    assert q == f"({errors} or (0 * {total})) / {total}"
    assert "or (0 *" in q and "or vector(0)" not in q


@pytest.mark.parametrize("track", ["canary", "stable"])
def test_latency_query(track):
    q = query({"template": "latencyP99"}, track=track, interval="2m")
    sel = CANARY if track == "canary" else STABLE
    assert q == f"histogram_quantile(0.99, sum by (le) (rate(modelops_request_duration_seconds_bucket{{{sel}}}[2m])))"


@pytest.mark.parametrize(
    ("track", "expected"),
    [
        ("canary", f"sum(rate(x{{{CANARY}}}[45s])) / sum(rate(x{{{STABLE}}}[45s]))"),
        ("stable", f"sum(rate(x{{{STABLE}}}[45s])) / sum(rate(x{{{STABLE}}}[45s]))"),
    ],
)
def test_custom_query_placeholders(track, expected):
    text = "sum(rate(x{{{selector}}}[{{interval}}])) / sum(rate(x{{{stableSelector}}}[{{interval}}]))"
    q = query({"query": text}, track=track, interval="45s")
    assert q == expected
    assert "{{" not in q


PULL_FAILED = 'pod digits-stable-7c9f-x: ImagePullBackOff: Back-off pulling image "r/modelops/server:nope"'


@pytest.mark.parametrize(
    ("ready", "expected_ready", "expected_reason"),
    [
        (None, ConditionStatus.FALSE, c.POD_PENDING),  # nothing serves yet: Ready says why
        (ConditionStatus.FALSE, ConditionStatus.FALSE, c.POD_PENDING),
        (ConditionStatus.TRUE, ConditionStatus.TRUE, "Serving"),  # the stable track serves; a canary is blocked
    ],
)
def test_server_pods_that_cannot_start_are_reported_in_kubernetes_words(ready, expected_ready, expected_reason):
    conditions = [] if ready is None else c.set_condition([], c.READY, ready, "Serving", "serving v1", 1)
    status = ModelDeploymentStatus(conditions=conditions, message="step 0: waiting for 1 canary pod(s)")
    out = pods_blocked(status, 2, PULL_FAILED)
    assert out.message == PULL_FAILED
    cond = c.get_condition(out.conditions, c.READY)
    assert cond is not None and (cond.status, cond.reason) == (expected_ready, expected_reason)
    if expected_reason == c.POD_PENDING:
        assert cond.message == PULL_FAILED and cond.observed_generation == 2


def custom_step(name: str = "queueDepth") -> dict[str, Any]:
    metric = {"name": name, "template": "custom", "query": "sum(up)", "max": 1}
    return {"analysis": {"metrics": [metric]}}


@pytest.mark.parametrize(
    ("steps", "allowed", "refused"),
    [
        (
            [{"setWeight": 10}, custom_step(), custom_step("other")],
            False,
            "custom metrics (other, queueDepth) are turned off",
        ),
        ([{"setWeight": 10}, custom_step()], True, None),
        ([{"setWeight": 10}, {"analysis": {}}], False, None),  # the built-in templates read only this object
    ],
)
def test_custom_queries_need_the_operators_opt_in(steps, allowed, refused):
    from modelops_operator.reconcile.modeldeployment import refused_queries  # noqa: PLC0415

    spec = ModelDeploymentSpec.model_validate(md_obj({"rollout": {"steps": steps}})["spec"])
    why = refused_queries(spec, allowed)
    assert (why is None) if refused is None else (refused in why and "settings.customAnalysisQueries" in why)


@pytest.mark.parametrize(
    "url",
    [
        "https://runbooks.example/{{ $labels.x }}",
        'https://r.example/{{ printf "%s" }}',
        "https://r.example/$x",
        "https://r.example/a b",
    ],
)
def test_a_runbook_url_cannot_carry_a_prometheus_template(url):
    from pydantic import ValidationError  # noqa: PLC0415

    with pytest.raises(ValidationError, match="runbookUrl"):
        ModelDeploymentSpec.model_validate(md_obj({"alerts": {"runbookUrl": url}})["spec"])
    ModelDeploymentSpec.model_validate(md_obj({"alerts": {"runbookUrl": "https://runbooks.example/models"}})["spec"])
