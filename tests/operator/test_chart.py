"""The Helm chart `charts/modelops`: lint, and what `helm template` renders for several value sets.

Checked: least-privilege RBAC (exactly the rules the operator uses, no wildcards, no Secrets, no pod
creation, no escalate/bind/impersonate) in cluster and namespaced mode; the operator Deployment
(every env var is an OperatorSettings field and the values parse, restricted security context,
probes, ports); metrics Service, ServiceMonitor, the operator's PrometheusRule (`promtool check
rules` when promtool is built) and the Grafana dashboard; the values schema refusing unknown keys
and bad enums; every value documented; the chart's CRD templates rendering `crds/` with the
release's labels and the keep policy; the chart as a dependency of an umbrella chart.

helm (and promtool) come from hack/build-binaries.sh and are looked up where the cluster tests look
up their binaries; the tests skip only when helm has not been built. No cluster is needed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator import __version__
from modelops_operator.api.names import BUNDLE_VERSION_LABEL
from modelops_operator.settings import ENV_PREFIX, OperatorSettings
from modelops_trainer import progress
from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelops"
BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
HELM = BIN / "helm"
PROMTOOL = BIN / "promtool"
RELEASE, NAMESPACE = "prod", "modelops-system"
FULLNAME = "prod-modelops"
#: The Kubernetes version `helm template` renders for (the local cluster's; a helm built without
#: helm's ldflags would assume 1.20, which the chart's kubeVersion refuses).
KUBE_VERSION = next(
    line.split("=", 1)[1]
    for line in (REPO / "hack" / "versions.env").read_text().splitlines()
    if line.startswith("KUBERNETES_VERSION=")
)
CRD_NAMES = {"datasets.modelops.dev", "trainingruns.modelops.dev", "modeldeployments.modelops.dev"}
#: Schema keys that are not values of this chart but of a parent that depends on it.
PARENT_KEYS = {"enabled"}
LEADER_ELECTION_ENV = {"MODELOPS_LEADER_ELECTION_NAMESPACE", "MODELOPS_LEADER_ELECTION_ID"}


@pytest.fixture(autouse=True)
def _helm() -> None:
    if not HELM.exists():
        missing(f"helm ({HELM})", "run hack/build-binaries.sh")


VALUE_SETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "namespaced": ("--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a,team-b}"),
    "monitoring": (
        "--set",
        "replicas=2",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "grafana.dashboard.enabled=true",
        "--set",
        "grafana.dashboard.namespace=monitoring",
    ),
    "custom": (
        "--set",
        "image.repository=registry.example.com/mirror/modelops-operator",
        "--set",
        "image.tag=0.1.0-rc1",
        "--set",
        "image.pullPolicy=Always",
        "--set",
        "settings.trainerImage=registry.example.com/mirror/trainer:0.1.0",
        "--set",
        "settings.serverImage=registry.example.com/mirror/server:0.1.0",
        "--set",
        "settings.artifactUri=s3://ml-artifacts/modelops",
        "--set",
        "settings.artifactPvc=artifacts",
        "--set",
        "settings.logFormat=plain",
        "--set",
        "settings.logLevel=DEBUG",
        "--set-json",
        "settings.resyncSeconds=30.5",
        "--set",
        "resources.requests.cpu=500m",
        "--set",
        "resources.requests.memory=1Gi",
        "--set",
        "resources.limits.memory=2Gi",
        "--set",
        "priorityClassName=system-cluster-critical",
        "--set",
        "nodeSelector.pool=system",
    ),
}

#: Exactly what the operator may do in the namespaces it watches: (apiGroup, resource) -> verbs.
OPERATOR_RULES: dict[tuple[str, str], set[str]] = {
    **{
        ("modelops.dev", r): {"get", "list", "watch", "patch", "update"}
        for r in ("datasets", "trainingruns", "modeldeployments")
    },
    **{
        ("modelops.dev", f"{r}/status"): {"get", "patch", "update"}
        for r in ("datasets", "trainingruns", "modeldeployments")
    },
    ("", "events"): {"create", "patch", "list"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"get"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "patch"},
    **{
        key: {"get", "list", "watch", "create", "patch"}
        for key in (
            ("apps", "deployments"),
            ("", "services"),
            ("policy", "poddisruptionbudgets"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("monitoring.coreos.com", "servicemonitors"),
            ("monitoring.coreos.com", "prometheusrules"),
        )
    },
    ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},
}
OPERATOR_ALERTS = {
    "ModelopsOperatorDown",
    "ModelopsReconcileErrors",
    "ModelopsObjectsFailed",
    "ModelopsObjectsStuck",
    "ModelopsWatchRestarts",
}
OPERATOR_METRICS = (
    "modelops_reconciles_total",
    "modelops_reconcile_duration_seconds",
    "modelops_objects",
    "modelops_rollout_aborted",
    "modelops_watch_restarts_total",
    "modelops_watch_events_total",
)
ROLE_KINDS = ("Role", "ClusterRole")
#: The ClusterRoles for users, aggregated into Kubernetes' view, edit and admin.
USER_ROLES = {f"{FULLNAME}-{role}": role for role in ("view", "edit", "admin")}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


@functools.cache
def render(*args: str) -> tuple[dict[str, Any], ...]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def operator_cluster_roles(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The ClusterRoles bound to the operator (not the users' aggregated ones)."""
    return [d for d in of_kind(docs, "ClusterRole") if d["metadata"]["name"] not in USER_ROLES]


def operator_roles(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The (Cluster)Roles with the operator's working rules (not leader election, not CRD reading)."""
    return [d for d in docs if d["kind"] in ROLE_KINDS and d["metadata"]["name"] == FULLNAME]


# --- lint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_lint(values, strict):
    helm("lint", str(CHART), "--kube-version", KUBE_VERSION, *(["--strict"] if strict else []), *VALUE_SETS[values])


# --- RBAC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_rbac_is_least_privilege(values):
    docs = render(*VALUE_SETS[values])
    roles = [d for d in docs if d["kind"] in ROLE_KINDS]
    assert roles
    for role in roles:
        where = f"{role['kind']} {role['metadata'].get('namespace', '')}/{role['metadata']['name']}"
        assert "aggregationRule" not in role, where
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, where
            for key in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert not any("*" in item for item in rule.get(key, [])), f"wildcard in {where}: {rule}"
            assert not {"secrets"} & set(rule["resources"]), f"secrets in {where}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{where}: {rule}"
            assert not ("" in rule["apiGroups"] and "pods" in rule["resources"] and "create" in rule["verbs"]), where
            # No subresource of pods: no logs (progress comes from the trainer's endpoint), no exec.
            assert not any(r.startswith("pods/") for r in rule["resources"]), where
    for role in operator_roles(docs):
        assert granted(role) == OPERATOR_RULES, role["metadata"]
    assert "secrets" not in json.dumps([d for d in docs if d["kind"] != "ConfigMap"])


def test_cluster_mode_binds_a_cluster_role():
    docs = render()
    (role,) = operator_roles(docs)
    assert role["kind"] == "ClusterRole"
    binding = one(docs, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert one(docs, "ServiceAccount", FULLNAME)["metadata"]["namespace"] == NAMESPACE
    assert env_of(docs)["MODELOPS_NAMESPACES"] == ""
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == [f"{FULLNAME}-leader-election"]


def test_namespaced_mode_has_roles_in_exactly_the_watched_namespaces():
    docs = render(*VALUE_SETS["namespaced"])
    roles = operator_roles(docs)
    assert {r["kind"] for r in roles} == {"Role"}
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == FULLNAME]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role" and b["roleRef"]["name"] == FULLNAME
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    # The operator's only cluster-wide grants: reading two named CRDs, and Trainer v2's runtimes.
    crd_reader, runtime_reader = operator_cluster_roles(docs)
    assert granted(runtime_reader) == {("trainer.kubeflow.org", "clustertrainingruntimes"): {"get"}}
    assert granted(crd_reader) == {("apiextensions.k8s.io", "customresourcedefinitions"): {"get"}}
    assert set(crd_reader["rules"][0]["resourceNames"]) == {
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    }
    assert [b["metadata"]["name"] for b in of_kind(docs, "ClusterRoleBinding")] == [
        f"{FULLNAME}-read-crds",
        f"{FULLNAME}-read-runtimes",
    ]
    assert env_of(docs)["MODELOPS_NAMESPACES"] == "team-a,team-b"


def test_reading_crds_is_optional():
    off = ("--set", "rbac.readCRDs=false", "--set", "rbac.readTrainingRuntimes=false")
    docs = render(*VALUE_SETS["namespaced"], *off)
    assert not operator_cluster_roles(docs) and not of_kind(docs, "ClusterRoleBinding")
    docs = render(*off)
    assert [r["metadata"]["name"] for r in operator_cluster_roles(docs)] == [FULLNAME]


def test_rbac_and_service_account_can_be_left_out():
    docs = render(
        "--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops"
    )
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_leader_election_lease_in_the_release_namespace_only():
    docs = render(*VALUE_SETS["namespaced"])
    role = one(docs, "Role", f"{FULLNAME}-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert granted(role) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named and all(r["resourceNames"] == [FULLNAME] for r in named)
    binding = one(docs, "RoleBinding", f"{FULLNAME}-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    env = env_of(docs)
    assert env["MODELOPS_LEADER_ELECTION_ID"] == FULLNAME
    assert env["MODELOPS_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert not any("leases" in r["resources"] for role in operator_roles(docs) for r in role["rules"])


# --- the operator Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_every_env_var_is_an_operator_setting(values):
    env = env_of(render(*VALUE_SETS[values]))
    fields = {ENV_PREFIX + name.upper() for name in OperatorSettings.model_fields}
    assert set(env) - LEADER_ELECTION_ENV <= fields, set(env) - LEADER_ELECTION_ENV - fields
    assert set(env) >= LEADER_ELECTION_ENV
    # Everything but the optional PVC is set explicitly (a new setting needs a value in the chart),
    # and the operator accepts the values.
    missing = fields - {"MODELOPS_ARTIFACT_PVC"} - set(env)
    assert not missing, f"settings the chart does not set: {missing}; add them to values.yaml and deployment.yaml"
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    settings = OperatorSettings.from_env(plain)
    assert (settings.health_port, settings.metrics_port) == (8080, 8081)


def test_deployment_defaults():
    docs = render()
    deployment = one(docs, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    c = container(docs)
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert c["image"] == "ghcr.io/modelops/operator:0.1.0"
    assert c["command"] == ["modelops-operator"]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready when the health endpoint answers: kopf's, or a standby's (a standby is ready, so a
    # rolling update of two replicas never waits on a Lease the old pod holds).
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["periodSeconds"] < c["livenessProbe"]["periodSeconds"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 8081}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["serviceAccountName"] == FULLNAME
    assert_restricted(pod)
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    settings = OperatorSettings.from_env({k: v for k, v in env_of(docs).items() if isinstance(v, str)})
    # The chart's defaults are the operator's, except the Lease (the release's).
    assert settings.model_dump(exclude={"leader_election_id", "leader_election_namespace"}) == (
        OperatorSettings().model_dump(exclude={"leader_election_id", "leader_election_namespace"})
    )
    assert settings.leader_election_id == FULLNAME
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == deployment["spec"]["selector"]["matchLabels"]
    assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/name"] == "modelops"


def assert_restricted(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_custom_images_resources_and_settings():
    docs = render(*VALUE_SETS["custom"])
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["image"] == "registry.example.com/mirror/modelops-operator:0.1.0-rc1"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"pool": "system"}
    settings = OperatorSettings.from_env({k: v for k, v in env_of(docs).items() if isinstance(v, str)})
    assert settings.trainer_image == "registry.example.com/mirror/trainer:0.1.0"
    assert settings.server_image == "registry.example.com/mirror/server:0.1.0"
    assert settings.artifact_uri == "s3://ml-artifacts/modelops"
    assert settings.artifact_pvc == "artifacts"
    assert (settings.log_format, settings.log_level, settings.resync_seconds) == ("plain", "DEBUG", 30.5)
    # The helm test pod uses the same image.
    (test_pod,) = of_kind(docs, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == c["image"]


def test_replicas_and_pod_metadata():
    docs = render("--set", "replicas=3", "--set", "podAnnotations.team=ml", "--set", "metrics.scrapeAnnotations=true")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "team": "ml",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8081",
        "prometheus.io/path": "/metrics",
    }


# --- metrics, alerts, dashboard, helm test ---------------------------------------------------------


def test_metrics_service_and_service_monitor():
    docs = render(*VALUE_SETS["monitoring"])
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (test_pod,) = of_kind(docs, "Pod")
    assert not service["spec"]["selector"].items() <= test_pod["metadata"]["labels"].items()
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert not of_kind(render(), "ServiceMonitor") and not of_kind(render(), "PrometheusRule")


def test_operator_prometheus_rule(tmp_path):
    rule = one(render(*VALUE_SETS["monitoring"]), "PrometheusRule", FULLNAME)
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == OPERATOR_ALERTS
    for r in rules:
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r
        assert r["annotations"]["summary"] and r["annotations"]["runbook_url"].startswith("https://"), r
        assert r["annotations"]["runbook_url"].endswith("#" + r["alert"].lower())
        assert f'job="{FULLNAME}-metrics"' in r["expr"], r
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert exprs["ModelopsOperatorDown"].startswith("absent(up{")
    assert 'modelops_reconciles_total{job="prod-modelops-metrics",result="error"}' in exprs["ModelopsReconcileErrors"]
    assert 'phase="Failed"' in exprs["ModelopsObjectsFailed"]
    assert "_over_time(modelops_objects{" in exprs["ModelopsObjectsStuck"]
    assert "[1h]" in exprs["ModelopsObjectsStuck"]
    assert "rate(modelops_watch_restarts_total{" in exprs["ModelopsWatchRestarts"]
    assert 'reason!="start"' in exprs["ModelopsWatchRestarts"]
    if not PROMTOOL.exists():
        missing(f"promtool ({PROMTOOL})", "run hack/build-binaries.sh prometheus")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def trainer_exposition() -> str:
    """What a trainer mid-run serves on /metrics (every gauge has a value)."""
    board = progress.ProgressBoard(metric="val_accuracy", epochs=3, steps_per_epoch=2, images_per_step=8)
    board.stepped(1, 1)
    board.stepped(2, 2)
    board.epoch_finished([{"epoch": 1, "val_accuracy": 0.5}])
    board.stepped(3, 1)
    return progress.exposition(board.snapshot())


def test_grafana_dashboard():
    docs = render(*VALUE_SETS["monitoring"])
    cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["modelops.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "modelops.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Operator up",
        "Reconciles/s by kind and result",
        "Reconcile p99 duration",
        "Objects by kind and phase",
        "Requests/s per ModelDeployment and track",
        "5xx share per ModelDeployment and track",
        "p99 latency per ModelDeployment and track",
        "Server pods per track",
    ):
        assert wanted in titles, titles
    assert any(t.startswith("Rollout status") for t in titles), titles
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "up{",
        "modelops_reconciles_total",
        "modelops_reconcile_duration_seconds_bucket",
        "modelops_objects{",
        "modelops_rollout_aborted",
        "modelops_requests_total",
        "modelops_request_duration_seconds_bucket",
        "modelops_model_info",
        'code=~"5.."',
        "histogram_quantile(0.99",
        "modelops_dev_modeldeployment",
        "modelops_dev_track",
    ):
        assert metric in exprs, metric
    for metric in OPERATOR_METRICS:
        assert metric in exprs, f"no panel shows {metric}"
    # The Training row: every trainer gauge it charts is one the trainer exports, by trial.
    for title in ("Images/s per trial", "Epoch progress per trial", "ETA per trial", "Objective per trial"):
        assert title in titles, titles
    exported = set(re.findall(r"^# TYPE (\S+) gauge$", trainer_exposition(), re.MULTILINE))
    charted = set(re.findall(r"modelops_train_[a-z_]+", exprs))
    assert {
        "modelops_train_images_per_second",
        "modelops_train_eta_seconds",
        "modelops_train_progress_ratio",
    } <= charted
    assert charted <= exported, charted - exported
    training = [t["expr"] for p in panels for t in p["targets"] if "modelops_train_" in t["expr"]]
    assert all("modelops_dev_trial" in e and 'namespace=~"$namespace"' in e for e in training), training
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert not of_kind(render(), "ConfigMap")


def test_helm_test_pod():
    (pod,) = of_kind(render(), "Pod")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert_restricted(pod["spec"])
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "ghcr.io/modelops/operator:0.1.0"
    assert c["command"][:2] == ["python", "-c"]
    script = c["command"][2]
    compile(script, "helm-test", "exec")
    assert f"http://{FULLNAME}-metrics.{NAMESPACE}.svc:8081/metrics" in script
    assert "modelops_reconciles_total" in script
    assert not of_kind(render("--set", "tests.enabled=false"), "Pod")


# --- values and schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "nope=1"), "additional properties 'nope' not allowed"),
        (("--set", "settings.nope=1"), "additional properties 'nope' not allowed"),
        (("--set", "rbac.scope=everything"), "/rbac/scope"),
        (("--set", "settings.logLevel=TRACE"), "/settings/logLevel"),
        (("--set", "settings.logFormat=xml"), "/settings/logFormat"),
        (("--set", "replicas=two"), "/replicas"),
        (("--set", "rbac.scope=namespaced"), "rbac.scope=namespaced needs watchNamespaces"),
        (("--set", "watchNamespaces={team-a}"), "watchNamespaces is only used with rbac.scope=namespaced"),
        (("--set", "workloadDefaults.env[0].name=MODELOPS_DEVICE"), "/workloadDefaults/env/0/name"),
        (("--set", "workloadDefaults.serviceAccount=ml"), "additional properties 'serviceAccount' not allowed"),
        (
            ("--set", "extraEnv[0].name=MODELOPS_WORKERS", "--set", "extraEnv[0].value=4"),
            "extraEnv sets MODELOPS_WORKERS: the operator's MODELOPS_* settings are chart values under settings",
        ),
        (("--set", "extraEnv[0].value=x"), "/extraEnv/0"),
        (("--set", "extraVolumeMounts[0].name=ca"), "/extraVolumeMounts/0"),
        (("--set", "crds.enable=true"), "additional properties 'enable' not allowed"),
        # What `helm upgrade --reuse-values` from a chart without a crds section renders with.
        (("--set", "crds=null"), "values have no crds section: `helm upgrade --reuse-values` keeps the previous"),
    ],
    ids=[
        "unknown-key",
        "unknown-nested-key",
        "scope-enum",
        "log-level-enum",
        "log-format-enum",
        "type",
        "no-ns",
        "ns-in-cluster",
        "operator-variable",
        "workload-typo",
        "extra-env-setting",
        "extra-env-without-name",
        "mount-without-path",
        "crds-typo",
        "reuse-values",
    ],
)
def test_bad_values_are_refused(args, message):
    result = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_schema_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            for name, sub in node["properties"].items():
                walk(sub, f"{path}.{name}")

    walk(schema, "")
    assert set(schema["properties"]) - PARENT_KEYS == set(yaml.safe_load((CHART / "values.yaml").read_text()))


def documented_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    """The values a user sets: schema properties that are not sections of further keys."""
    keys = []
    for name, sub in node["properties"].items():
        keys += documented_keys(sub, f"{prefix}{name}.") if "properties" in sub else [prefix + name]
    return keys


def values_lines() -> dict[str, int]:
    """values.yaml: each key's dotted path -> its line index."""
    stack: list[tuple[int, str]] = []
    found = {}
    for i, line in enumerate((CHART / "values.yaml").read_text().splitlines()):
        match = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found[".".join(name for _, name in stack)] = i
    return found


def test_every_value_is_commented_and_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = documented_keys(schema)
    lines = (CHART / "values.yaml").read_text().splitlines()
    where = values_lines()
    readme = (CHART / "README.md").read_text()
    for key in PARENT_KEYS:
        assert f"| `{key}` |" in readme, f"{key} is not in charts/modelops/README.md's values table"
    for key in (k for k in keys if k not in PARENT_KEYS):
        assert key in where, f"{key} is in the schema but not in values.yaml"
        above = lines[where[key] - 1].strip()
        assert above.startswith("#"), f"values.yaml: {key} has no comment above it"
        assert f"| `{key}` |" in readme, f"{key} is not in charts/modelops/README.md's values table"


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2",
        "modelops",
        "0.1.0",
        "0.1.0",
    )
    # One bundle: the operator's version is the chart's appVersion and the CRDs' label.
    assert chart["appVersion"] == __version__
    assert chart["kubeVersion"] == ">=1.28.0-0"
    assert chart["home"] == "https://github.com/modelops/modelops"
    assert chart["sources"] == ["https://github.com/modelops/modelops"]
    # The icon is a file of this repository, served raw from main.
    raw = "https://raw.githubusercontent.com/modelops/modelops/main/"
    assert chart["icon"].startswith(raw)
    assert (REPO / chart["icon"].removeprefix(raw)).is_file()


@pytest.mark.parametrize(("version", "ok"), [("1.27.9", False), ("1.28.0", True), ("v1.30.2-eks-1552ad0", True)])
def test_kubernetes_older_than_1_28_is_refused(version, ok):
    result = helm("template", RELEASE, str(CHART), "--kube-version", version, check=False)
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert "chart requires kubeVersion: >=1.28.0-0 which is incompatible with Kubernetes v1.27.9" in result.stderr


# --- CRDs -----------------------------------------------------------------------------------------


def crds_of(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, "CustomResourceDefinition")}


def test_chart_crds_are_the_generated_ones_with_the_keep_policy_and_bundle_version():
    """`helm template` renders each CRD of crds/ unchanged, plus the release's labels and
    `helm.sh/resource-policy: keep`, so `helm upgrade` upgrades the CRDs and uninstall keeps them."""
    generated = {
        d["metadata"]["name"]: d
        for d in (yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml")))
    }
    assert set(generated) == CRD_NAMES
    assert not (CHART / "crds").exists(), "charts/modelops/crds/ is never upgraded by Helm: the CRDs are templates"
    rendered = crds_of(render())
    assert set(rendered) == CRD_NAMES
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}, name
        labels = meta["labels"]
        assert labels[BUNDLE_VERSION_LABEL] == __version__ == "0.1.0", name
        assert generated[name]["metadata"]["labels"][BUNDLE_VERSION_LABEL] == __version__
        assert labels["helm.sh/chart"] == "modelops-0.1.0" and labels["app.kubernetes.io/managed-by"] == "Helm"
        # Apart from Helm's labels and annotation, exactly the generated file.
        helm_labels = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
        bare = {
            **crd,
            "metadata": {"name": name, "labels": {k: v for k, v in labels.items() if k not in helm_labels}},
        }
        assert bare == generated[name], f"{name}: the chart's template differs from crds/ (run crdgen)"
    # The PromQL placeholders of a description survive the template ({{selector}}).
    assert "`{{selector}}`" in json.dumps(rendered["modeldeployments.modelops.dev"])


def test_crds_can_be_left_out_or_left_unprotected():
    assert crds_of(render("--set", "crds.enabled=false")) == {}
    for crd in crds_of(render("--set", "crds.keep=false")).values():
        assert "annotations" not in crd["metadata"]
    # A second release (one per tenant) renders no CRD at all, so it never fights the first over them.
    assert crds_of(render(*VALUE_SETS["namespaced"], "--set", "crds.enabled=false")) == {}


def test_operator_alerts_fire_on_series(tmp_path):
    """`promtool test rules`: each alert fires on the series that should raise it, and stays quiet
    on a healthy operator (a second operator's series in another job must not matter)."""
    if not PROMTOOL.exists():
        missing(f"promtool ({PROMTOOL})", "run hack/build-binaries.sh prometheus")
    rule = one(render(*VALUE_SETS["monitoring"]), "PrometheusRule", FULLNAME)
    # The expressions are under test here; promtool would also compare the rendered annotations.
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule["spec"]["groups"]
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    job = f'job="{FULLNAME}-metrics"'
    other = 'job="other-modelops-metrics"'
    series = [
        # Down from minute 30 on.
        {"series": f'up{{{job},namespace="{NAMESPACE}",pod="a"}}', "values": "1x30 0x60"},
        {"series": f'up{{{other},namespace="{NAMESPACE}",pod="b"}}', "values": "1x90"},
        # 2 errors a minute throughout.
        {"series": f'modelops_reconciles_total{{{job},kind="TrainingRun",result="error"}}', "values": "0+2x90"},
        {"series": f'modelops_reconciles_total{{{job},kind="Dataset",result="success"}}', "values": "0+5x90"},
        # A failed Dataset; a TrainingRun pending all along; a ModelDeployment progressing briefly.
        {"series": f'modelops_objects{{{job},kind="Dataset",phase="Failed"}}', "values": "1x90"},
        {"series": f'modelops_objects{{{job},kind="TrainingRun",phase="Pending"}}', "values": "1x90"},
        {"series": f'modelops_objects{{{job},kind="ModelDeployment",phase="Progressing"}}', "values": "1x20 0x70"},
        # 120 stalled watches replaced a minute (2/s) from minute 20 on; starts never count.
        {"series": f'modelops_watch_restarts_total{{{job},reason="inactive"}}', "values": "0x20 0+120x70"},
        {"series": f'modelops_watch_restarts_total{{{job},reason="start"}}', "values": "0+1000x90"},
        {"series": f'modelops_watch_restarts_total{{{other},reason="inactive"}}', "values": "0+1000x90"},
    ]
    alert = {
        "ModelopsOperatorDown": [],
        "ModelopsReconcileErrors": [{"exp_labels": {"severity": "warning", "kind": "TrainingRun"}}],
        "ModelopsObjectsFailed": [{"exp_labels": {"severity": "warning", "kind": "Dataset"}}],
        "ModelopsObjectsStuck": [],
        "ModelopsWatchRestarts": [],
    }

    def expect(at: str, firing: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [{"eval_time": at, "alertname": name, "exp_alerts": firing.get(name, [])} for name in OPERATOR_ALERTS]

    stuck = [{"exp_labels": {"severity": "warning", "kind": "TrainingRun", "phase": "Pending"}}]
    down = [{"exp_labels": {"severity": "critical"}}]
    restarts = [{"exp_labels": {"severity": "warning"}}]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    *expect("4m", {}),
                    *expect("29m", {**alert, "ModelopsWatchRestarts": []}),
                    *expect("45m", {**alert, "ModelopsOperatorDown": down, "ModelopsWatchRestarts": restarts}),
                    *expect(
                        "80m",
                        {
                            **alert,
                            "ModelopsOperatorDown": down,
                            "ModelopsWatchRestarts": restarts,
                            "ModelopsObjectsStuck": stuck,
                        },
                    ),
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secrets_are_readable_only_when_asked_for():
    def secret_rules(*args: str) -> list[dict[str, Any]]:
        roles = [d for d in render(*args) if d["kind"] in ("ClusterRole", "Role")]
        return [r for role in roles for r in role.get("rules") or [] if "secrets" in r.get("resources", [])]

    assert secret_rules() == []
    assert secret_rules("--set", "rbac.readSecrets=true") == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    ]


def test_custom_analysis_queries_are_off_unless_the_chart_turns_them_on():
    for args, expected in (((), False), (("--set", "settings.customAnalysisQueries=true"), True)):
        env = {k: v for k, v in env_of(render(*args)).items() if isinstance(v, str)}
        assert OperatorSettings.from_env(env).custom_analysis_queries is expected


def test_workload_defaults_reach_the_operator_as_json_it_accepts():
    docs = render(
        "--set", "workloadDefaults.serviceAccountName=modelops-workloads",
        "--set", "workloadDefaults.imagePullSecrets[0].name=corp-registry",
        "--set", "workloadDefaults.labels.team=ml",
        "--set", "workloadDefaults.env[0].name=AWS_REGION", "--set", "workloadDefaults.env[0].value=eu-west-1",
        "--set", "settings.workloadServiceAccounts={ml-training,ml-data}",
    )  # fmt: skip
    env = env_of(docs)
    settings = OperatorSettings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.workload_defaults.service_account_name == "modelops-workloads"
    assert [r.name for r in settings.workload_defaults.image_pull_secrets] == ["corp-registry"]
    assert settings.workload_defaults.labels == {"team": "ml"}
    assert settings.workload_defaults.env[0].value == "eu-west-1"
    assert settings.workload_service_accounts == ["ml-training", "ml-data"]


# --- installation: security contexts, extra env and volumes, availability, user roles ---------------


def test_security_contexts_can_be_overridden_for_openshift():
    """OpenShift's restricted-v2 assigns the uid: the fixed one can be removed (null) in both contexts."""
    ids = ("runAsUser", "runAsGroup")
    args = [
        arg for key in ids for where in ("pod", "container") for arg in ("--set", f"{where}SecurityContext.{key}=null")
    ]
    docs = render(*args)
    pods = [one(docs, "Deployment")["spec"]["template"]["spec"], one(docs, "Pod")["spec"]]
    for pod in pods:
        for sc in (pod["securityContext"], *(c["securityContext"] for c in pod["containers"])):
            assert not set(ids) & set(sc), sc
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    docs = render("--set", "podSecurityContext.fsGroup=2000", "--set", "containerSecurityContext.runAsUser=1001")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 2000 and pod["securityContext"]["runAsUser"] == 65532
    assert pod["containers"][0]["securityContext"]["runAsUser"] == 1001


def test_extra_env_and_volumes_for_a_proxy_and_a_corporate_ca():
    values = {
        "extraEnv": [
            {"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"},
            {"name": "NO_PROXY", "value": ".svc,.cluster.local,10.0.0.0/8"},
            {"name": "SSL_CERT_FILE", "value": "/etc/modelops/ca/ca-bundle.crt"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
        ],
        "extraVolumes": [{"name": "corporate-ca", "configMap": {"name": "corporate-ca-bundle"}}],
        "extraVolumeMounts": [{"name": "corporate-ca", "mountPath": "/etc/modelops/ca", "readOnly": True}],
    }
    docs = render(*(arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    env = c["env"]
    default = container(render())
    # The operator's settings first and unchanged, then the extra variables.
    assert env == [*default["env"], *values["extraEnv"]]
    assert pod["volumes"][-1] == values["extraVolumes"][0]
    assert any(v["name"] == "tmp" for v in pod["volumes"])
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, *values["extraVolumeMounts"]]


def test_standbys_get_a_disruption_budget_and_are_spread():
    one_replica = render()
    assert not of_kind(one_replica, "PodDisruptionBudget")
    assert "topologySpreadConstraints" not in one(one_replica, "Deployment")["spec"]["template"]["spec"]

    docs = render("--set", "replicas=2")
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": selector},
    }
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [t["topologyKey"] for t in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for t in spread:
        # Soft: a one-node cluster still runs every replica.
        assert t["whenUnsatisfiable"] == "ScheduleAnyway" and t["maxSkew"] == 1
        assert t["labelSelector"] == {"matchLabels": selector}

    own = [{"topologyKey": "kubernetes.io/hostname", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]
    docs = render("--set", "replicas=3", "--set-json", f"topologySpreadConstraints={json.dumps(own)}")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"] == own
    assert not of_kind(
        render("--set", "replicas=2", "--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget"
    )


def test_users_get_view_edit_and_admin_through_kubernetes_aggregated_roles():
    docs = render()
    roles = {r["metadata"]["name"]: r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] in USER_ROLES}
    assert set(roles) == set(USER_ROLES)
    read = {"get", "list", "watch"}
    write = {"create", "update", "patch", "delete", "deletecollection"}
    for name, aggregate_to in USER_ROLES.items():
        role = roles[name]
        labels = role["metadata"]["labels"]
        assert {k for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")} == {
            f"rbac.authorization.k8s.io/aggregate-to-{aggregate_to}"
        }
        assert labels[f"rbac.authorization.k8s.io/aggregate-to-{aggregate_to}"] == "true"
        verbs = read if aggregate_to == "view" else read | write
        expected = {("modelops.dev", kind): verbs for kind in ("datasets", "trainingruns", "modeldeployments")}
        # Status is the operator's to write; users only read it.
        expected |= {
            ("modelops.dev", f"{kind}/status"): read for kind in ("datasets", "trainingruns", "modeldeployments")
        }
        assert granted(role) == expected, name
    # No binding: Kubernetes' own view/edit/admin bindings carry them.
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    assert not [b for b in bindings if b["roleRef"]["name"] in USER_ROLES]
    names = {r["metadata"]["name"] for r in of_kind(render("--set", "rbac.userRoles=false"), "ClusterRole")}
    assert not names & set(USER_ROLES)
    assert not of_kind(render("--set", "rbac.create=false"), "ClusterRole")


# --- the chart as a dependency of an umbrella chart ------------------------------------------------


def umbrella(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A parent chart `platform` that depends on modelops under `condition: modelops.enabled`."""
    parent = tmp_path / "platform"
    shutil.copytree(CHART, parent / "charts" / "modelops")
    chart = {
        "apiVersion": "v2",
        "name": "platform",
        "version": "1.0.0",
        "dependencies": [
            {"name": "modelops", "version": "0.1.0", "repository": f"file://{CHART}", "condition": "modelops.enabled"}
        ],
    }
    (parent / "Chart.yaml").write_text(yaml.safe_dump(chart))
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    return parent


UMBRELLA_VALUES = {
    "global": {"imageRegistry": "registry.corp.example", "imagePullSecrets": ["corp-pull"], "clusterDomain": "c"},
    "modelops": {"enabled": True, "replicas": 2, "settings": {"logLevel": "DEBUG"}},
}


def test_the_chart_works_as_a_dependency_with_global_values_and_a_condition(tmp_path):
    parent = umbrella(tmp_path, UMBRELLA_VALUES)
    helm("lint", str(parent), "--kube-version", KUBE_VERSION)
    args = ("template", "platform", str(parent), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION)
    docs = tuple(d for d in yaml.safe_load_all(helm(*args).stdout) if d)
    deployment = one(docs, "Deployment", "platform-modelops")
    assert deployment["spec"]["replicas"] == 2
    assert crds_of(docs).keys() == CRD_NAMES
    assert env_of(docs)["MODELOPS_LOG_LEVEL"] == "DEBUG"
    assert one(docs, "PodDisruptionBudget", "platform-modelops")
    # The parent turns modelops off: nothing of it is rendered.
    off = helm(*args, "--set", "modelops.enabled=false").stdout
    assert not [d for d in yaml.safe_load_all(off) if d]
    # The subchart's own schema still guards its values under the parent.
    bad = helm(*args, "--set", "modelops.replicas=two", check=False)
    assert bad.returncode != 0 and "replicas" in bad.stderr, bad.stderr
