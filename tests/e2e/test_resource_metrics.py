"""The local cluster's resource metrics: metrics-server (a host process registered with the API
server's aggregation layer as `v1beta1.metrics.k8s.io`) scrapes the real node's kubelet, so
`kubectl top` shows a pod's usage and a CPU HorizontalPodAutoscaler of a Deployment on `local-0`
reads its utilisation and acts on it. The busy pods are held to a CPU limit of 200m, so that they
never take more than a fifth of one of the machine's cores each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.cluster import apply, get, kubectl, wait_until
from tests.support.workloads import pod_template

pytestmark = pytest.mark.localnode

BUSY = ["python", "-c", "while True: pass"]
IDLE = ["python", "-c", "import time; time.sleep(3600)"]
CPU = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}


def deployment(name: str, command: list[str], replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, command, restart="Always", resources=CPU),
        },
    }


def millicores(quantity: str) -> float:
    """A CPU quantity as the metrics API and `kubectl top` write it (`12345678n`, `250u`, `200m`, `1`)."""
    for suffix, scale in (("n", 1e-6), ("u", 1e-3), ("m", 1.0)):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * scale
    return float(quantity) * 1000


def pod_metrics(namespace: str) -> dict[str, float]:
    """Each pod's CPU usage in millicores (the sum of its containers), from the metrics API."""
    res = kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", check=False)
    if res.returncode != 0:
        return {}
    return {
        item["metadata"]["name"]: sum(millicores(c["usage"]["cpu"]) for c in item["containers"])
        for item in json.loads(res.stdout)["items"]
    }


def top_pods(namespace: str) -> dict[str, float]:
    """`kubectl top pod`: pod name to CPU in millicores (empty while metrics-server has no figures yet)."""
    res = kubectl("-n", namespace, "top", "pod", "--no-headers", check=False)
    if res.returncode != 0:
        return {}
    return {line.split()[0]: millicores(line.split()[1]) for line in res.stdout.splitlines() if line.strip()}


def pod_of(namespace: str, app: str) -> str:
    out = kubectl("-n", namespace, "get", "pods", "-l", f"app={app}", "-o", "jsonpath={.items[*].metadata.name}")
    return str(out.stdout.split()[0])


def test_the_metrics_api_is_served_through_the_aggregation_layer(cluster):
    service = json.loads(kubectl("get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "json").stdout)
    available = next(c for c in service["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "True", available
    assert service["spec"]["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert not service["spec"].get("insecureSkipTLSVerify")  # the cluster's CA checks metrics-server

    # Only the real node is scraped: kwok's simulated nodes have no kubelet to ask.
    nodes = wait_until(
        "the node's usage",
        lambda: json.loads(kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes").stdout)["items"],
        timeout=60,
    )
    assert [n["metadata"]["name"] for n in nodes] == ["local-0"]
    assert millicores(nodes[0]["usage"]["cpu"]) > 0
    top = kubectl("top", "node", "local-0", "--no-headers").stdout.split()
    assert top[0] == "local-0" and top[1].endswith("m")


def test_kubectl_top_shows_a_busy_pod_above_an_idle_one(cluster, namespace):
    apply(namespace, deployment("busy", BUSY), deployment("idle", IDLE))
    for name in ("busy", "idle"):
        wait_until(
            f"{name} available",
            lambda name=name: get(namespace, "deployment", name)["status"].get("availableReplicas") == 1,
            timeout=90,
        )
    busy, idle = pod_of(namespace, "busy"), pod_of(namespace, "idle")

    # A pod's first figure needs two scrapes of its counters (15 s apart).
    api = wait_until("both pods in the metrics API", lambda: (m := pod_metrics(namespace)).keys() >= {busy, idle} and m)
    top = wait_until("both pods in kubectl top", lambda: (t := top_pods(namespace)).keys() >= {busy, idle} and t)
    for usage in (api, top):
        # The busy loop runs into its 200m limit; the sleeper uses next to nothing. Under contention
        # on the machine the loop may get less than its limit, but never as little as a sleeper.
        assert usage[busy] >= 50, usage
        assert usage[idle] < usage[busy] / 4, usage


def test_a_cpu_hpa_of_a_deployment_on_the_node_reads_its_utilisation_and_scales_up(cluster, namespace):
    apply(
        namespace,
        deployment("burn", BUSY),
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "burn"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                "minReplicas": 1,
                "maxReplicas": 2,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                    }
                ],
            },
        },
    )

    def active() -> dict[str, Any] | None:
        status = get(namespace, "hpa", "burn").get("status", {})
        scaling = next((c for c in status.get("conditions", []) if c["type"] == "ScalingActive"), None)
        return status if scaling and scaling["status"] == "True" and status.get("currentMetrics") else None

    status = wait_until("the HPA to read the pods' CPU", active, timeout=180, interval=2)
    scaling = next(c for c in status["conditions"] if c["type"] == "ScalingActive")
    assert scaling["reason"] == "ValidMetricFound", scaling
    current = status["currentMetrics"][0]["resource"]
    assert current["name"] == "cpu"
    # The loop uses at least half of its 100m request (see the test above): above the 50 % target.
    assert current["current"]["averageUtilization"] >= 50, current

    # ... so the HPA asks for the second replica, and the Deployment gets it.
    wait_until("the HPA to scale to 2", lambda: get(namespace, "hpa", "burn")["status"].get("desiredReplicas") == 2)
    wait_until("2 replicas", lambda: get(namespace, "deployment", "burn")["spec"]["replicas"] == 2)
    events = kubectl("-n", namespace, "get", "events", "--field-selector", "involvedObject.name=burn", "-o", "json")
    reasons = {
        e["reason"]
        for e in json.loads(events.stdout)["items"]
        if e["involvedObject"]["kind"] == "HorizontalPodAutoscaler"
    }
    assert "SuccessfulRescale" in reasons, reasons
    kubectl("-n", namespace, "delete", "hpa,deployment", "burn", "--wait=true")
