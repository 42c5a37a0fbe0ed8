"""A ModelDeployment's autoscaler scales its stable track under real load on the local node and back
after it: metrics-server reads the server pods' CPU from the kubelet, Kubernetes' HPA controller
scales the Deployment, and the ModelDeployment's status and Events say so (the operator is woken by
the autoscaler's change; its resync is an hour in these tests)."""

from __future__ import annotations

import json

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import kubectl, status, wait_until
from tests.support.serving import export_model
from tests.support.workloads import Load, artifacts_on_host, served_model

pytestmark = pytest.mark.localnode


def events(namespace: str, name: str, reason: str) -> list[str]:
    out = kubectl(
        "-n", namespace, "get", "events", "-o", "json",
        "--field-selector", f"involvedObject.name={name},involvedObject.kind=ModelDeployment,reason={reason}",
    ).stdout  # fmt: skip
    return [e["message"] for e in json.loads(out)["items"]]


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
    down = wait_until("a ScaledDown Event", lambda: events(namespace, "digits", "ScaledDown"), timeout=60)
    assert "to 1 replicas" in down[-1]
    assert condition()["status"] == "True"
