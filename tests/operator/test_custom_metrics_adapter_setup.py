"""The local cluster's custom metrics adapter (hack/gomod/custom-metrics-adapter, wired up by
hack/cluster.py), without a cluster.

- Its APIServices and delegation bindings are those of the library's own deployment
  (test-adapter-deploy/ of sigs.k8s.io/custom-metrics-apiserver, the version our module requires,
  read from the Go module cache), for a host process: roles bound to the user of its client
  certificate, the cluster's CA instead of `insecureSkipTLSVerify`.
- The APIServices reach the process: the EndpointSlice port named like the Service port, the
  address and port the adapter listens on, and a serving certificate for the Service's DNS name
  (the name the aggregation layer checks), signed by the CA in the APIServices' caBundle.
- Every flag hack/cluster.py gives the adapter is one the built binary accepts (its `--help`).
- The PromQL the adapter sends: pod names quoted for the regular expression, label values as
  string literals, metric names of Prometheus' syntax only (`go test ./promql` in its module).
The adapter against a real API server and Prometheus is tests/integration/test_custom_metrics_adapter.py;
the whole path through the aggregation layer to an HPA is tests/e2e/test_custom_metrics.py.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "hack" / "gomod" / "custom-metrics-adapter"


def upstream() -> dict[tuple[str, str], dict[str, Any]]:
    """The library's deployment of its test adapter, by (kind, name)."""
    (version,) = re.findall(r"sigs\.k8s\.io/custom-metrics-apiserver (v\S+)", (MODULE / "go.mod").read_text())
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go/pkg/mod")
    path = cache / f"sigs.k8s.io/custom-metrics-apiserver@{version}/test-adapter-deploy/testing-adapter.yaml"
    if not path.exists():
        missing(f"custom-metrics-apiserver's manifests ({path})", "hack/build-binaries.sh custom-metrics-adapter")
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def ours(cluster: ModuleType) -> dict[tuple[str, str], dict[str, Any]]:
    items = yaml.safe_load(cluster.custom_metrics_adapter_manifest())["items"]
    return {(item["kind"], item["metadata"]["name"]): item for item in items}


def flags(cluster: ModuleType) -> dict[str, str]:
    argv = {c.name: c.argv for c in cluster.components()}["custom-metrics-adapter"]
    return dict(a.removeprefix("--").split("=", 1) for a in argv[1:])


def test_the_apiservices_are_the_librarys_verified_with_the_cluster_ca(cluster):
    theirs = {
        name: doc["spec"]
        for (kind, name), doc in upstream().items()
        if kind == "APIService" and doc["spec"]["group"] == "custom.metrics.k8s.io"
    }
    mine = {name: doc["spec"] for (kind, name), doc in ours(cluster).items() if kind == "APIService"}
    assert set(mine) == set(theirs) == set(cluster.CUSTOM_METRICS_APISERVICES)
    for name, spec in mine.items():
        assert "insecureSkipTLSVerify" not in spec
        assert base64.b64decode(spec["caBundle"]) == (cluster.STATE / "pki" / "ca.crt").read_bytes()
        same = ("group", "version", "groupPriorityMinimum", "versionPriority")
        assert {k: spec[k] for k in same} == {k: theirs[name][k] for k in same}
    # The preferred version is listed first (up waits for both; status shows both).
    preferred = max(mine, key=lambda n: mine[n]["versionPriority"])
    assert cluster.CUSTOM_METRICS_APISERVICES[0] == preferred == "v1beta2.custom.metrics.k8s.io"


def test_the_delegation_bindings_are_the_librarys_bound_to_the_certificate_user(cluster):
    theirs = upstream()
    mine = ours(cluster)
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": cluster.CUSTOM_METRICS_USER}
    for kind, role in (("ClusterRole", "system:auth-delegator"), ("Role", "extension-apiserver-authentication-reader")):
        (upstream_binding,) = [d for d in theirs.values() if d.get("roleRef", {}).get("name") == role]
        (binding,) = [d for d in mine.values() if d.get("roleRef", {}).get("name") == role]
        assert binding["roleRef"] == upstream_binding["roleRef"] == {**binding["roleRef"], "kind": kind}
        assert binding["metadata"].get("namespace") == upstream_binding["metadata"].get("namespace")
        assert binding["subjects"] == [user]
    # Listing pods by label selector (the library's helpers.ListObjectNames) is allowed to that user.
    (reader,) = [
        mine[("ClusterRole", b["roleRef"]["name"])]
        for (kind, _), b in mine.items()
        if kind == "ClusterRoleBinding" and b["roleRef"]["name"] != "system:auth-delegator"
    ]
    assert any("" in r["apiGroups"] and "pods" in r["resources"] and "list" in r["verbs"] for r in reader["rules"])
    assert cluster.CLIENTS["custom-metrics-adapter"] == f"/CN={cluster.CUSTOM_METRICS_USER}"
    assert flags(cluster)["lister-kubeconfig"].endswith("custom-metrics-adapter.kubeconfig")


def test_the_apiservices_route_to_the_address_the_adapter_listens_on(cluster):
    mine = ours(cluster)
    (service,) = [v for (kind, _), v in mine.items() if kind == "Service"]
    assert "selector" not in service["spec"]  # the EndpointSlice below is the only one
    (endpoints,) = [v for (kind, _), v in mine.items() if kind == "EndpointSlice"]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert endpoints["metadata"]["namespace"] == service["metadata"]["namespace"]
    given = flags(cluster)
    for name in cluster.CUSTOM_METRICS_APISERVICES:
        ref = mine[("APIService", name)]["spec"]["service"]
        assert (ref["namespace"], ref["name"]) == (service["metadata"]["namespace"], service["metadata"]["name"])
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
        # kube-aggregator's endpoint routing takes the slice port named like the Service port.
        (slice_port,) = [p for p in endpoints["ports"] if p["name"] == port["name"]]
        assert slice_port["port"] == int(given["secure-port"])
    assert [e["addresses"] for e in endpoints["endpoints"]] == [[given["bind-address"]]]
    # Not a port another host process of the cluster listens on.
    assert int(given["secure-port"]) not in (cluster.METRICS_SERVER_PORT, cluster.PROMETHEUS_PORT, cluster.API_PORT)
    assert given["prometheus-url"] == f"http://{cluster.NODE_IP}:{cluster.PROMETHEUS_PORT}"


def test_the_serving_certificate_names_the_service_and_is_signed_by_the_apiservices_ca(cluster):
    if shutil.which("openssl") is None:
        missing("openssl", "apt-get install openssl")
    (cluster.STATE / "pki" / "ca.crt").unlink()  # make_pki makes a real CA
    cluster.make_pki()
    pki = cluster.STATE / "pki"
    given = flags(cluster)
    (service,) = [v for (kind, _), v in ours(cluster).items() if kind == "Service"]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", given["tls-cert-file"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"DNS:{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in text
    assert "TLS Web Server Authentication" in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "ca.crt"), given["tls-cert-file"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert Path(given["tls-private-key-file"]).exists()
    # The client certificate names the user the roles are bound to.
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(pki / "custom-metrics-adapter.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cluster.CUSTOM_METRICS_USER in subject


def test_every_flag_given_is_one_the_binary_accepts(cluster):
    argv = {c.name: c.argv for c in cluster.components()}["custom-metrics-adapter"]
    binary = Path(argv[0])
    if not binary.exists():
        missing(f"the custom metrics adapter ({binary})", "run hack/build-binaries.sh custom-metrics-adapter")
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, check=False)
    accepted = set(re.findall(r"^\s+(?:-\w, )?--([\w.-]+)", helptext.stdout + helptext.stderr, re.MULTILINE))
    given = {a.removeprefix("--").split("=", 1)[0] for a in argv[1:]}
    assert "prometheus-url" in accepted
    assert given - accepted == set()


def test_the_promql_it_sends_is_quoted_and_refuses_other_names():
    go = shutil.which("go")
    if go is None:
        missing("go", "hack/setup.sh installs Go")
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false"}
    res = subprocess.run(
        [go, "test", "-count=1", "./promql/"], cwd=MODULE, capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^ok\s+modelops\.dev/hack/custom-metrics-adapter/promql", res.stdout, re.MULTILINE)
