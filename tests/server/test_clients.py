"""Other projects' clients against a real server process: tritonclient (HTTP and gRPC) and KServe's
InferenceRESTClient and InferenceGRPCClient, in JSON and binary forms, KServe's REST client with the
V1 protocol, plus the model repository extension as tritonclient calls it.

The clients run in their own virtualenvs (``.venv-clients/<client>``, made by hack/setup.sh): their
pins (protobuf < 7, grpcio ranges, pandas < 3) conflict with the project's, so each call is a
subprocess running ``tests/server/clients/<client>_calls.py``, which prints what the client got.
Expected logits come from the torch model the ONNX file was exported from.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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

MODEL = "tiny-cnn"
REPO = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent / "clients"
TOKEN = "t0ken-for-the-repository-tests"


def run_client(client: str, scenario: str, spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Run `scenario` of ``clients/<client>_calls.py`` in the client's virtualenv; its JSON answer."""
    python = REPO / ".venv-clients" / client / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run hack/setup.sh (it makes the clients' virtualenvs)")
    spec_path = tmp_path / f"{client}-{scenario}.json"
    spec_path.write_text(json.dumps(spec))
    res = subprocess.run(
        [str(python), str(CLIENTS / f"{client}_calls.py"), scenario, str(spec_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def spec_for(server: ServerProcess, batch: np.ndarray, images: list[bytes] = (), **extra: Any) -> dict[str, Any]:
    return {
        "http": f"127.0.0.1:{server.port}" if extra.pop("bare_http", False) else server.url,
        "grpc": server.grpc_target,
        "model": MODEL,
        "batch": batch.tolist(),
        "images": [base64.b64encode(b).decode() for b in images],
        **extra,
    }


def expected_logits(model: ExportedModel, images: list[bytes]) -> np.ndarray:
    return model.logits(np.stack([normalise(pixels_of(b)) for b in images]))


def close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32).reshape(want.shape), want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(18).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


# --- tritonclient --------------------------------------------------------------------------------


def test_tritonclient_grpc_metadata_and_infer(server: ServerProcess, model_v1: ExportedModel, batch, tmp_path):
    images = [image_bytes(181), image_bytes(182), image_bytes(183)]
    got = run_client("triton", "grpc_infer", spec_for(server, batch, images), tmp_path)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert "model_repository" in got["extensions"] and "classification" in got["extensions"]
    meta = got["metadata"]
    assert meta["name"] == MODEL and meta["versions"] == ["v1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"input": "FP32", "image": "BYTES", "pixels": "UINT8"}
    close(got["fp32_logits"], model_v1.logits(batch))
    assert got["id"] == "triton-grpc-1" and got["model_version"] == "v1"
    want = expected_logits(model_v1, images)
    close(got["image_logits"], want)
    for row, logits in zip(got["image_top2"], want, strict=True):
        best = int(np.argmax(logits))
        score, index, label = row[0].split(":")
        assert (int(index), label) == (best, CLASSES[best])
        assert float(score) == pytest.approx(softmax(logits)[best], abs=1e-4)


def test_tritonclient_http_json_echoes_the_id(server: ServerProcess, model_v1: ExportedModel, batch, tmp_path):
    got = run_client("triton", "http_json", spec_for(server, batch, bare_http=True), tmp_path)
    close(got["fp32_logits"], model_v1.logits(batch))
    assert got["id"] == "t-7"


def test_tritonclient_http_compresses_its_requests(server: ServerProcess, model_v1: ExportedModel, batch, tmp_path):
    """tritonclient's `request_compression_algorithm`: the body arrives gzip- or deflate-encoded."""
    got = run_client("triton", "http_compressed", spec_for(server, batch, bare_http=True), tmp_path)
    for algorithm in ("gzip", "deflate"):
        close(got[algorithm], model_v1.logits(batch))


def test_grpc_bad_input_gets_invalid_argument_with_rests_words(server: ServerProcess, batch, tmp_path):
    got = run_client("triton", "grpc_errors", spec_for(server, batch), tmp_path)
    n = batch.shape[0]
    want = {
        "wrong_datatype": ("INVALID_ARGUMENT", "input 'input' must have datatype FP32; got FP64"),
        "wrong_shape": ("INVALID_ARGUMENT", f"input 'input' must have shape [N, 3, {SIZE}, {SIZE}]"),
        "unknown_input": ("INVALID_ARGUMENT", "unknown input 'tensor'; this model accepts 'input' (FP32)"),
        "wrong_size": (
            "INVALID_ARGUMENT",
            f"input 'input': {batch.nbytes} binary bytes do not match shape [{n + 1}, 3, {SIZE}, {SIZE}] of FP32",
        ),
        "unknown_model": ("NOT_FOUND", "model 'nope' is not served here; this server serves 'tiny-cnn'"),
    }
    for case, (status, words) in want.items():
        assert got[case]["status"] == f"StatusCode.{status}", (case, got[case])
        assert words in got[case]["message"], (case, got[case])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_repository_index_unload_load(
    protocol: str, model_v1: ExportedModel, model_v2: ExportedModel, batch, logs_dir: Path, tmp_path: Path
):
    server = ServerProcess(
        model=model_v1.path,
        args=["--model-digest", model_v1.digest, "--model-version", "v1", "--enable-model-control"],
        env={"MODELOPS_MODEL_CONTROL_TOKEN": TOKEN},
    ).start(logs_dir)
    new = {"uri": str(model_v2.path), "digest": model_v2.digest, "version": "v2"}
    try:
        got = run_client(
            "triton",
            f"{protocol}_repository",
            spec_for(server, batch, bare_http=True, token=TOKEN, new_model=new),
            tmp_path,
        )
    finally:
        assert server.stop() == 0, server.logs()
    ready = {"name": MODEL, "version": "v1", "state": "READY", "reason": ""}
    assert got["index_before"] == [ready]
    denied = "PERMISSION_DENIED" if protocol == "grpc" else "403"
    assert denied in got["unload_without_token"]["status"]
    assert "Authorization: Bearer" in got["unload_without_token"]["message"]
    assert got["ready_after_unload"] is False
    assert got["index_after_unload"] == [{**ready, "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert ("UNAVAILABLE" if protocol == "grpc" else "503") in got["infer_after_unload"]["status"]
    assert "is unloaded" in got["infer_after_unload"]["message"]
    assert got["ready_after_reload"] is True
    close(got["logits_after_reload"], model_v1.logits(batch))
    assert got["index_after_load"] == [{**ready, "version": "v2"}]
    close(got["logits_after_load"], model_v2.logits(batch))
    assert ("INVALID_ARGUMENT" if protocol == "grpc" else "400") in got["load_with_wrong_digest"]["status"]
    assert "the old one still serves" in got["load_with_wrong_digest"]["message"]
    assert got["index_at_end"] == [{**ready, "version": "v2"}]


# --- KServe --------------------------------------------------------------------------------------


def test_kserve_rest_client_json_and_binary(server: ServerProcess, model_v1: ExportedModel, batch, tmp_path):
    got = run_client("kserve", "rest", spec_for(server, batch), tmp_path)
    assert got["live"] and got["ready"] and got["model_ready"]
    for form in ("json", "binary"):
        assert got[form]["id"] == f"kserve-rest-{form}" and got[form]["model_name"] == MODEL
        assert got[form]["output"] == "logits"
        close(got[form]["logits"], model_v1.logits(batch))
    close(got["probabilities"], softmax(model_v1.logits(batch)))


def test_kserve_grpc_client_typed_and_raw(server: ServerProcess, model_v1: ExportedModel, batch, tmp_path):
    images = [image_bytes(191), image_bytes(192)]
    got = run_client("kserve", "grpc", spec_for(server, batch, images), tmp_path)
    assert got["live"] and got["ready"] and got["model_ready"]
    for form in ("typed", "raw"):
        assert got[form]["id"] == f"kserve-grpc-{form}" and got[form]["model_name"] == MODEL
        close(got[form]["logits"], model_v1.logits(batch))
    close(got["image_logits"], expected_logits(model_v1, images))


def test_kserve_rest_client_v1_protocol(server: ServerProcess, model_v1: ExportedModel, tmp_path):
    images = [image_bytes(193), image_bytes(194)]
    got = run_client("kserve", "v1", spec_for(server, np.zeros((1,)), images), tmp_path)
    assert got["live"] and got["model_ready"]
    assert got["predict"]["model_name"] == MODEL
    want = softmax(expected_logits(model_v1, images))
    for predictions, probs in zip(got["predict"]["predictions"], want, strict=True):
        best = int(np.argmax(probs))
        assert predictions[0]["index"] == best and predictions[0]["label"] == CLASSES[best]
        assert predictions[0]["score"] == pytest.approx(float(probs[best]), abs=1e-5)
