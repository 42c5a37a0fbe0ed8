"""`trafficRouting.httpRoute` against the real API server with the Gateway API's standard CRDs: the
operator writes its rules into the user's HTTPRoute beside the user's own, says so when no Gateway
accepted the route, and is Ready only once a Gateway reported `Accepted` on the route's latest
generation. The routes here name a Gateway `gw` that does not exist, so no controller reports on
them, and the test plays the Gateway controller by writing the route's status, as a controller
would; tests/e2e/test_gateway_e2e.py goes through the local cluster's real Gateway (Traefik)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ARTIFACTS, ON_LOCAL_NODE, REPO, kubectl, status, wait_until
from tests.support.serving import export_model
from tests.support.workloads import artifacts_on_host

pytestmark = pytest.mark.localnode

GW = ("gateway.networking.k8s.io", "v1", "httproutes")
#: The user's own rule: it must stay as it is, after the operator's.
DOCS_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
    "backendRefs": [{"group": "", "kind": "Service", "name": "docs", "port": 80, "weight": 1}],
}


@pytest.fixture(scope="module")
def gateway_api_crds(cluster: Path) -> None:
    """The Gateway API's standard CRDs, as hack/cluster.py installs them (again here, for a cluster
    started before it did: a server-side apply of the same files changes nothing)."""
    wrapper = REPO / "hack" / "gomod" / "gateway-api"
    subprocess.run(["go", "mod", "download", "sigs.k8s.io/gateway-api"], cwd=wrapper, check=True)
    moddir = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api"],
        cwd=wrapper, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", f"{moddir}/config/crd/standard")
    kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s")


def route(name: str, owner: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "annotations": {"modelops.dev/modeldeployment": owner}},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [DOCS_RULE]},
    }


def accept(custom: Any, namespace: str, name: str, generation: int) -> None:
    """Report as a Gateway controller would: `Accepted` and `ResolvedRefs` at `generation`."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {
            "type": t,
            "status": "True",
            "reason": t,
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
        for t in ("Accepted", "ResolvedRefs")
    ]
    parent = {"parentRef": {"name": "gw"}, "controllerName": "example.com/modelops-test", "conditions": conditions}
    custom.patch_namespaced_custom_object_status(*GW[:2], namespace, GW[2], name, {"status": {"parents": [parent]}})


def get_route(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(*GW[:2], namespace, GW[2], name))


def ready(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    st = status(custom, namespace, "modeldeployments", name)
    return next((x for x in st.get("conditions", []) if x["type"] == c.READY), {}) | {"phase": st.get("phase")}


def model_deployment(name: str, uri: str, digest: str, route_name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri, "digest": digest},
            "server": {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "rollout": {"trafficRouting": {"httpRoute": route_name, "headerRoute": {"name": "x-canary", "value": "1"}}},
        },
    }


@pytest.mark.slow
def test_the_operator_owns_only_its_rules_and_is_ready_only_through_an_accepted_route(
    gateway_api_crds, operator, custom, namespace
):
    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    uri = f"file://{ARTIFACTS}/{Path(model.path).relative_to(store)}"

    # A route no Gateway ever reports on: RouteNotAccepted, and a serving deployment is Degraded.
    custom.create_namespaced_custom_object(*GW[:2], namespace, GW[2], route("lonely", "lonely"))
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", model_deployment("lonely", uri, model.digest, "lonely")
    )
    # A route its Gateway accepts: the status is written ahead for the generation the operator's
    # one write will make (created at 1; the rules written once: 2).
    custom.create_namespaced_custom_object(*GW[:2], namespace, GW[2], route("digits", "digits"))
    accept(custom, namespace, "digits", 2)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", model_deployment("digits", uri, model.digest, "digits")
    )

    cond = wait_until(
        "RouteNotAccepted",
        lambda: (r := ready(custom, namespace, "lonely")).get("reason") == c.ROUTE_NOT_ACCEPTED and r,
        timeout=180,
    )
    assert cond["status"] == "False" and "no Gateway reported on HTTPRoute" in cond["message"], cond
    wait_until("lonely Degraded", lambda: ready(custom, namespace, "lonely")["phase"] == "Degraded", timeout=180)

    wait_until("digits Healthy", lambda: ready(custom, namespace, "digits")["phase"] == "Healthy", timeout=180)
    st = status(custom, namespace, "modeldeployments", "digits")
    assert st["canaryWeight"] == 0
    for name in ("lonely", "digits"):
        rules = get_route(custom, namespace, name)["spec"]["rules"]
        # The operator's weighted rule first (no header rule: no canary serves), the user's after it.
        assert len(rules) == 2, rules
        assert [(b["name"], b["weight"]) for b in rules[0]["backendRefs"]] == [
            (f"{name}-stable", 100),
            (f"{name}-canary", 0),
        ]
        assert rules[1] == DOCS_RULE
    assert get_route(custom, namespace, "digits")["metadata"]["generation"] == 2  # written once

    # The user adds a rule; a change of the spec (the HPA's bound) reconciles: the rule stays, and
    # the route's new generation is not reported on yet.
    mine = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
        "backendRefs": [{"group": "", "kind": "Service", "name": "admin", "port": 80, "weight": 1}],
    }
    custom.patch_namespaced_custom_object(
        *GW[:2],
        namespace,
        GW[2],
        "digits",
        {"spec": {"rules": [*get_route(custom, namespace, "digits")["spec"]["rules"], mine]}},
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", "digits", {"spec": {"autoscaling": {"maxReplicas": 3}}}
    )
    wait_until("RoutePending", lambda: ready(custom, namespace, "digits").get("reason") == c.ROUTE_PENDING, timeout=60)
    after = get_route(custom, namespace, "digits")
    assert after["spec"]["rules"][1:] == [DOCS_RULE, mine], json.dumps(after["spec"]["rules"])
    accept(custom, namespace, "digits", int(after["metadata"]["generation"]))
    wait_until("Healthy again", lambda: ready(custom, namespace, "digits")["phase"] == "Healthy", timeout=60)
