"""ModelDeployments end to end on the local cluster: real server processes on the executing node,
real Prometheus scraping them, a load generator sending traffic through the Service's endpoints, a
good model promoted through every step and a bad one rolled back by analysis."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ARTIFACTS, ON_LOCAL_NODE, kubectl, status, wait_until
from tests.support.serving import export_model, poison_model
from tests.support.workloads import ANALYSIS, Load, artifacts_on_host, served_model

pytestmark = pytest.mark.localnode


def pod_ips_by_track(namespace: str, name: str) -> dict[str, str]:
    out = kubectl("-n", namespace, "get", "pods", "-l", f"modelops.dev/modeldeployment={name}", "-o", "json").stdout
    return {
        p["status"]["podIP"]: p["metadata"]["labels"]["modelops.dev/track"]
        for p in json.loads(out)["items"]
        if p.get("status", {}).get("podIP")
    }


@pytest.mark.slow
def test_a_good_model_is_promoted_and_a_bad_one_rolled_back_by_analysis(operator, custom, namespace, tmp_path):
    store = artifacts_on_host(namespace)
    good1 = export_model(store / "models" / "v1", seed=1, name="digits")
    good2 = export_model(store / "models" / "v2", seed=2, name="digits")
    bad_digest = poison_model(good2.path, store / "models" / "bad" / "model.onnx")

    def uri(path: Path) -> str:
        return f"file://{ARTIFACTS}/{path.relative_to(store)}"

    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"uri": uri(good1.path), "digest": good1.digest},
            "server": {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "rollout": {"steps": [{"setWeight": 50}, {"analysis": ANALYSIS}]},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
    wait_until(
        "Healthy",
        lambda: status(custom, namespace, "modeldeployments", "digits").get("phase") == "Healthy",
        timeout=180,
    )
    st = status(custom, namespace, "modeldeployments", "digits")
    assert st["stable"]["digest"] == good1.digest and st["readyReplicas"] >= 1
    assert st["url"] == f"http://digits.{namespace}.svc.cluster.local"
    for kind in ("deployment/digits-stable", "service/digits", "pdb/digits", "hpa/digits"):
        assert kubectl("-n", namespace, "get", kind, check=False).returncode == 0, kind
    # No idle canary Deployment before the first canary.
    assert "NotFound" in kubectl("-n", namespace, "get", "deployment/digits-canary", check=False).stderr

    def canary_deployment() -> dict[str, Any]:
        return dict(json.loads(kubectl("-n", namespace, "get", "deployment", "digits-canary", "-o", "json").stdout))

    def patch_model(path: Path, digest: str) -> None:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "modeldeployments",
            "digits",
            {"spec": {"model": {"uri": uri(path), "digest": digest}}},
        )

    with Load(namespace, "digits") as load:
        wait_until("traffic", lambda: len(load.results) > 20, timeout=60)

        # A good model: canary at 50%, two clean analysis measurements, promoted; v1 kept as previous.
        patch_model(good2.path, good2.digest)
        wait_until(
            "the canary promoted",
            lambda: (
                status(custom, namespace, "modeldeployments", "digits").get("stable", {}).get("digest") == good2.digest
            ),
            timeout=300,
        )
        st = status(custom, namespace, "modeldeployments", "digits")
        assert st["previous"]["digest"] == good1.digest
        passed = [r for r in st["analysis"] if r["result"] == "Successful"]
        assert {r["metric"] for r in passed} == {"errorRate", "latencyP99"} and len(passed) >= 4
        assert all(r["value"] is not None for r in passed)
        wait_until(
            "Healthy again",
            lambda: status(custom, namespace, "modeldeployments", "digits").get("phase") == "Healthy",
            timeout=180,
        )
        tracks_before_bad = pod_ips_by_track(namespace, "digits")
        kept = canary_deployment()  # made for the first canary, kept at 0 after it
        assert kept["spec"]["replicas"] == 0, kept["spec"]

        # A bad model (NaN scores: every answer a 500): rolled back by the error-rate analysis.
        mark = len(load.results)
        patch_model(store / "models" / "bad" / "model.onnx", bad_digest)
        tracks = dict(tracks_before_bad)

        def rolled_back() -> bool:
            tracks.update(pod_ips_by_track(namespace, "digits"))  # the bad canary's pod, while it lives
            return status(custom, namespace, "modeldeployments", "digits").get("phase") == "Degraded"

        wait_until("the rollback", rolled_back, timeout=300)
        st = status(custom, namespace, "modeldeployments", "digits")
        assert st["stable"]["digest"] == good2.digest and st["canary"]["digest"] == bad_digest and st["aborted"]
        degraded = next(x for x in st["conditions"] if x["type"] == c.DEGRADED)
        assert (
            degraded["status"] == "True" and degraded["reason"] == c.ROLLED_BACK and "errorRate" in degraded["message"]
        )
        failed = [r for r in st["analysis"] if r["result"] == "Failed"]
        assert failed and failed[-1]["metric"] == "errorRate" and failed[-1]["value"] > 0.05
        wait_until("the canary scaled to 0", lambda: canary_deployment()["spec"]["replicas"] == 0, timeout=60)
        assert canary_deployment()["metadata"]["uid"] == kept["metadata"]["uid"], "the canary Deployment made again"
        time.sleep(3)

    # The error budget held on stable throughout: every failed answer came from the bad canary.
    during = load.results[mark:]
    good_versions = {good1.digest[7:19], good2.digest[7:19]}
    by_track = Counter((tracks.get(ip, "?"), code == 200) for ip, code, _ in during)
    stable_ok, stable_bad = by_track[("stable", True)], by_track[("stable", False)]
    assert stable_ok > 20 and stable_bad <= 0.01 * (stable_ok + stable_bad), by_track
    assert all(v in good_versions for _, code, v in load.results if code == 200)
    assert by_track[("canary", False)] > 0  # the bad model really was served, and failed

    events = kubectl(
        "-n", namespace, "get", "events", "--field-selector=involvedObject.name=digits", "-o", "json"
    ).stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"RolloutStarted", "AnalysisPassed", "Promoted", "RolledBack"} <= reasons

    # Deleting the ModelDeployment removes every child (owner references).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "digits")
    wait_until(
        "children gone",
        lambda: (
            not json.loads(
                kubectl(
                    "-n",
                    namespace,
                    "get",
                    "deployments,services,pdb,hpa",
                    "-l",
                    "modelops.dev/modeldeployment=digits",
                    "-o",
                    "json",
                ).stdout
            )["items"]
        ),
        timeout=120,
    )


@pytest.mark.slow
def test_a_manual_gate_waits_for_promote_and_the_command_is_acted_on_at_once(operator, custom, namespace):
    """A pause without a duration holds the canary until `modelops.dev/promote=true`. The operator
    acts on the annotation when it arrives (the resync is an hour in tests; a paused rollout is not
    polled), then removes it."""
    store = artifacts_on_host(namespace)
    v1 = export_model(store / "models" / "v1", seed=1, name="digits")
    v2 = export_model(store / "models" / "v2", seed=2, name="digits")

    def model(exported) -> dict[str, str]:
        return {"uri": f"file://{ARTIFACTS}/{exported.path.relative_to(store)}", "digest": exported.digest}

    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "gated"},
        "spec": {
            "model": model(v1),
            "server": {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
    wait_until(
        "Healthy", lambda: status(custom, namespace, "modeldeployments", "gated").get("phase") == "Healthy", timeout=180
    )
    patch = {"spec": {"model": model(v2)}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "gated", patch)
    wait_until(
        "Paused at the gate",
        lambda: status(custom, namespace, "modeldeployments", "gated").get("phase") == "Paused",
        180,
    )
    time.sleep(5)  # it stays there
    st = status(custom, namespace, "modeldeployments", "gated")
    assert st["phase"] == "Paused" and st["stable"]["digest"] == v1.digest and st["canary"]["digest"] == v2.digest

    kubectl("-n", namespace, "annotate", "modeldeployment", "gated", "modelops.dev/promote=true")
    wait_until(
        "promoted",
        lambda: (status(custom, namespace, "modeldeployments", "gated").get("stable") or {}).get("digest") == v2.digest,
        120,
    )

    def annotations() -> dict[str, str]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "gated")
        return dict(obj["metadata"].get("annotations") or {})

    wait_until("the command consumed", lambda: "modelops.dev/promote" not in annotations(), timeout=60)


def test_the_service_serves_the_model_over_grpc(operator, custom, namespace):
    """The Service's `grpc` port (appProtocol grpc) reaches the server's gRPC endpoint: its
    EndpointSlice lists the port, and a pod behind it answers grpc.health.v1 readiness and a
    ModelInfer whose logits are the torch model's."""
    import grpc  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    from modelops_server.proto import grpc_predict_v2_pb2 as pb  # noqa: PLC0415
    from modelops_server.proto import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: PLC0415

    store = artifacts_on_host(namespace)
    model = export_model(store / "models" / "v1", seed=1, name="digits")
    body = served_model(
        "grpc",
        store,
        model,
        server={"resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}},
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
    wait_until(
        "Healthy", lambda: status(custom, namespace, "modeldeployments", "grpc").get("phase") == "Healthy", timeout=180
    )
    service = json.loads(kubectl("-n", namespace, "get", "service", "grpc", "-o", "json").stdout)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 8081 and ports["grpc"].get("appProtocol") == "grpc"
    slices = json.loads(
        kubectl("-n", namespace, "get", "endpointslices", "-l", "kubernetes.io/service-name=grpc", "-o", "json").stdout
    )["items"]
    slice_ports = {p["name"]: p for s in slices for p in s.get("ports") or []}
    assert slice_ports["grpc"]["port"] == 8081 and slice_ports["grpc"].get("appProtocol") == "grpc"
    ready = [
        a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready") for a in e["addresses"]
    ]
    assert ready
    batch = np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with grpc.insecure_channel(f"{ready[0]}:8081") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        request = pb.ModelInferRequest(
            model_name="grpc",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(batch.shape))],
            raw_input_contents=[batch.tobytes()],
        )
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, -1)
    np.testing.assert_allclose(got, model.logits(batch), rtol=1e-4, atol=1e-4)
