"""The local cluster's JobSet and Kubeflow Trainer v2 wiring (hack/cluster.py), without a cluster.

- Their CRDs and webhook configurations are their own (JobSet's config/components, Trainer's
  manifests/base of the versions hack/versions.env pins, kustomized by `kubectl kustomize` from the
  Go module cache), less Trainer's stock runtimes; the webhook configurations have the names the
  certificate rotators inject their CA into.
- Every webhook is served through a selector-less Service whose EndpointSlice names the node's
  address and the port the process's webhook server listens on, and the Secret each rotator fills
  exists.
- JobSet's Configuration keys are fields of its Configuration type, and every flag given to either
  process is one the built binary accepts, so a renamed field or flag fails here, not at `up`.
The cluster test of a TrainJob on the real node is tests/e2e/test_trainjob_platform.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.tools import missing

MODULES = {"jobset": "sigs.k8s.io/jobset", "trainer": "github.com/kubeflow/trainer/v2"}


def _module_dir(script: ModuleType, wrapper: str, module: str | None = None) -> Path:
    module = module or MODULES[wrapper]
    try:
        return Path(script.go_module_dir(wrapper, module))
    except SystemExit:
        missing(f"{module} (Go module)", f"hack/build-binaries.sh {wrapper} downloads it")


def _docs(script: ModuleType, wrapper: str, manifest: str) -> list[dict[str, Any]]:
    _module_dir(script, wrapper)
    if not (script.BIN / "kubectl").exists():
        missing(f"kubectl ({script.BIN / 'kubectl'})", "run hack/build-binaries.sh kubernetes")
    return [doc for doc in yaml.safe_load_all(getattr(script, manifest)()) if doc]


@pytest.fixture
def jobset(cluster: ModuleType) -> list[dict[str, Any]]:
    return _docs(cluster, "jobset", "jobset_manifest")


@pytest.fixture
def trainer(cluster: ModuleType) -> list[dict[str, Any]]:
    return _docs(cluster, "trainer", "trainer_manifest")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _webhook_refs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        w["clientConfig"]["service"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for config in of_kind(docs, kind)
        for w in config["webhooks"]
    ]


def _assert_served_by(docs: list[dict[str, Any]], host: str, port: int) -> tuple[str, str]:
    """Every webhook names the one selector-less Service, whose EndpointSlice sends the API server
    to `host`:`port` (by the slice port named like the Service's); its namespace and name."""
    refs = _webhook_refs(docs)
    assert refs
    (service,) = of_kind(docs, "Service")
    assert {(r["namespace"], r["name"]) for r in refs} == {
        (service["metadata"]["namespace"], service["metadata"]["name"])
    }
    assert "selector" not in service["spec"]
    (endpoints,) = of_kind(docs, "EndpointSlice")
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert endpoints["metadata"]["namespace"] == service["metadata"]["namespace"]
    for ref in refs:
        (svc_port,) = [p for p in service["spec"]["ports"] if p["port"] == ref.get("port", 443)]
        (slice_port,) = [p for p in endpoints["ports"] if p["name"] == svc_port["name"]]
        assert slice_port["port"] == svc_port["targetPort"] == port
    assert [e["addresses"] for e in endpoints["endpoints"]] == [[host]]
    return service["metadata"]["namespace"], service["metadata"]["name"]


def test_jobset_webhooks_reach_the_address_jobset_listens_on(cluster, jobset):
    config = cluster.jobset_config()
    namespace, service = _assert_served_by(jobset, config["webhook"]["host"], config["webhook"]["port"])
    assert namespace == cluster.JOBSET_NAMESPACE == "jobset-system"  # its rotator's, outside a pod
    assert config["internalCertManagement"]["webhookServiceName"] == service
    secrets = {s["metadata"]["name"] for s in of_kind(jobset, "Secret")}
    assert config["internalCertManagement"]["webhookSecretName"] in secrets
    names = {
        c["metadata"]["name"] for k in ("Mutating", "Validating") for c in of_kind(jobset, f"{k}WebhookConfiguration")
    }
    # The names JobSet's certificate rotator injects its CA into (pkg/util/cert).
    assert names == {"jobset-mutating-webhook-configuration", "jobset-validating-webhook-configuration"}
    webhooks = {
        w["name"]
        for k in ("Mutating", "Validating")
        for c in of_kind(jobset, f"{k}WebhookConfiguration")
        for w in c["webhooks"]
    }
    assert webhooks == {"mjobset.kb.io", "vjobset.kb.io", "mpod.kb.io", "vpod.kb.io"}
    (crd,) = of_kind(jobset, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "jobsets.jobset.x-k8s.io"
    assert len(crd["spec"]["versions"]) == 1 and "conversion" not in crd["spec"]  # nothing to convert
    namespaces = {n["metadata"]["name"] for n in of_kind(jobset, "Namespace")}
    assert namespaces == {namespace}


def test_trainer_webhooks_reach_the_port_trainer_listens_on(cluster, trainer):
    argv = {c.name: c.argv for c in cluster.components()}["trainer"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    namespace, service = _assert_served_by(trainer, cluster.NODE_IP, int(flags["webhook-server-port"]))
    assert namespace == cluster.TRAINER_NAMESPACE == "kubeflow-system"  # its rotator's, outside a pod
    # The flags' defaults in Trainer's main.go name the Service and the Secret.
    assert service == "kubeflow-trainer-controller-manager" and "webhook-service-name" not in flags
    secrets = {s["metadata"]["name"] for s in of_kind(trainer, "Secret")}
    assert secrets == {"kubeflow-trainer-webhook-cert"} and "webhook-secret-name" not in flags
    (config,) = of_kind(trainer, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == "validator.trainer.kubeflow.org"  # what its rotator injects into
    assert {w["name"] for w in config["webhooks"]} == {
        "validator.trainjob.trainer.kubeflow.org",
        "validator.trainingruntime.trainer.kubeflow.org",
        "validator.clustertrainingruntime.trainer.kubeflow.org",
    }
    crds = {c["spec"]["names"]["kind"] for c in of_kind(trainer, "CustomResourceDefinition")}
    assert crds == {"TrainJob", "TrainingRuntime", "ClusterTrainingRuntime"}
    assert not of_kind(trainer, "ClusterTrainingRuntime")  # the stock runtimes' images cannot be pulled here
    assert {n["metadata"]["name"] for n in of_kind(trainer, "Namespace")} == {namespace}


def test_trainers_webhook_server_reads_its_own_certificate_directory(cluster):
    env = {c.name: c.env for c in cluster.components()}["trainer"]
    assert cluster.trainer_cert_dir() == Path(env["TMPDIR"]) / "k8s-webhook-server" / "serving-certs"
    assert cluster.trainer_cert_dir() != cluster.WEBHOOK_CERT_DIR  # not the training operator's
    jobset = cluster.jobset_config()["webhook"]["certDir"]
    assert len({str(cluster.trainer_cert_dir()), jobset, str(cluster.WEBHOOK_CERT_DIR)}) == 3


def _json_fields(source: str) -> set[str]:
    return set(re.findall(r'json:"([A-Za-z]+)[,"]', source))


def test_the_jobset_configuration_uses_only_fields_of_its_type(cluster):
    types = _module_dir(cluster, "jobset") / "api" / "config" / "v1alpha1" / "configuration_types.go"
    embedded = _module_dir(cluster, "jobset", "k8s.io/component-base") / "config" / "v1alpha1" / "types.go"
    fields = _json_fields(types.read_text()) | _json_fields(embedded.read_text())

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    config = cluster.jobset_config()
    assert config["apiVersion"] == "config.jobset.x-k8s.io/v1alpha1"
    assert keys(config) - {"apiVersion", "kind"} - fields == set()
    assert config["leaderElection"] == {"leaderElect": False}


@pytest.mark.parametrize("name", ["jobset", "trainer"])
def test_every_flag_given_is_one_the_binary_accepts(cluster, name):
    argv = {c.name: c.argv for c in cluster.components()}[name]
    binary = Path(argv[0])
    if not binary.exists():
        missing(f"{name} ({binary})", f"run hack/build-binaries.sh {name}")
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, check=False)
    accepted = set(re.findall(r"^\s+--?([\w.-]+)", helptext.stdout + helptext.stderr, re.MULTILINE))
    given = {a.removeprefix("--").split("=", 1)[0] for a in argv[1:]}
    assert "kubeconfig" in given
    assert given - accepted == set()
