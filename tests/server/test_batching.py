"""Dynamic batching: concurrent requests really share batches, and each answer reaches its caller."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import numpy as np
import requests

from tests.support.serving import ExportedModel, ServerProcess, image_bytes, metric_value, normalise, pixels_of

MODEL = "tiny-cnn"


async def _send_all(url: str, bodies: list[dict]) -> list[dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(body: dict) -> dict:
            async with session.post(url, json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def test_concurrent_requests_are_batched_and_answered_to_their_callers(server: ServerProcess, model_v1: ExportedModel):
    images = [image_bytes(1000 + i) for i in range(48)]
    # Each request carries its own id and 1 to 3 images, so a mix-up would show in ids, shapes and values.
    bodies, expected = [], []
    offset = 0
    for i in range(24):
        n = 1 + i % 3
        chunk = images[offset % len(images) : offset % len(images) + n]
        offset += n
        bodies.append(
            {
                "id": f"caller-{i}",
                "inputs": [
                    {
                        "name": "image",
                        "shape": [len(chunk)],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(b).decode() for b in chunk],
                    }
                ],
            }
        )
        expected.append(model_v1.logits(np.stack([normalise(pixels_of(b)) for b in chunk])))
    before = requests.get(f"{server.url}/metrics", timeout=10).text
    answers = asyncio.run(_send_all(f"{server.url}/v2/models/{MODEL}/infer", bodies))
    after = requests.get(f"{server.url}/metrics", timeout=10).text

    for i, (answer, want) in enumerate(zip(answers, expected, strict=True)):
        assert answer["id"] == f"caller-{i}"
        got = np.array(answer["outputs"][0]["data"]).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    batches = delta("modelops_batch_size_count", model=MODEL)
    rows = delta("modelops_batch_size_sum", model=MODEL)
    assert rows == sum(len(b["inputs"][0]["data"]) for b in bodies)
    # Batching happened: fewer batches than requests, and at least one batch above 4 rows,
    # which no single request (at most 3 images) can fill alone.
    assert batches < len(bodies)
    assert batches - delta("modelops_batch_size_bucket", model=MODEL, le="4.0") > 0


def test_batches_never_exceed_the_maximum(server: ServerProcess):
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = metric_value(text, "modelops_batch_size_count", model=MODEL)
    within = metric_value(text, "modelops_batch_size_bucket", model=MODEL, le="8.0")
    assert total > 0 and within == total  # --max-batch-size 8


def test_request_larger_than_the_batch_limit_is_run_in_chunks(server: ServerProcess, model_v1: ExportedModel):
    batch = np.random.default_rng(9).standard_normal((20, 3, 32, 32)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}]
    }
    doc = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=60).json()
    got = np.array(doc["outputs"][0]["data"]).reshape(20, -1)
    np.testing.assert_allclose(got, model_v1.logits(batch), rtol=1e-4, atol=1e-4)
