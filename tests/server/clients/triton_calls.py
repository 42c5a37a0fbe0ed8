"""tritonclient (HTTP and gRPC) against a running server; prints what it got as JSON.

Runs in .venv-clients/triton (see README.md): ``triton_calls.py SCENARIO SPEC.json``. SPEC holds the
server's addresses, the model name, input data and, for the repository scenarios, the control token
and a second model to load. Errors are recorded (status code and message), not raised.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException


def _error(exc: InferenceServerException) -> dict[str, Any]:
    return {"status": str(exc.status()), "message": exc.message()}


def grpc_infer(spec: dict[str, Any]) -> dict[str, Any]:
    client = tgrpc.InferenceServerClient(spec["grpc"])
    model = spec["model"]
    batch = np.asarray(spec["batch"], dtype=np.float32)
    images = np.array([base64.b64decode(b) for b in spec["images"]], dtype=np.object_)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "extensions": list(client.get_server_metadata(as_json=True)["extensions"]),
        "metadata": client.get_model_metadata(model, as_json=True),
    }
    tensor = tgrpc.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer(model, [tensor], request_id="triton-grpc-1")
    out["fp32_logits"] = result.as_numpy("logits").tolist()
    out["id"] = result.get_response().id
    out["model_version"] = result.get_response().model_version
    tensor = tgrpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(images)
    outputs = [tgrpc.InferRequestedOutput("logits"), tgrpc.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer(model, [tensor], outputs=outputs)
    out["image_logits"] = result.as_numpy("logits").tolist()
    out["image_top2"] = [[s.decode() for s in row] for row in result.as_numpy("probabilities")]
    return out


def grpc_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Bad requests, each answered with a status code and REST's words."""
    client = tgrpc.InferenceServerClient(spec["grpc"])
    model = spec["model"]
    batch = np.asarray(spec["batch"], dtype=np.float32)
    cases: dict[str, tuple[str, list[int], str, Any]] = {
        "wrong_datatype": ("input", list(batch.shape), "FP64", batch.astype(np.float64)),
        "wrong_shape": ("input", [batch.shape[0], 3, 16, 64], "FP32", batch.reshape(batch.shape[0], 3, 16, 64)),
        "unknown_input": ("tensor", list(batch.shape), "FP32", batch),
    }
    out: dict[str, Any] = {}
    for case, (name, shape, datatype, data) in cases.items():
        tensor = tgrpc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(data)
        try:
            client.infer(model, [tensor])
            out[case] = {"status": "OK"}
        except InferenceServerException as exc:
            out[case] = _error(exc)
    # A wrong size: the shape says one more row than the bytes hold.
    tensor = tgrpc.InferInput("input", [batch.shape[0] + 1, *batch.shape[1:]], "FP32")
    tensor.set_data_from_numpy(np.concatenate([batch, batch[:1]]))
    tensor._raw_content = batch.tobytes()  # what a buggy client sends: fewer bytes than the shape says
    try:
        client.infer(model, [tensor])
        out["wrong_size"] = {"status": "OK"}
    except InferenceServerException as exc:
        out["wrong_size"] = _error(exc)
    tensor = tgrpc.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    try:
        client.infer("nope", [tensor])
        out["unknown_model"] = {"status": "OK"}
    except InferenceServerException as exc:
        out["unknown_model"] = _error(exc)
    return out


def _repository(client: Any, spec: dict[str, Any], headers: dict[str, str], infer: Any) -> dict[str, Any]:
    model = spec["model"]
    out: dict[str, Any] = {"index_before": _index(client)}
    try:
        client.unload_model(model)
        out["unload_without_token"] = {"status": "OK"}
    except InferenceServerException as exc:
        out["unload_without_token"] = _error(exc)
    client.unload_model(model, headers=headers)
    out["ready_after_unload"] = client.is_model_ready(model)
    out["index_after_unload"] = _index(client)
    try:
        infer()
        out["infer_after_unload"] = {"status": "OK"}
    except InferenceServerException as exc:
        out["infer_after_unload"] = _error(exc)
    client.load_model(model, headers=headers)  # no config: the version unloaded, its digest checked again
    out["ready_after_reload"] = client.is_model_ready(model)
    out["logits_after_reload"] = infer().as_numpy("logits").tolist()
    new = spec["new_model"]
    config = json.dumps({"uri": new["uri"], "digest": new["digest"], "version": new["version"]})
    client.load_model(model, headers=headers, config=config)
    out["index_after_load"] = _index(client)
    out["logits_after_load"] = infer().as_numpy("logits").tolist()
    bad = json.dumps({"uri": new["uri"], "digest": "sha256:" + "0" * 64})
    try:
        client.load_model(model, headers=headers, config=bad)
        out["load_with_wrong_digest"] = {"status": "OK"}
    except InferenceServerException as exc:
        out["load_with_wrong_digest"] = _error(exc)
    out["index_at_end"] = _index(client)
    return out


def _index(client: Any) -> list[dict[str, Any]]:
    keys = ("name", "version", "state", "reason")
    if isinstance(client, tgrpc.InferenceServerClient):
        models = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        models = client.get_model_repository_index()
    return [{k: m.get(k, "") for k in keys} for m in models]


def _repository_over(module: Any, client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    batch = np.asarray(spec["batch"], dtype=np.float32)

    def infer() -> Any:
        tensor = module.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer(spec["model"], [tensor])

    # gRPC metadata keys are lower case; HTTP headers are not case-sensitive.
    return _repository(client, spec, {"authorization": f"Bearer {spec['token']}"}, infer)


def grpc_repository(spec: dict[str, Any]) -> dict[str, Any]:
    return _repository_over(tgrpc, tgrpc.InferenceServerClient(spec["grpc"]), spec)


def http_repository(spec: dict[str, Any]) -> dict[str, Any]:
    return _repository_over(thttp, thttp.InferenceServerClient(spec["http"], network_timeout=120), spec)


def http_json(spec: dict[str, Any]) -> dict[str, Any]:
    """tritonclient's HTTP client with JSON tensors (no binary extension) and a request id."""
    client = thttp.InferenceServerClient(spec["http"], network_timeout=120)
    batch = np.asarray(spec["batch"], dtype=np.float32)
    tensor = thttp.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=False)
    result = client.infer(
        spec["model"], [tensor], outputs=[thttp.InferRequestedOutput("logits", binary_data=False)], request_id="t-7"
    )
    return {"fp32_logits": result.as_numpy("logits").tolist(), "id": result.get_response()["id"]}


def http_compressed(spec: dict[str, Any]) -> dict[str, Any]:
    """tritonclient's HTTP client compressing its request bodies (binary tensors), with gzip and with
    deflate, and asking for a gzip-compressed answer: the logits of each."""
    client = thttp.InferenceServerClient(spec["http"], network_timeout=120)
    batch = np.asarray(spec["batch"], dtype=np.float32)
    got = {}
    for algorithm in ("gzip", "deflate"):
        tensor = thttp.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        result = client.infer(
            spec["model"],
            [tensor],
            outputs=[thttp.InferRequestedOutput("logits", binary_data=True)],
            request_compression_algorithm=algorithm,
            response_compression_algorithm="gzip",
        )
        got[algorithm] = result.as_numpy("logits").tolist()
    return got


SCENARIOS = {
    f.__name__: f for f in (grpc_infer, grpc_errors, grpc_repository, http_repository, http_json, http_compressed)
}

if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        print(json.dumps(SCENARIOS[sys.argv[1]](json.load(f))))
