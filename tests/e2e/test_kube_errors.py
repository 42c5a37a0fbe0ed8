"""The kube layer's reading of the API server's refusals, against the real API server, as the
chart's ServiceAccount: a 403 is the operator's RBAC only when a permission is missing. A 403 for a
namespace being deleted (`NamespaceTerminating`) once reached status and logs as "forbidden by the
operator's RBAC", sending users to fix RBAC that was fine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from modelops_operator import kube

HOLD = "modelops.dev/test-hold"


@pytest.fixture
def as_the_chart(operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kube layer logged in as the chart's ServiceAccount, as the operator runs."""
    # The client read $KUBECONFIG when it was imported: set the location it kept.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(operator_kubeconfig))
    kube.login.cache_clear()
    yield
    kube.login.cache_clear()


def _deployment(namespace: str) -> dict[str, object]:
    labels = {"app": "held"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "held", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]},
            },
        },
    }


def test_a_namespace_being_deleted_is_not_reported_as_missing_rbac(
    api: kubernetes.client.ApiClient, as_the_chart: None
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    name = f"terminating-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # A ConfigMap with a finalizer keeps the namespace Terminating until the test lets it go.
    core.create_namespaced_config_map(name, {"metadata": {"name": "hold", "finalizers": [HOLD]}})
    try:
        # A real RBAC refusal first: the chart's ServiceAccount may not read Secrets by default.
        with pytest.raises(kube.Forbidden, match="forbidden by the operator's RBAC"):
            kube.get_secret(name, "anything")
        # The same account may create Deployments: in a live namespace this one is created.
        kube.create(_deployment(name))

        core.delete_namespace(name)
        for _ in range(100):
            if core.read_namespace(name).status.phase == "Terminating":
                break
            time.sleep(0.1)
        second = _deployment(name)
        second["metadata"] = {"name": "held-2", "namespace": name}
        with pytest.raises(kube.Unavailable) as refused:
            kube.create(second)
        assert not isinstance(refused.value, kube.Forbidden), str(refused.value)
        assert "its namespace is being deleted" in str(refused.value)
    finally:
        core.patch_namespaced_config_map("hold", name, {"metadata": {"finalizers": None}})
