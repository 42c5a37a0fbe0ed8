"""The local cluster's custom metrics: the adapter (hack/gomod/custom-metrics-adapter, a host
process registered as `v1beta2.custom.metrics.k8s.io` and `v1beta1`) answers a pod's metric from
Prometheus, which scrapes the inference servers; so a ModelDeployment's HorizontalPodAutoscaler on
`autoscaling.customMetric` (in-flight requests per pod) scales the stable Deployment up under a
real load and back down after it.

The servers are held to a CPU limit equal to their request, and the CPU target is 100 %: CPU
utilisation can then never exceed the target, so every rescale here is the custom metric's.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import event_messages, get, kubectl, status, wait_until
from tests.support.serving import export_model
from tests.support.workloads import Load, artifacts_on_host, served_model

pytestmark = pytest.mark.localnode

METRIC = "modelops_inflight_requests"
TARGET = 2  # in-flight requests per pod
SCALE_DOWN_WINDOW = 30  # seconds (the HPA's default is 300)
APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")


def quantity(value: str) -> float:
    """A metric value as the API writes it (`0`, `2500m`, `3`, `1500u`)."""
    for suffix, scale in (("n", 1e-9), ("u", 1e-6), ("m", 1e-3), ("k", 1e3)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def raw(path: str) -> tuple[str, dict[str, Any]]:
    """GET a path of the API as the admin: ("OK", body), or the error's reason as kubectl reports
    it (`Error from server (NotFound): ...`) and its text."""
    res = kubectl("get", "--raw", path, check=False)
    if res.returncode == 0:
        return "OK", json.loads(res.stdout)
    reason = re.search(r"Error from server \((\w+)\)", res.stderr)
    return (reason.group(1) if reason else "?"), {"stderr": res.stderr}


def pod_values(namespace: str, selector: str, metric: str = METRIC, version: str = "v1beta2") -> dict[str, float]:
    """Each selected pod's value of the metric from the custom metrics API (only pods that have one)."""
    code, body = raw(
        f"/apis/custom.metrics.k8s.io/{version}/namespaces/{namespace}/pods/*/{metric}?labelSelector={selector}"
    )
    assert code == "OK", body
    return {item["describedObject"]["name"]: quantity(item["value"]) for item in body["items"]}


def server_pods(namespace: str, name: str) -> set[str]:
    out = kubectl(
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        f"modelops.dev/modeldeployment={name},modelops.dev/track=stable",
        "-o",
        "json",
    ).stdout
    return {p["metadata"]["name"] for p in json.loads(out)["items"] if p["status"].get("phase") == "Running"}


def pods_metric(hpa: dict[str, Any]) -> float | None:
    """The HPA's current average of the custom metric, when it has read one."""
    for m in hpa.get("status", {}).get("currentMetrics") or []:
        if m["type"] == "Pods" and m["pods"]["metric"]["name"] == METRIC:
            return quantity(m["pods"]["current"]["averageValue"])
    return None


def test_the_custom_metrics_api_is_served_through_the_aggregation_layer(cluster):
    for name in APISERVICES:
        service = json.loads(kubectl("get", "apiservice", name, "-o", "json").stdout)
        available = next(x for x in service["status"]["conditions"] if x["type"] == "Available")
        assert available["status"] == "True", available
        assert not service["spec"].get("insecureSkipTLSVerify")  # the cluster's CA checks the adapter
        assert service["spec"]["service"]["namespace"] == "kube-system"
    for version in ("v1beta2", "v1beta1"):
        code, body = raw(f"/apis/custom.metrics.k8s.io/{version}")
        assert code == "OK" and body["groupVersion"] == f"custom.metrics.k8s.io/{version}", body
    # A name that is not a Prometheus metric name is refused, not queried.
    code, body = raw("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/not-a-metric")
    assert code == "BadRequest", body


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_an_hpa_on_in_flight_requests_scales_up_under_load_and_back_down(operator, custom, namespace):
    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    body = served_model(
        "busy",
        store,
        model,
        server={"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "200m"}}},
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCpuUtilization": 100,
            "customMetric": {"name": METRIC, "targetAverageValue": TARGET},
            "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW,
        },
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
    wait_until(
        "Healthy", lambda: status(custom, namespace, "modeldeployments", "busy").get("phase") == "Healthy", timeout=180
    )
    hpa = get(namespace, "hpa", "busy")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == SCALE_DOWN_WINDOW, hpa["spec"]
    selector = "modelops.dev/modeldeployment%3Dbusy,modelops.dev/track%3Dstable"

    # Every server pod has a value (Prometheus scrapes every 5 s), by selector and by name, in both
    # versions; a metric without series is NotFound by name and absent from a list.
    pods = server_pods(namespace, "busy")
    assert len(pods) == 1
    values = wait_until(
        "a value for each server pod", lambda: (v := pod_values(namespace, selector)).keys() >= pods and v
    )
    assert all(v >= 0 for v in values.values()), values
    assert pod_values(namespace, selector, version="v1beta1").keys() >= pods
    (pod,) = pods
    code, one = raw(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/{pod}/{METRIC}")
    assert code == "OK" and [i["describedObject"]["name"] for i in one["items"]] == [pod], one
    assert pod_values(namespace, selector, metric="modelops_no_such_metric") == {}
    code, missing = raw(
        f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/{pod}/modelops_no_such_metric"
    )
    assert code == "NotFound", missing

    # The HPA reads it.
    def reading() -> dict[str, Any] | None:
        h = get(namespace, "hpa", "busy")
        active = next((x for x in h.get("status", {}).get("conditions", []) if x["type"] == "ScalingActive"), None)
        return h if active and active["status"] == "True" and pods_metric(h) is not None else None

    hpa = wait_until("the HPA to read the custom metric", reading, timeout=120, interval=2)
    active = next(x for x in hpa["status"]["conditions"] if x["type"] == "ScalingActive")
    assert active["reason"] == "ValidMetricFound", active
    autoscaling = wait_until(
        "the ModelDeployment's Autoscaling condition active",
        lambda: next(
            (
                x
                for x in status(custom, namespace, "modeldeployments", "busy").get("conditions") or []
                if x["type"] == c.AUTOSCALING and x["reason"] == c.AUTOSCALER_ACTIVE
            ),
            None,
        ),
        timeout=60,
    )
    assert autoscaling["status"] == "True", autoscaling

    # Under load (a dozen clients, no pause: more requests in flight than the target at one pod),
    # the custom metric rises above the target and the HPA scales the stable Deployment up.
    with Load(namespace, "busy", clients=12, pause=0) as load:
        wait_until(
            "the stable Deployment scaled above 1",
            lambda: get(namespace, "deployment", "busy-stable")["spec"]["replicas"] > 1,
            timeout=300,
            interval=2,
        )
        # 12 clients over at most 3 pods: still above the target of 2 after the scale-up.
        wait_until(
            "the HPA to report the average above the target",
            lambda: (pods_metric(get(namespace, "hpa", "busy")) or 0.0) > TARGET,
            timeout=60,
            interval=2,
        )
        up = event_messages(namespace, "busy", "SuccessfulRescale", kind="HorizontalPodAutoscaler")
        assert any(f"pods metric {METRIC} above target" in m for m in up), up
        # ... and the ModelDeployment says so, with the metric against its target.
        scaled_up = wait_until("a ScaledUp Event", lambda: event_messages(namespace, "busy", "ScaledUp"), timeout=60)
        assert f"{METRIC}: " in scaled_up[0] and f"per pod (target {TARGET})" in scaled_up[0], scaled_up
        # The new pods serve and get values of their own.
        wait_until("two server pods with values", lambda: len(pod_values(namespace, selector)) >= 2, timeout=180)
        answered = sum(1 for _, code, _ in load.results if code == 200)
        assert answered > 50, len(load.results)

    # After the load, the metric falls below the target and, after the scale-down window, the
    # HPA returns the Deployment to its minimum.
    wait_until(
        "the stable Deployment back to 1",
        lambda: get(namespace, "deployment", "busy-stable")["spec"]["replicas"] == 1,
        timeout=SCALE_DOWN_WINDOW + 240,
        interval=3,
    )
    down = event_messages(namespace, "busy", "SuccessfulRescale", kind="HorizontalPodAutoscaler")
    assert any("New size: 1" in m for m in down), down
    assert (pods_metric(get(namespace, "hpa", "busy")) or 0.0) < TARGET
