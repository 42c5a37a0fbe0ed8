"""A server pod the kubelet evicts is named on the ModelDeployment's status, in the kubelet's words
with what to do, and the status recovers once the cause is gone.

The real node's kubelet evicts for real: the server copies its model into /tmp (an emptyDir), and
a pod whose `ephemeral-storage` limit is smaller than what it keeps on the node's disk is evicted
at the kubelet's next check (every 10 s). Its ReplicaSet makes another, which meets the same end,
so the Deployment is never available. Before, the status said only that the rollout waited."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.names import MODEL_DEPLOYMENT_LABEL as MD_LABEL
from tests.support.cluster import wait_until
from tests.support.serving import export_model
from tests.support.workloads import artifacts_on_host, served_model

pytestmark = pytest.mark.localnode
REQUESTS = {"cpu": "100m", "memory": "256Mi"}


def ready(custom: Any, namespace: str, name: str) -> dict[str, Any] | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name)
    return next((x for x in (obj.get("status") or {}).get("conditions", []) if x["type"] == c.READY), None)


def evicted_pods(api: Any, namespace: str, name: str) -> list[str]:
    """The names of the ModelDeployment's pods the kubelet evicted, read from the API server."""
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{MD_LABEL}={name}")
    return [p.metadata.name for p in pods.items if p.status.phase == "Failed" and p.status.reason == "Evicted"]


def test_a_server_pod_the_kubelet_evicts_is_named_and_the_status_recovers(operator, api, custom, namespace):
    store = artifacts_on_host(namespace)
    model = export_model(store / "models", seed=3, name="digits")
    server = {"resources": {"requests": REQUESTS, "limits": {"ephemeral-storage": "1Ki"}}}
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", served_model("cramped", store, model, server=server)
    )

    def names_the_eviction() -> dict[str, Any] | None:
        cond = ready(custom, namespace, "cramped")
        return dict(cond) if cond and "was evicted by its node" in cond["message"] else None

    cond = wait_until("the status to name the eviction", names_the_eviction, timeout=180)
    assert cond["status"] == "False" and cond["reason"] == c.POD_PENDING, cond
    assert "Pod ephemeral local storage usage exceeds the total limit of containers 1Ki" in cond["message"], cond
    assert "raise spec.resources.limits.ephemeral-storage" in cond["message"], cond
    evicted = evicted_pods(api, namespace, "cramped")
    assert any(f"pod {pod}" in cond["message"] for pod in evicted), (evicted, cond)

    # The limit goes: a new ReplicaSet's pods start and stay, and Ready follows them, although the
    # evicted pods of the old one are still there and younger than the window.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", "cramped", {"spec": {"server": {"resources": {"limits": None}}}}
    )

    def serving() -> dict[str, Any] | None:
        now = ready(custom, namespace, "cramped")
        return dict(now) if now and now["status"] == "True" else None

    recovered = wait_until("Ready after the limit was lifted", serving, timeout=180)
    assert "evicted" not in recovered["message"], recovered
    assert evicted_pods(api, namespace, "cramped"), "the evicted pods are gone, so the recovery proved nothing"
