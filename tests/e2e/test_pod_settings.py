"""spec.podSettings against the real API server and controllers: a ServiceAccount that does not exist
is named on the object's status with what to do (the API server refuses the pod, so no pod exists:
the Job controller's FailedCreate Event and the Deployment's ReplicaFailure condition say why), and an
account the admin has not allowed is refused before anything is created.

No pod ever runs here, so the tests need no real node (marker `cluster` only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import OperatorProcess, kubectl, wait_until
from tests.support.objects import DIGEST, dataset, model_deployment

MISSING = "no-such-account"


def ready(custom, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return next((x for x in (obj.get("status") or {}).get("conditions", []) if x["type"] == c.READY), None)


def names_the_account(custom, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    """The Ready condition once it is PodPending with the API server's refusal in it."""
    cond = ready(custom, namespace, plural, name)
    if cond and cond["reason"] == c.POD_PENDING and f'serviceaccount "{MISSING}" not found' in cond["message"]:
        return dict(cond)
    return None


def with_account(builder: Any, account: str) -> dict[str, Any]:
    return builder.set("spec.podSettings", {"serviceAccountName": account}).obj()


def test_a_missing_service_account_is_named_with_what_to_do(operator, custom, namespace):
    operator.stop()
    allowing = OperatorProcess(operator.kubeconfig, MODELOPS_WORKLOAD_SERVICE_ACCOUNTS="*")
    try:
        allowing.start()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "datasets", with_account(dataset("lonely"), MISSING)
        )
        md = model_deployment("lonely").drop("spec.model.trainingRunRef")
        md.set("spec.model", {"uri": "s3://models/digits.onnx", "digest": DIGEST})
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", with_account(md, MISSING))
        for plural in ("datasets", "modeldeployments"):
            cond = wait_until(
                f"{plural}/lonely to name the missing ServiceAccount",
                lambda p=plural: names_the_account(custom, namespace, p, "lonely"),
                timeout=120,
            )
            assert cond["status"] == "False", cond
            assert "no pod could be created" in cond["message"], cond
            assert "create that ServiceAccount in this namespace" in cond["message"], cond
        # The Job exists and asks for the account; its controller keeps retrying (no pod at all).
        jobs = json.loads(
            kubectl("-n", namespace, "get", "jobs", "-l", "modelops.dev/dataset=lonely", "-o", "json").stdout
        )
        (job,) = jobs["items"]
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == MISSING
        pods = json.loads(kubectl("-n", namespace, "get", "pods", "-o", "json").stdout)["items"]
        assert pods == []
    finally:
        allowing.stop()
        operator.start()


def test_an_account_the_admin_did_not_allow_is_refused_and_nothing_is_created(operator, custom, namespace):
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "datasets", with_account(dataset("nope"), "admin")
    )

    def refused() -> dict[str, Any] | None:
        cond = ready(custom, namespace, "datasets", "nope")
        return cond if cond and cond["reason"] == c.POD_SETTINGS_NOT_ALLOWED else None

    cond = wait_until("datasets/nope to be refused", refused, timeout=60)
    assert "spec.podSettings.serviceAccountName: admin is not one the operator's admin allows" in cond["message"]
    jobs = json.loads(kubectl("-n", namespace, "get", "jobs", "-o", "json").stdout)["items"]
    assert jobs == []


pytestmark = pytest.mark.cluster
