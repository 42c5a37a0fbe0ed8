"""A ModelDeployment's autoscaler scales its stable track under real load on the local node and back
after it: metrics-server reads the server pods' CPU from the kubelet, Kubernetes' HPA controller
scales the Deployment, and the ModelDeployment's status and Events say so (the operator is woken by
the autoscaler's change; its resync is an hour in these tests)."""

from __future__ import annotations

import json

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import FIELD_MANAGER, GROUP, VERSION
from tests.support.cluster import event_messages as events
from tests.support.cluster import kubectl, status, wait_until
from tests.support.serving import export_model
from tests.support.workloads import Load, artifacts_on_host, served_model

pytestmark = pytest.mark.localnode


@pytest.mark.slow
def test_cpu_load_scales_the_stable_track_up_and_its_end_back_down(operator, custom, namespace):
    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    body = served_model(
        "digits",
        store,
        model,
        server={"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m"}}},
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCpuUtilization": 50,
            "scaleDownStabilizationSeconds": 15,
        },
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    def autoscaler() -> dict:
        return status(custom, namespace, "modeldeployments", "digits").get("autoscaler") or {}

    def condition() -> dict:
        conds = status(custom, namespace, "modeldeployments", "digits").get("conditions") or []
        return next((x for x in conds if x["type"] == c.AUTOSCALING), {})

    wait_until("Healthy", lambda: status(custom, namespace, "modeldeployments", "digits").get("phase") == "Healthy",
               timeout=180)  # fmt: skip
    # metrics-server has the pod's CPU within a resolution or two; the autoscaler then reads it.
    wait_until("the autoscaler reading CPU", lambda: condition().get("reason") == c.AUTOSCALER_ACTIVE, timeout=180)
    assert autoscaler()["desiredReplicas"] == 1

    with Load(namespace, "digits") as load:
        wait_until("traffic", lambda: len(load.results) > 20, timeout=60)
        scaled = wait_until("a scale-up", lambda: autoscaler().get("desiredReplicas", 0) >= 2 or None, timeout=240)
        assert scaled
        up = wait_until("a ScaledUp Event", lambda: events(namespace, "digits", "ScaledUp"), timeout=60)
        assert "the autoscaler set the stable track to" in up[0] and "% of request (target 50%)" in up[0]
        replicas = kubectl("-n", namespace, "get", "deployment", "digits-stable", "-o", "jsonpath={.spec.replicas}")
        assert int(replicas.stdout) >= 2
        wait_until(
            "the new pods serving",
            lambda: status(custom, namespace, "modeldeployments", "digits").get("readyReplicas", 0) >= 2,
            timeout=180,
        )
        answered = sum(1 for _, code, _ in load.results if code == 200)
    assert answered > 0 and sum(1 for _, code, _ in load.results if code not in (200, 503)) == 0

    # Load over: below the target for the 15 s window, the autoscaler goes back to the minimum.
    wait_until("a scale-down", lambda: autoscaler().get("desiredReplicas") == 1, timeout=300)
    # The scale-down may come in steps (3 to 2, then 2 to 1), each its own Event, and the status can
    # say 1 a moment before the last Event is posted: wait for the one that reaches the minimum.
    down = wait_until(
        "a ScaledDown Event to the minimum",
        lambda: [m for m in events(namespace, "digits", "ScaledDown") if "to 1 replicas" in m],
        timeout=60,
    )
    assert "% of request (target 50%)" in down[0]
    assert condition()["status"] == "True"


def test_the_stable_track_starts_at_the_minimum_and_never_falls_below_it(operator, custom, namespace):
    """The stable Deployment is created with the autoscaler's minimum and keeps it: were `replicas`
    left out of the operator's next apply while the operator alone owns the field, the API server
    would remove it and the Deployment would drop to its default of one pod until the autoscaler's
    next sync. A raised minimum is the autoscaler's to apply: it scales through the scale
    subresource, takes the field, and the operator leaves it alone from then on."""
    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    body = served_model("digits", store, model, autoscaling={"minReplicas": 2, "maxReplicas": 4})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    def md_status() -> dict:
        return status(custom, namespace, "modeldeployments", "digits")

    def stable() -> dict:
        got = kubectl("-n", namespace, "get", "deployment", "digits-stable", "-o", "json", "--show-managed-fields")
        return json.loads(got.stdout)

    def replicas_owners() -> set[tuple[str, str]]:
        return {
            (e["manager"], e.get("subresource", ""))
            for e in stable()["metadata"].get("managedFields") or []
            if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})
        }

    wait_until("Healthy", lambda: md_status().get("phase") == "Healthy", timeout=180)
    wait_until("two ready pods", lambda: md_status().get("readyReplicas") == 2, timeout=120)
    scaled = events(namespace, "digits-stable", "ScalingReplicaSet", kind="Deployment")
    assert scaled and not [m for m in scaled if "down" in m], scaled
    assert stable()["spec"]["replicas"] == 2
    assert replicas_owners() == {(FIELD_MANAGER, "")}

    patch = {"spec": {"autoscaling": {"minReplicas": 3, "maxReplicas": 4}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "digits", patch)
    wait_until("three ready pods", lambda: md_status().get("readyReplicas") == 3, timeout=180)
    owners = wait_until("the autoscaler owning replicas", lambda: replicas_owners() - {(FIELD_MANAGER, "")} or None)
    assert all(sub == "scale" for _, sub in owners), owners
    wait_until("the operator's apply without replicas", lambda: (FIELD_MANAGER, "") not in replicas_owners())
    assert stable()["spec"]["replicas"] == 3
    assert not [m for m in events(namespace, "digits-stable", "ScalingReplicaSet", kind="Deployment") if "down" in m]
