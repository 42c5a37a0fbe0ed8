"""The Open Inference Protocol over real HTTP: health, metadata, infer for each datatype, errors.

Expected logits come from the torch model the ONNX file was exported from, fed by an independent
numpy implementation of the contract's preprocessing; PNG test images are lossless and already at
the model's size, so the server's answer must match to float precision.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from tests.support.serving import (
    CLASSES,
    SIZE,
    ExportedModel,
    ServerProcess,
    image_bytes,
    normalise,
    pixels_of,
    softmax,
)
from tests.support.tools import missing

MODEL = "tiny-cnn"
CONTROL_TOKEN = "t0ken-for-the-protocol-tests"


def infer_url(server: ServerProcess, version: str | None = None) -> str:
    middle = f"/versions/{version}" if version else ""
    return f"{server.url}/v2/models/{MODEL}{middle}/infer"


def expected_logits(model: ExportedModel, images: list[bytes]) -> np.ndarray:
    return model.logits(np.stack([normalise(pixels_of(b)) for b in images]))


def test_health_live_and_ready(server: ServerProcess):
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).json() == {"live": True}
    ready = requests.get(f"{server.url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_server_metadata(server: ServerProcess):
    doc = requests.get(f"{server.url}/v2", timeout=10).json()
    assert doc["name"] == "modelops-server"
    assert "binary_tensor_data" in doc["extensions"]


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/v1"])
def test_model_metadata(server: ServerProcess, model_v1: ExportedModel, path: str):
    doc = requests.get(server.url + path, timeout=10).json()
    assert doc["name"] == MODEL and doc["versions"] == ["v1"]
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in doc["inputs"]}
    assert inputs == {
        "input": ("FP32", [-1, 3, SIZE, SIZE]),
        "image": ("BYTES", [-1]),
        "pixels": ("UINT8", [-1, -1, -1, 3]),
    }
    assert {o["name"] for o in doc["outputs"]} == {"logits", "probabilities"}
    assert doc["parameters"]["digest"] == model_v1.digest
    assert doc["parameters"]["classes"] == CLASSES


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/v1/ready"])
def test_model_ready(server: ServerProcess, path: str):
    r = requests.get(server.url + path, timeout=10)
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/v2/models/nope", "not served here"),
        (f"/v2/models/{MODEL}/versions/v9", "version 'v9'"),
        ("/v2/models/nope/infer", "not served here"),
        ("/v3/what", "no such endpoint"),
    ],
)
def test_unknown_model_version_or_path_is_404(server: ServerProcess, path: str, fragment: str):
    method = requests.post if path.endswith("infer") else requests.get
    r = method(server.url + path, timeout=10)
    assert r.status_code == 404
    assert fragment in r.json()["error"]


def test_infer_fp32_json(server: ServerProcess, model_v1: ExportedModel):
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    body = {
        "id": "req-42",
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}],
    }
    doc = requests.post(infer_url(server), json=body, timeout=30).json()
    assert doc["id"] == "req-42" and doc["model_name"] == MODEL and doc["model_version"] == "v1"
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [3, len(CLASSES)]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, -1), model_v1.logits(batch), rtol=1e-4, atol=1e-4)


def test_infer_fp32_nested_json_on_versioned_path(server: ServerProcess, model_v1: ExportedModel):
    batch = np.full((1, 3, SIZE, SIZE), 0.25, dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": batch.tolist()}]}
    doc = requests.post(infer_url(server, "v1"), json=body, timeout=30).json()
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]), model_v1.logits(batch)[0], rtol=1e-4, atol=1e-4)


def test_infer_bytes_json_base64(server: ServerProcess, model_v1: ExportedModel):
    images = [image_bytes(11), image_bytes(12)]
    body = {
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "data": [base64.b64encode(b).decode() for b in images]}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    doc = requests.post(infer_url(server), json=body, timeout=30).json()
    (out,) = doc["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [2, len(CLASSES)]
    got = np.array(out["data"]).reshape(2, -1)
    np.testing.assert_allclose(got, softmax(expected_logits(model_v1, images)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_infer_uint8_pixels(server: ServerProcess, model_v1: ExportedModel):
    images = [image_bytes(21), image_bytes(22)]
    pixels = np.stack([pixels_of(b) for b in images])
    body = {
        "inputs": [
            {"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.ravel().tolist()}
        ]
    }
    doc = requests.post(infer_url(server), json=body, timeout=30).json()
    got = np.array(doc["outputs"][0]["data"]).reshape(2, -1)
    np.testing.assert_allclose(got, expected_logits(model_v1, images), rtol=1e-4, atol=1e-4)


def test_tritonclient_binary_bytes_and_classification(server: ServerProcess, model_v1: ExportedModel):
    """An existing client (tritonclient's HTTP client) with the binary-data extension."""
    images = [image_bytes(31), image_bytes(32), image_bytes(33)]
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)
    assert client.is_server_live() and client.is_model_ready(MODEL)
    tensor = triton.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("logits", binary_data=True),
        triton.InferRequestedOutput("probabilities", binary_data=False, class_count=2),
    ]
    result = client.infer(MODEL, [tensor], outputs=outputs)
    expected = expected_logits(model_v1, images)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    for row, want in zip(top, expected, strict=True):
        best = int(np.argmax(want))
        score, index, label = row[0].decode().split(":") if isinstance(row[0], bytes) else row[0].split(":")
        assert (int(index), label) == (best, CLASSES[best])
        assert float(score) == pytest.approx(softmax(want)[best], abs=1e-4)


def test_tritonclient_binary_fp32(server: ServerProcess, model_v1: ExportedModel):
    batch = np.random.default_rng(5).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    result = client.infer(MODEL, [tensor])  # no outputs: all outputs in binary
    np.testing.assert_allclose(result.as_numpy("logits"), model_v1.logits(batch), rtol=1e-4, atol=1e-4)


def test_classify_raw_body_and_multipart(server: ServerProcess, model_v1: ExportedModel):
    img = image_bytes(41)
    want = softmax(expected_logits(model_v1, [img])[0])
    order = list(np.argsort(-want))
    url = f"{server.url}/v1/models/{MODEL}:classify"
    raw = requests.post(url, data=img, headers={"Content-Type": "image/png"}, params={"top_k": 3}, timeout=30).json()
    form = requests.post(url, files={"file": ("x.png", img, "image/png")}, timeout=30).json()
    assert raw["model_version"] == "v1" and len(raw["predictions"]) == 3 and len(form["predictions"]) == 5
    for doc in (raw, form):
        assert [p["index"] for p in doc["predictions"]] == order[: len(doc["predictions"])]
        assert [p["label"] for p in doc["predictions"]] == [CLASSES[i] for i in order[: len(doc["predictions"])]]
        assert doc["predictions"][0]["score"] == pytest.approx(want[order[0]], abs=1e-5)


def test_kserve_v1_predict_takes_each_instance_form(server: ServerProcess, model_v1: ExportedModel):
    """KServe V1 ``:predict``: the image forms of TF Serving's, KServe's and TorchServe's examples and
    the normalised tensor, in one request, each answered by its own top-k labels in order."""
    images = [image_bytes(61 + i) for i in range(4)]
    b64 = [base64.b64encode(b).decode() for b in images]
    tensor = normalise(pixels_of(image_bytes(65)))
    instances = [
        {"b64": b64[0]},
        {"image_bytes": {"b64": b64[1]}, "key": "1"},
        {"data": b64[2]},
        b64[3],
        tensor.tolist(),
    ]
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:predict", json={"instances": instances}, params={"top_k": 2}, timeout=30
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == MODEL and doc["model_version"] == "v1" and len(doc["predictions"]) == 5
    want = softmax(np.concatenate([expected_logits(model_v1, images), model_v1.logits(tensor[None])]))
    for got, probs in zip(doc["predictions"], want, strict=True):
        order = list(np.argsort(-probs))[:2]
        assert [p["index"] for p in got] == order and [p["label"] for p in got] == [CLASSES[i] for i in order]
        assert got[0]["score"] == pytest.approx(probs[order[0]], abs=1e-5)
    columnar = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"inputs": [b64[0]]}, timeout=30)
    assert columnar.status_code == 200 and len(columnar.json()["predictions"][0]) == 5


def test_kserve_v1_models_readiness_and_liveness(server: ServerProcess):
    assert requests.get(f"{server.url}/v1/models", timeout=10).json() == {"models": [MODEL]}
    ready = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"name": MODEL, "ready": True}
    assert requests.get(f"{server.url}/v1/models/other", timeout=10).status_code == 404
    # "/" is the web page to a browser and KServe V1's liveness to everyone else.
    assert requests.get(f"{server.url}/", timeout=10).json() == {"status": "alive"}
    page = requests.get(f"{server.url}/", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=10)
    assert page.headers["Content-Type"].startswith("text/html")


def _curl(*args: str) -> dict:
    """Run curl as TorchServe's documentation does; its JSON answer (curl fails on an HTTP error)."""
    if shutil.which("curl") is None:
        missing("curl", "apt-get install curl (hack/setup.sh installs it)")
    cmd = ["curl", "-sS", "--fail-with-body", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(json.loads(res.stdout))


def test_torchserve_predictions_as_its_documentation_calls_them(
    server: ServerProcess, model_v1: ExportedModel, tmp_path: Path
):
    """TorchServe's inference API with the calls of its own documentation: ``curl -T`` (a PUT of the
    file), ``curl -F data=@``, the versioned path; SageMaker's ``/invocations`` with its image type.
    Each answer is ``{label: probability}``, the top 5 in order."""
    img = image_bytes(71)
    path = tmp_path / "kitten.png"
    path.write_bytes(img)
    probs = softmax(expected_logits(model_v1, [img])[0])
    order = list(np.argsort(-probs))
    answers = {
        "put": _curl(f"{server.url}/predictions/{MODEL}", "-T", str(path)),
        "form": _curl(f"{server.url}/predictions/{MODEL}", "-F", f"data=@{path}"),
        "version": _curl(f"{server.url}/predictions/{MODEL}/v1", "-F", f"data=@{path}"),
        "invocations": _curl(
            f"{server.url}/invocations", "-H", "Content-Type: application/x-image", "--data-binary", f"@{path}"
        ),
    }
    for how, doc in answers.items():
        assert list(doc) == [CLASSES[i] for i in order[:5]], how
        assert list(doc.values()) == pytest.approx([probs[i] for i in order[:5]], abs=1e-5), how
    top2 = requests.post(f"{server.url}/predictions/{MODEL}", data=img, params={"top_k": 2}, timeout=30)
    assert top2.status_code == 200 and list(top2.json()) == [CLASSES[i] for i in order[:2]]
    assert _curl(f"{server.url}/ping") == {"status": "Healthy"}


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        pytest.param("/predictions/other", {"data": b"x"}, 404, "other", id="unknown-model"),
        pytest.param(f"/predictions/{MODEL}/v9", {"data": b"x"}, 404, "v9", id="unknown-version"),
        pytest.param(f"/predictions/{MODEL}", {"json": {"data": "eA=="}}, 415, "multipart/form-data", id="json"),
        pytest.param(f"/predictions/{MODEL}", {"data": b""}, 400, "body is empty", id="empty"),
        pytest.param(f"/predictions/{MODEL}", {"data": b"not an image"}, 415, "cannot identify", id="not-an-image"),
        pytest.param(
            f"/predictions/{MODEL}",
            {"files": [("data", ("a.png", image_bytes(1))), ("data", ("b.png", image_bytes(2)))]},
            400,
            "2 files named 'data': send one image",
            id="two-images",
        ),
        pytest.param(
            "/invocations", {"data": b"x", "headers": {"Content-Type": "text/csv"}}, 415, "text/csv", id="csv"
        ),
    ],
)
def test_torchserve_predictions_refuse(server: ServerProcess, path: str, kwargs: dict, status: int, fragment: str):
    r = requests.post(f"{server.url}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_ping_and_invocations_without_a_model(tmp_path: Path, model_v1: ExportedModel):
    """With the model unloaded, ``/ping`` says ``Unhealthy`` with a 503 (a probe must see it) and
    ``/invocations`` answers 503; loaded again, both serve."""
    server = ServerProcess(
        model=model_v1.path,
        args=["--model-digest", model_v1.digest, "--enable-model-control"],
        env={"MODELOPS_MODEL_CONTROL_TOKEN": CONTROL_TOKEN},
    ).start(tmp_path)
    auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    repo = f"{server.url}/v2/repository/models/{MODEL}"
    try:
        assert requests.post(f"{repo}/unload", headers=auth, timeout=30).status_code == 200
        ping = requests.get(f"{server.url}/ping", timeout=10)
        assert ping.status_code == 503 and ping.json() == {"status": "Unhealthy"}
        gone = requests.post(f"{server.url}/invocations", data=image_bytes(3), timeout=30)
        assert gone.status_code == 503 and "no model is loaded" in gone.json()["error"], gone.text
        assert requests.post(f"{repo}/load", headers=auth, timeout=120).status_code == 200
        deadline = time.monotonic() + 30
        while requests.get(f"{server.url}/ping", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "/ping did not turn Healthy after the load"
            time.sleep(0.05)
        assert requests.post(f"{server.url}/invocations", data=image_bytes(3), timeout=30).status_code == 200
        assert requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).status_code == 200
        # Probes are answers, not requests: their 503s must not count toward the error rate.
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        counted = {line.split('endpoint="')[1].split('"')[0] for line in text.splitlines() if "endpoint=" in line}
        assert {"invocations", "repository_unload"} <= counted and not counted & {"ping", "v1_model_ready"}, counted
    finally:
        assert server.stop() == 0, server.logs()


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        pytest.param("abc-123", True, id="a-proxys-id"),
        pytest.param("8a3f2c1e-0b7d-4e51-9c60-2d4f8e7a1b93", True, id="a-uuid"),
        pytest.param(None, False, id="none"),
        pytest.param("has a space", False, id="not-a-token"),
        pytest.param("x" * 129, False, id="too-long"),
    ],
)
def test_every_answer_carries_a_request_id(server: ServerProcess, sent: str | None, echoed: bool):
    """A proxy's (Envoy, nginx) or client's ``X-Request-Id`` comes back; without a usable one the
    server makes one. Errors carry it too."""
    headers = {"X-Request-Id": sent} if sent is not None else {}
    for r in (
        requests.post(f"{server.url}/predictions/{MODEL}", data=image_bytes(5), headers=headers, timeout=30),
        requests.post(f"{server.url}/predictions/other", data=b"x", headers=headers, timeout=30),
    ):
        assert r.status_code in (200, 404)
        rid = r.headers["X-Request-Id"]
        if echoed:
            assert rid == sent
        else:
            assert len(rid) == 32 and int(rid, 16) >= 0 and rid != sent


def test_a_requests_log_lines_carry_its_id_and_trace(tmp_path: Path, model_v1: ExportedModel):
    """With ``--log-level DEBUG`` each REST request and gRPC call has an access log line carrying its
    request id and the trace id of its W3C ``traceparent``, over both protocols."""
    import grpc  # noqa: PLC0415

    from modelops_server.proto import grpc_predict_v2_pb2 as pb  # noqa: PLC0415
    from modelops_server.proto import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: PLC0415

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    server = ServerProcess(model=model_v1.path, args=["--log-level", "DEBUG"]).start(tmp_path)
    try:
        r = requests.post(
            f"{server.url}/v1/models/{MODEL}:classify",
            data=image_bytes(6),
            headers={"X-Request-Id": "rest-42", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["X-Request-Id"] == "rest-42"
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            metadata = (("x-request-id", "grpc-7"), ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"))
            with pytest.raises(grpc.RpcError):
                stub.ModelMetadata(pb.ModelMetadataRequest(name="other"), metadata=metadata, timeout=10)
    finally:
        assert server.stop() == 0, server.logs()
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["message"] == "request" and "request_id" in line}
    assert access["rest-42"]["trace_id"] == trace and access["rest-42"]["status"] == 200
    assert access["rest-42"]["path"] == f"/v1/models/{MODEL}:classify"
    assert access["grpc-7"]["trace_id"] == trace and access["grpc-7"]["status"] == 404
    assert access["grpc-7"]["path"] == "/inference.GRPCInferenceService/ModelMetadata"


def test_metrics_count_requests_by_model_version_and_code(server: ServerProcess):
    from tests.support.serving import metric_value  # noqa: PLC0415

    before = requests.get(f"{server.url}/metrics", timeout=10).text
    requests.post(
        f"{server.url}/v1/models/{MODEL}:classify", data=b"x", headers={"Content-Type": "text/plain"}, timeout=10
    )
    requests.post(
        f"{server.url}/v1/models/{MODEL}:classify",
        data=image_bytes(1),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    after = requests.get(f"{server.url}/metrics", timeout=10).text
    labels = {"model": MODEL, "version": "v1", "endpoint": "classify"}
    for code in ("200", "415"):
        delta = metric_value(after, "modelops_requests_total", code=code, **labels) - metric_value(
            before, "modelops_requests_total", code=code, **labels
        )
        assert delta == 1, code
    assert metric_value(after, "modelops_errors_total", reason="unsupported_media_type") >= 1
    assert metric_value(after, "modelops_model_info", model=MODEL, version="v1") == 1
    assert metric_value(after, "modelops_batch_size_count", model=MODEL) >= 1
    assert metric_value(after, "modelops_inference_duration_seconds_count", model=MODEL) >= 1
    assert metric_value(after, "modelops_queue_wait_seconds_count", model=MODEL) >= 1
    assert metric_value(after, "modelops_request_duration_seconds_count", endpoint="classify") >= 2
    assert metric_value(after, "modelops_model_load_duration_seconds", model=MODEL, version="v1") > 0
    assert metric_value(after, "modelops_queue_capacity") == 256
    assert "modelops_queue_depth" in after and "modelops_inflight_requests" in after
