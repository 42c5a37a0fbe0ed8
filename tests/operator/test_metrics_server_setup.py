"""The local cluster's metrics-server wiring (hack/cluster.py), without a cluster.

- Its RBAC and APIService are metrics-server's own manifests (manifests/base of the version
  hack/versions.env pins, read from the Go module cache that hack/build-binaries.sh fills), with
  the roles bound to the user of its client certificate instead of a ServiceAccount, and the
  cluster's CA instead of `insecureSkipTLSVerify`: a role upstream changes in a new version shows
  up here as a difference.
- The APIService reaches the process: the aggregation layer picks the EndpointSlice port whose
  name is the Service port's, and dials the address metrics-server listens on.
- Every flag hack/cluster.py gives the API server and metrics-server is one the built binaries
  accept (their `--help`), so a flag renamed in a new version fails here, not at `up`.
The cluster test of the whole path is tests/e2e/test_resource_metrics.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]


def upstream(name: str) -> list[dict[str, Any]]:
    versions = dict(line.split("=", 1) for line in (REPO / "hack/versions.env").read_text().splitlines() if "=" in line)
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go/pkg/mod")
    path = cache / f"sigs.k8s.io/metrics-server@{versions['METRICS_SERVER_VERSION'].strip()}/manifests/base/{name}"
    if not path.exists():
        missing(f"metrics-server's manifests ({path})", "hack/build-binaries.sh metrics-server downloads its module")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def ours(cluster: ModuleType) -> dict[tuple[str, str], dict[str, Any]]:
    items = yaml.safe_load(cluster.metrics_server_manifest())["items"]
    return {(item["kind"], item["metadata"]["name"]): item for item in items}


def test_the_roles_are_metrics_servers_own_bound_to_its_certificate_user(cluster):
    mine = ours(cluster)
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": cluster.METRICS_SERVER_USER}
    kinds = set()
    for doc in upstream("rbac.yaml"):
        key = (doc["kind"], doc["metadata"]["name"])
        kinds.add(doc["kind"])
        if doc["kind"] == "ServiceAccount":  # a host process has a client certificate instead
            assert key not in mine
            continue
        assert key in mine, f"{key} of metrics-server's manifests is not applied"
        if doc["kind"] in ("ClusterRole", "Role"):
            assert mine[key]["rules"] == doc["rules"]
            assert mine[key]["metadata"].get("labels") == doc["metadata"].get("labels")
        else:
            assert mine[key]["roleRef"] == doc["roleRef"]
            assert mine[key]["metadata"].get("namespace") == doc["metadata"].get("namespace")
            assert [s["kind"] for s in doc["subjects"]] == ["ServiceAccount"]
            assert mine[key]["subjects"] == [user]
    assert kinds >= {"ClusterRole", "ClusterRoleBinding", "RoleBinding", "ServiceAccount"}
    # The user is the one metrics-server's client certificate names.
    assert cluster.CLIENTS["metrics-server"] == f"/CN={cluster.METRICS_SERVER_USER}"


def test_the_apiservice_is_metrics_servers_own_verified_with_the_cluster_ca(cluster):
    (theirs,) = upstream("apiservice.yaml")
    mine = ours(cluster)[("APIService", theirs["metadata"]["name"])]
    assert theirs["metadata"]["name"] == cluster.METRICS_APISERVICE
    expected = {k: v for k, v in theirs["spec"].items() if k != "insecureSkipTLSVerify"}
    assert {k: v for k, v in mine["spec"].items() if k != "caBundle"} == {
        **expected,
        "service": {**expected["service"], "port": 443},
    }
    assert "insecureSkipTLSVerify" not in mine["spec"]
    assert mine["spec"]["caBundle"]  # the cluster's CA, which signs metrics-server's serving certificate


def test_the_apiservice_routes_to_the_address_metrics_server_listens_on(cluster):
    mine = ours(cluster)
    service = mine[("Service", "metrics-server")]
    apiservice = mine[("APIService", cluster.METRICS_APISERVICE)]["spec"]["service"]
    assert (apiservice["namespace"], apiservice["name"]) == (service["metadata"]["namespace"], "metrics-server")
    assert "selector" not in service["spec"]  # the EndpointSlice below is the only one
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == apiservice["port"]]
    (endpoints,) = [v for (kind, _), v in mine.items() if kind == "EndpointSlice"]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "metrics-server"
    assert endpoints["metadata"]["namespace"] == "kube-system"
    # kube-aggregator's endpoint routing takes the slice port named like the Service port.
    (slice_port,) = [p for p in endpoints["ports"] if p["name"] == port["name"]]
    argv = {c.name: c.argv for c in cluster.components()}["metrics-server"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert [e["addresses"] for e in endpoints["endpoints"]] == [[flags["bind-address"]]]
    assert slice_port["port"] == int(flags["secure-port"])


@pytest.mark.parametrize("component", ["kube-apiserver", "metrics-server"])
def test_every_flag_given_is_one_the_binary_accepts(cluster, component):
    argv = {c.name: c.argv for c in cluster.components()}[component]
    binary = Path(argv[0])
    if not binary.exists():
        missing(f"{component} ({binary})", "run hack/build-binaries.sh")
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, check=False)
    accepted = set(re.findall(r"^\s+(?:-\w, )?--([\w.-]+)", helptext.stdout + helptext.stderr, re.MULTILINE))
    given = {a.removeprefix("--").split("=", 1)[0] for a in argv[1:]}
    assert given - accepted == set()
    if component == "kube-apiserver":
        assert {"proxy-client-cert-file", "requestheader-client-ca-file", "enable-aggregator-routing"} <= given
