"""The local cluster's Kueue wiring (hack/cluster.py), without a cluster.

- Its CRDs and webhook configurations are Kueue's own (config/components of the version
  hack/versions.env pins, kustomized by `kubectl kustomize` from the Go module cache that
  hack/build-binaries.sh fills), less the webhooks of frameworks not integrated here; every
  webhook and CRD conversion is served through the selector-less Service whose EndpointSlice
  names the address and port Kueue's Configuration binds its webhook server to.
- The Configuration's keys are fields of Kueue's Configuration type, and every flag given is one
  the built binary accepts, so a renamed field or flag fails here, not at `up`.
- A ResourceFlavor per node pool: each selects exactly the nodes of its pool (kwok's simulated
  nodes, the real node's kubelet labels), and the GPU flavor carries the GPU nodes' taint.
The cluster tests of admission and preemption are tests/e2e/test_kueue.py.
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


def _module_dir(script: ModuleType, module: str = "sigs.k8s.io/kueue") -> Path:
    try:
        return Path(script.go_module_dir("kueue", module))
    except SystemExit:
        missing(f"Kueue's Go module ({module})", "hack/build-binaries.sh kueue downloads it")


def _need_kubectl(script: ModuleType) -> None:
    if not (script.BIN / "kubectl").exists():
        missing(f"kubectl ({script.BIN / 'kubectl'})", "run hack/build-binaries.sh kubernetes")


@pytest.fixture
def manifest(cluster: ModuleType) -> list[dict[str, Any]]:
    _module_dir(cluster)
    _need_kubectl(cluster)
    return [doc for doc in yaml.safe_load_all(cluster.kueue_manifest()) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_only_the_integrated_frameworks_and_kueues_own_kinds_have_webhooks(manifest):
    webhooks = {
        w["name"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for config in of_kind(manifest, kind)
        for w in config["webhooks"]
    }
    assert {"mpytorchjob.kb.io", "vpytorchjob.kb.io", "mworkload.kb.io", "vworkload.kb.io"} <= webhooks
    assert not {"mpod.kb.io", "vpod.kb.io", "mjob.kb.io", "mdeployment.kb.io"} & webhooks  # nothing else
    names = {
        c["metadata"]["name"] for k in ("Mutating", "Validating") for c in of_kind(manifest, f"{k}WebhookConfiguration")
    }
    # The names Kueue's certificate rotator injects its CA into (pkg/util/cert).
    assert names == {"kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration"}


def test_every_webhook_and_conversion_reaches_the_address_kueue_listens_on(cluster, manifest):
    refs = [
        w["clientConfig"]["service"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for config in of_kind(manifest, kind)
        for w in config["webhooks"]
    ]
    crds = {c["metadata"]["name"]: c for c in of_kind(manifest, "CustomResourceDefinition")}
    assert "workloads.kueue.x-k8s.io" in crds
    refs += [
        c["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
        for c in crds.values()
        if "conversion" in c["spec"]
    ]
    assert refs and {(r["namespace"], r["name"]) for r in refs} == {("kueue-system", "kueue-webhook-service")}
    (service,) = of_kind(manifest, "Service")
    assert "selector" not in service["spec"]
    (endpoints,) = of_kind(manifest, "EndpointSlice")
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert endpoints["metadata"]["namespace"] == service["metadata"]["namespace"]
    config = cluster.kueue_config()
    for ref in refs:
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref.get("port", 443)]
        # The API server's endpoint routing takes the slice port named like the Service port.
        (slice_port,) = [p for p in endpoints["ports"] if p["name"] == port["name"]]
        assert slice_port["port"] == config["webhook"]["port"]
    assert [e["addresses"] for e in endpoints["endpoints"]] == [[config["webhook"]["host"]]]
    assert config["internalCertManagement"]["webhookServiceName"] == service["metadata"]["name"]
    secrets = {s["metadata"]["name"] for s in of_kind(manifest, "Secret")}
    assert config["internalCertManagement"]["webhookSecretName"] in secrets


def _json_fields(source: str) -> set[str]:
    return set(re.findall(r'json:"([A-Za-z]+)[,"]', source))


def test_the_configuration_uses_only_fields_of_kueues_configuration_type(cluster):
    types = _module_dir(cluster) / "apis" / "config" / "v1beta2" / "configuration_types.go"
    # leaderElection is component-base's LeaderElectionConfiguration, which Kueue embeds.
    embedded = _module_dir(cluster, "k8s.io/component-base") / "config" / "v1alpha1" / "types.go"
    fields = _json_fields(types.read_text()) | _json_fields(embedded.read_text())

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    config = cluster.kueue_config()
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert keys(config) - {"apiVersion", "kind"} - fields == set()
    assert config["integrations"]["frameworks"] == ["kubeflow.org/pytorchjob"]
    assert config["manageJobsWithoutQueueName"] is False and "waitForPodsReady" not in config


def test_every_flag_given_is_one_the_binary_accepts(cluster):
    argv = {c.name: c.argv for c in cluster.components()}["kueue"]
    binary = Path(argv[0])
    if not binary.exists():
        missing(f"kueue ({binary})", "run hack/build-binaries.sh kueue")
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, check=False)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", helptext.stdout + helptext.stderr)
    accepted = set(re.findall(r"^\s+--?([\w.-]+)", plain, re.MULTILINE))
    given = {a.removeprefix("--").split("=", 1)[0] for a in argv[1:]}
    assert {"config", "kubeconfig", "feature-gates"} <= given
    assert given - accepted == set()


def test_a_flavor_per_node_pool_selects_exactly_that_pool(cluster):
    docs = yaml.safe_load(cluster.kueue_queues_manifest())["items"]
    flavors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ResourceFlavor"}
    nodes = yaml.safe_load(cluster.nodes_manifest())["items"]
    kubelet = {c.name: c.argv for c in cluster.components()}["kubelet"]
    real_labels = dict(
        kv.split("=", 1) for a in kubelet if a.startswith("--node-labels=") for kv in a.split("=", 1)[1].split(",")
    )
    pools = {n["metadata"]["name"]: (n["metadata"]["labels"], n["spec"]["taints"]) for n in nodes}
    cluster.kubelet_config()
    real_taints = yaml.safe_load((cluster.STATE / "kubelet.yaml").read_text())["registerWithTaints"]
    pools[cluster.NODE_NAME] = (real_labels, real_taints)
    selected = {}
    for name, spec in flavors.items():
        chosen = [n for n, (labels, _) in pools.items() if spec["nodeLabels"].items() <= labels.items()]
        assert chosen, name
        for node in chosen:  # a flavor that selects tainted nodes names their taints
            assert spec.get("nodeTaints", []) == pools[node][1], (name, node)
        selected[name] = set(chosen)
    assert selected["local"] == {cluster.NODE_NAME}
    assert set().union(*selected.values()) == set(pools)  # every node is in a flavor...
    assert sum(len(s) for s in selected.values()) == len(pools)  # ...exactly one
    (queue,) = [d for d in docs if d["kind"] == "ClusterQueue"]
    assert queue["spec"]["preemption"] == {"withinClusterQueue": "LowerPriority"}
    (group,) = queue["spec"]["resourceGroups"]
    assert [f["name"] for f in group["flavors"]] == list(flavors)
    gpus = {
        f["name"]: {r["name"]: r["nominalQuota"] for r in f["resources"]}["nvidia.com/gpu"] for f in group["flavors"]
    }
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]
    assert int(gpus["kwok-gpu"]) == sum(int(n["status"]["capacity"]["nvidia.com/gpu"]) for n in gpu_nodes)
    priorities = {d["metadata"]["name"]: d["value"] for d in docs if d["kind"] == "WorkloadPriorityClass"}
    assert priorities["high"] > priorities["low"]
