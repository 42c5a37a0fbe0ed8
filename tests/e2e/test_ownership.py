"""Objects of another team that happen to carry a child's name are never taken over: the operator
writes nothing to them, says NameConflict on the ModelDeployment, and deleting the ModelDeployment
leaves them alone (the security issue's defect 2, against the real API server). The operator's own
children are applied again only when they no longer hold what it would apply."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import kubernetes
import pytest

from modelops_operator import controllers, kube
from modelops_operator.api import conditions as c
from modelops_operator.api.common import FIELD_MANAGER, GROUP, VERSION
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.api.names import APP_COMPONENT_LABEL, DEPENDENCY_CHANGED_ANNOTATION
from modelops_operator.controllers.common import RetryLater
from modelops_operator.reconcile import ownership
from modelops_operator.settings import OperatorSettings
from tests.support.cluster import ON_LOCAL_NODE, OperatorProcess, api_counts, kubectl, wait_until
from tests.support.workloads import local_dataset

FOREIGN = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "api", "labels": {"team": "payments"}},
    "spec": {"selector": {"app": "payments-api"}, "ports": [{"name": "http", "port": 80, "targetPort": 9000}]},
}


def service(namespace: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "service", "api", "-o", "json", "-n", namespace).stdout))


#: The children of a ModelDeployment "api" without canary, route or monitoring CRDs, as
#: `apiserver_request_total` names their resources.
CHILDREN = {
    "apps/deployments/": "deployment/api-stable",
    "/services/": "service/api",
    "policy/poddisruptionbudgets/": "pdb/api",
    "autoscaling/horizontalpodautoscalers/": "hpa/api",
}


def model_deployment() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "api"},
        "spec": {
            "model": {"uri": "file:///var/lib/modelops/artifacts/m.onnx", "digest": "sha256:" + "a" * 64},
            "server": {"placement": ON_LOCAL_NODE},
        },
    }


def test_a_service_of_another_team_is_not_taken_over(operator, custom, namespace):
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(FOREIGN))
    before = service(namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", model_deployment())

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


def test_children_are_applied_again_only_when_they_no_longer_hold_what_is_applied(
    operator: OperatorProcess, api: kubernetes.client.ApiClient, custom: Any, namespace: str
) -> None:
    """Every reconcile reads the children; one that holds the applied body's hash and all its fields
    (the API server's defaults added) is not applied again. A field changed by hand is put back."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", model_deployment())
    for child in CHILDREN.values():
        wait_until(child, lambda child=child: kubectl("-n", namespace, "get", child, check=False).returncode == 0)

    def reconciles() -> float:
        return operator.metric('modelops_reconciles_total{kind="ModelDeployment"')

    def applies() -> int:
        counts = api_counts(api)
        return sum(counts[(resource, "APPLY")] for resource in CHILDREN)

    def reconcile_now(times: int) -> None:
        """Have the operator reconcile the ModelDeployment `times` times (woken, as by a dependency)."""
        for _ in range(times):
            done = reconciles()
            patch = {"metadata": {"annotations": {DEPENDENCY_CHANGED_ANNOTATION: f"test@{done}"}}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "api", patch)
            wait_until("a reconcile", lambda done=done: reconciles() > done, timeout=30)

    reconcile_now(1)  # the children as created, read back at least once
    before = applies()
    reconcile_now(3)
    assert applies() == before, "an unchanged child was applied again"

    def label() -> str:
        out = kubectl("-n", namespace, "get", "deployment", "api-stable", "-o", "json").stdout
        return str(json.loads(out)["metadata"]["labels"][APP_COMPONENT_LABEL])

    component = label()
    kubectl("-n", namespace, "label", "--overwrite", "deployment", "api-stable", f"{APP_COMPONENT_LABEL}=edited")
    reconcile_now(1)
    assert wait_until("the label put back", lambda: label() == component, timeout=30)
    assert applies() > before


def test_a_child_deleted_by_hand_comes_back_at_the_next_resync(operator: OperatorProcess, custom: Any, namespace: str):
    """The operator watches none of the children it leaves alone: a PodDisruptionBudget deleted by
    hand is made again by the periodic resync, with nothing else happening to the ModelDeployment
    (the schedule reads the object and reconciles it; kopf's timers did this before)."""
    operator.stop()
    resyncing = OperatorProcess(operator.kubeconfig, MODELOPS_RESYNC_SECONDS="2")
    try:
        resyncing.start()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", model_deployment())
        wait_until("the PDB", lambda: kubectl("-n", namespace, "get", "pdb/api", check=False).returncode == 0)
        uid = json.loads(kubectl("-n", namespace, "get", "pdb/api", "-o", "json").stdout)["metadata"]["uid"]
        kubectl("-n", namespace, "delete", "pdb/api")

        def made_again() -> bool:
            got = kubectl("-n", namespace, "get", "pdb/api", "-o", "json", check=False)
            return got.returncode == 0 and json.loads(got.stdout)["metadata"]["uid"] != uid

        wait_until("the PDB made again", made_again, timeout=60)
    finally:
        resyncing.stop()
        operator.start()


@pytest.mark.parametrize("kind", [DATASET, MODEL_DEPLOYMENT], ids=lambda kind: kind.kind)
def test_an_object_deleted_while_it_was_reconciled_gets_nothing_written(
    as_the_chart: None, namespace: str, kind: Any
) -> None:
    """A reconcile works from the object as it read it, seconds before it writes. When the object
    was deleted in between, its children may be in the garbage collector's hands already: the
    reconcile must not create them again (the lifecycle fault test once saw a PodDisruptionBudget
    created twice that way), nor start a Dataset's Job. Here the body is one read just before its
    deletion: the API server has no object of its uid. The reconcile stops before its first write
    (the retry then finds the object gone), and the namespace stays empty."""
    body = model_deployment() if kind is MODEL_DEPLOYMENT else local_dataset("digits")
    body["metadata"] |= {"namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1}
    with pytest.raises(RetryLater, match="deleted while it was reconciled"):
        controllers.reconcile(kind, body, OperatorSettings(), logging.getLogger(__name__))
    made = kubectl("-n", namespace, "get", "deployments,services,pdb,hpa,jobs,pvc", "-o", "name").stdout.split()
    assert made == [], f"written for a deleted {kind.kind}: {made}"


def _held(namespace: str, **template_spec: Any) -> dict[str, Any]:
    """A Deployment of no replicas as the operator writes a child (its controller reference left
    out: nothing here reads it)."""
    labels = {"app": "held"}
    container = {"name": "c", "image": "registry.invalid/none:1", **template_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "held", "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def _limits(namespace: str) -> dict[str, Any]:
    out = kubectl("-n", namespace, "get", "deployment", "held", "-o", "json").stdout
    return dict(json.loads(out)["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {}))


def test_a_field_dropped_from_a_child_leaves_it_whoever_created_it(as_the_chart: None, namespace: str) -> None:
    """A field the operator stops setting leaves the child at the next apply: on one it created
    (by apply), and on one an earlier version created with a plain create, whose fields sat in an
    `Update` entry that no apply owns (a removed `ephemeral-storage` limit stayed for good)."""
    cramped = _held(namespace, resources={"limits": {"ephemeral-storage": "1Ki", "memory": "64Mi"}})
    roomy = _held(namespace, resources={"limits": {"memory": "64Mi"}})

    kube.create(cramped)
    kube.apply(roomy)
    assert _limits(namespace) == {"memory": "64Mi"}

    # As an earlier version created it: POST with the operator's field manager.
    kubectl("-n", namespace, "delete", "deployment", "held", "--wait")
    kubectl("-n", namespace, "create", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=json.dumps(cramped))
    kube.apply(roomy)
    assert _limits(namespace) == {"ephemeral-storage": "1Ki", "memory": "64Mi"}, "the API server kept it: the bug"

    observed = json.loads(
        kubectl("-n", namespace, "get", "deployment", "held", "-o", "json", "--show-managed-fields").stdout
    )
    first = ownership.upgrade(observed)
    assert first is not None
    kube.apply(roomy, first=first)
    assert _limits(namespace) == {"memory": "64Mi"}
    after = json.loads(
        kubectl("-n", namespace, "get", "deployment", "held", "-o", "json", "--show-managed-fields").stdout
    )
    assert ownership.upgrade(after) is None, after["metadata"]["managedFields"]
    managers = {(e["manager"], e["operation"]) for e in after["metadata"]["managedFields"]}
    assert (FIELD_MANAGER, "Apply") in managers and (FIELD_MANAGER, "Update") not in managers, managers
