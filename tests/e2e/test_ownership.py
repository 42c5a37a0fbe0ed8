"""Objects of another team that happen to carry a child's name are never taken over: the operator
writes nothing to them, says NameConflict on the ModelDeployment, and deleting the ModelDeployment
leaves them alone (the security issue's defect 2, against the real API server)."""

from __future__ import annotations

import json
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ON_LOCAL_NODE, kubectl, wait_until

FOREIGN = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "api", "labels": {"team": "payments"}},
    "spec": {"selector": {"app": "payments-api"}, "ports": [{"name": "http", "port": 80, "targetPort": 9000}]},
}


def service(namespace: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "service", "api", "-o", "json", "-n", namespace).stdout))


def test_a_service_of_another_team_is_not_taken_over(operator, custom, namespace):
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(FOREIGN))
    before = service(namespace)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "api"},
        "spec": {
            "model": {"uri": "file:///var/lib/modelops/artifacts/m.onnx", "digest": "sha256:" + "a" * 64},
            "server": {"placement": ON_LOCAL_NODE},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    def conflict() -> dict[str, Any] | None:
        st = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "api").get("status")
        ready = next((x for x in (st or {}).get("conditions", []) if x["type"] == c.READY), None)
        return ready if ready and ready["reason"] == c.NAME_CONFLICT else None

    ready = wait_until("NameConflict", conflict, timeout=60)
    assert "Service" in str(ready["message"]) and "api" in str(ready["message"]), ready
    after = service(namespace)
    assert after["spec"]["selector"] == {"app": "payments-api"}
    assert after["metadata"].get("ownerReferences") is None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # Nothing else of the ModelDeployment was made either (no half-applied set of children).
    for kind in ("deployment/api-stable", "deployment/api-canary", "pdb/api", "hpa/api"):
        assert kubectl("-n", namespace, "get", kind, check=False).returncode != 0, kind

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "api")
    wait_until(
        "the ModelDeployment gone",
        lambda: kubectl("-n", namespace, "get", "modeldeployment", "api", check=False).returncode != 0,
        timeout=60,
    )
    assert service(namespace)["metadata"]["uid"] == before["metadata"]["uid"]
