"""KServe's Python clients (``kserve`` 0.21: InferenceRESTClient with the V2 and V1 protocols,
InferenceGRPCClient) against a running server; prints what they got as JSON.

Runs in .venv-clients/kserve (see README.md): ``kserve_calls.py SCENARIO SPEC.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def _fp32(batch: np.ndarray, binary: bool) -> InferInput:
    tensor = InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


async def rest(spec: dict[str, Any]) -> dict[str, Any]:
    batch = np.asarray(spec["batch"], dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=120))
    out: dict[str, Any] = {
        "live": await client.is_server_live(spec["http"]),
        "ready": await client.is_server_ready(spec["http"]),
        "model_ready": await client.is_model_ready(spec["http"], spec["model"]),
    }
    try:
        for form, binary in (("json", False), ("binary", True)):
            request = InferRequest(spec["model"], [_fp32(batch, binary)], request_id=f"kserve-rest-{form}")
            response = await client.infer(spec["http"], request, model_name=spec["model"])
            out[form] = {
                "id": response.id,
                "model_name": response.model_name,
                "logits": response.outputs[0].as_numpy().tolist(),
                "output": response.outputs[0].name,
            }
        # Asking for an output by name, with binary outputs:
        request = InferRequest(
            spec["model"],
            [_fp32(batch, True)],
            request_outputs=[RequestedOutput("probabilities", {"binary_data": True})],
        )
        response = await client.infer(spec["http"], request, model_name=spec["model"])
        out["probabilities"] = response.outputs[0].as_numpy().tolist()
    finally:
        await client.close()
    return out


async def grpc(spec: dict[str, Any]) -> dict[str, Any]:
    batch = np.asarray(spec["batch"], dtype=np.float32)
    images = [base64.b64decode(b) for b in spec["images"]]
    client = InferenceGRPCClient(spec["grpc"], retries=0, timeout=120)
    out: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(spec["model"]),
    }
    try:
        for form, binary in (("typed", False), ("raw", True)):
            request = InferRequest(spec["model"], [_fp32(batch, binary)], request_id=f"kserve-grpc-{form}")
            response = await client.infer(request)
            out[form] = {
                "id": response.id,
                "model_name": response.model_name,
                "logits": response.outputs[0].as_numpy().tolist(),
            }
        tensor = InferInput("image", [len(images)], "BYTES", data=images)
        response = await client.infer(InferRequest(spec["model"], [tensor]))
        out["image_logits"] = response.outputs[0].as_numpy().tolist()
    finally:
        await client.close()
    return out


async def v1(spec: dict[str, Any]) -> dict[str, Any]:
    """The V1 protocol (TF Serving's REST API) as KServe's REST client speaks it."""
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=120))
    out: dict[str, Any] = {
        "live": await client.is_server_live(spec["http"]),
        "model_ready": await client.is_model_ready(spec["http"], spec["model"]),
    }
    try:
        body = {"instances": [{"image_bytes": {"b64": b}, "key": str(i)} for i, b in enumerate(spec["images"])]}
        out["predict"] = await client.infer(spec["http"], body, model_name=spec["model"])
    finally:
        await client.close()
    return out


SCENARIOS = {"rest": rest, "grpc": grpc, "v1": v1}

if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        print(json.dumps(asyncio.run(SCENARIOS[sys.argv[1]](json.load(f)))))
