"""The kube layer's reading of the API server's refusals, against the real API server, as the
chart's ServiceAccount: a 403 is the operator's RBAC only when a permission is missing. A 403 for a
namespace being deleted (`NamespaceTerminating`) once reached status and logs as "forbidden by the
operator's RBAC", sending users to fix RBAC that was fine."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from modelops_operator import kube
from modelops_operator.api.kinds import DATASET

HOLD = "modelops.dev/test-hold"


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


def test_a_rotated_token_is_read_again_after_a_401(
    operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A kubeconfig user's `tokenFile` (as a projected ServiceAccount token is rotated): a call the
    API server refuses with 401 reads the credentials again and is made once more."""
    config = yaml.safe_load(operator_kubeconfig.read_text())
    good = config["users"][0]["user"].pop("token")
    token_file = tmp_path / "token"
    config["users"][0]["user"]["tokenFile"] = str(token_file)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    token_file.write_text("not-a-token")
    kube.login.cache_clear()
    try:
        with pytest.raises(kube.Unavailable, match="401"):
            kube.get_object(DATASET, "default", "absent")
        client = kube.login()  # logged in with the bad token, kept
        token_file.write_text(good)
        assert kube.get_object(DATASET, "default", "absent") is None  # allowed, and not there
        assert kube.login() is not client
    finally:
        kube.login.cache_clear()
