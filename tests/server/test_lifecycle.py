"""Lifecycle: digest checks, hot swap under load, backpressure, graceful drain, a worker dying.

Each test starts its own server (a real process) with settings that make the situation happen:
a long batching window holds requests in flight for a known while, without any clock assertion.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests

from tests.support.serving import (
    LIVENESS_S,
    ExportedModel,
    ServerProcess,
    image_bytes,
    metric_value,
    normalise,
    pixels_of,
    softmax,
    wait_for_depth,
    write_card,
)

MODEL = "tiny-cnn"
PNG = image_bytes(77)
CONTROL_TOKEN = "t0ken-for-the-hot-swap-tests"
CONTROL_ENV = {"MODELOPS_MODEL_CONTROL_TOKEN": CONTROL_TOKEN}
CONTROL_HEADERS = {"Authorization": f"Bearer {CONTROL_TOKEN}"}


def classify_url(server: ServerProcess) -> str:
    return f"{server.url}/v1/models/{MODEL}:classify?top_k=5"


async def _classify_many(url: str, n: int) -> list[tuple[int, dict, dict[str, str]]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> tuple[int, dict, dict[str, str]]:
            async with session.post(url, data=PNG, headers={"Content-Type": "image/png"}) as r:
                return r.status, await r.json(), dict(r.headers)

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("which", ["deployment-digest", "card-digest"])
def test_refuses_a_model_whose_digest_does_not_match(tmp_path: Path, model_v1: ExportedModel, which: str):
    args: list[str] = []
    model = model_v1.path
    if which == "deployment-digest":
        args = ["--model-digest", "sha256:" + "0" * 64]
    else:  # a tampered ONNX file beside an honest card
        model = tmp_path / "model.onnx"
        model.write_bytes(model_v1.path.read_bytes() + b"\x00")
        Path(f"{model}.card.json").write_text(Path(f"{model_v1.path}.card.json").read_text())
    proc = ServerProcess(model=model, args=args).start(tmp_path, wait_ready=False)
    assert proc.proc is not None
    assert proc.proc.wait(LIVENESS_S) == 1
    assert "refusing to load it" in proc.logs()


def test_hot_swap_under_load_fails_no_request(tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=["--model-version", "v1", "--enable-model-control", "--workers", "2"],
        env=CONTROL_ENV,
    ).start(tmp_path)
    expected = {
        "v1": softmax(model_v1.logits(normalise(pixels_of(PNG))[None]))[0],
        "v2": softmax(model_v2.logits(normalise(pixels_of(PNG))[None]))[0],
    }
    assert not np.allclose(expected["v1"], expected["v2"], atol=1e-3)  # the two versions answer differently

    async def scenario() -> tuple[list[tuple[float, int, dict]], float, int, dict]:
        results: list[tuple[float, int, dict]] = []
        swapped = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def client() -> None:
                after_swap = 0
                for _ in range(400):  # bounded; stops 15 requests after the swap
                    started = time.monotonic()
                    async with session.post(classify_url(server), data=PNG, headers={"Content-Type": "image/png"}) as r:
                        results.append((started, r.status, await r.json()))
                    if swapped.is_set():
                        after_swap += 1
                        if after_swap >= 15:
                            return

            clients = [asyncio.create_task(client()) for _ in range(4)]
            await asyncio.sleep(0.3)
            body = {"parameters": {"uri": str(model_v2.path), "digest": model_v2.digest, "version": "v2"}}
            load_url = f"{server.url}/v2/repository/models/{MODEL}/load"
            async with session.post(load_url, json=body, headers=CONTROL_HEADERS) as r:
                load_status, load_doc = r.status, await r.json()
            swap_done = time.monotonic()
            swapped.set()
            await asyncio.gather(*clients)
            return results, swap_done, load_status, load_doc

    try:
        results, swap_done, load_status, load_doc = asyncio.run(scenario())
    finally:
        assert server.stop() == 0
    assert load_status == 200 and load_doc["version"] == "v2" and load_doc["digest"] == model_v2.digest
    assert [status for _, status, _ in results if status != 200] == []
    versions = {doc["model_version"] for _, _, doc in results}
    assert versions == {"v1", "v2"}
    for started, _, doc in results:
        if started > swap_done:
            assert doc["model_version"] == "v2"  # requests after the switch use the new model
        scores = {p["index"]: p["score"] for p in doc["predictions"]}
        want = expected[doc["model_version"]]
        assert all(abs(scores[i] - want[i]) < 1e-4 for i in scores)  # and the answer matches its version


@pytest.mark.parametrize("path", ["classify", "infer"])
def test_a_request_whose_body_arrives_across_a_hot_swap_is_served_by_the_new_version(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel, path: str
):
    """The model is routed when the headers arrive; a swap that ends while the body is still coming
    has already dropped the old version from the workers (nothing admitted to it was in flight). The
    request must be served by the new version, not refused with 503 (a CI run caught two)."""
    server = ServerProcess(
        model=model_v1.path, args=["--model-version", "v1", "--enable-model-control"], env=CONTROL_ENV
    ).start(tmp_path)
    if path == "classify":
        url, ctype, payload = classify_url(server), "image/png", PNG
    else:
        url, ctype = f"{server.url}/v2/models/{MODEL}/infer", "application/json"
        image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PNG).decode()]}
        payload = json.dumps({"inputs": [image]}).encode()

    async def scenario() -> tuple[int, dict, int]:
        swapped = asyncio.Event()

        async def body():  # half the body, then the rest once the swap is over
            yield payload[: len(payload) // 2]
            await swapped.wait()
            yield payload[len(payload) // 2 :]

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            request = asyncio.create_task(session.post(url, data=body(), headers={"Content-Type": ctype}))
            await asyncio.sleep(0.5)  # the headers are in and the model routed
            load = {"parameters": {"uri": str(model_v2.path), "digest": model_v2.digest, "version": "v2"}}
            async with session.post(
                f"{server.url}/v2/repository/models/{MODEL}/load", json=load, headers=CONTROL_HEADERS
            ) as r:
                load_status = r.status
            await asyncio.sleep(0.5)  # the workers drop v1
            swapped.set()
            async with await request as r:
                return r.status, await r.json(), load_status

    try:
        status, doc, load_status = asyncio.run(scenario())
    finally:
        assert server.stop() == 0
    assert load_status == 200
    assert status == 200, doc
    assert doc["model_version"] == "v2"


def test_hot_swap_refuses_a_bad_digest_and_keeps_serving(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel
):
    server = ServerProcess(
        model=model_v1.path, args=["--model-version", "v1", "--enable-model-control"], env=CONTROL_ENV
    ).start(tmp_path)
    try:
        body = {"parameters": {"uri": str(model_v2.path), "digest": model_v1.digest, "version": "v2"}}
        r = requests.post(
            f"{server.url}/v2/repository/models/{MODEL}/load", json=body, headers=CONTROL_HEADERS, timeout=60
        )
        assert r.status_code == 400 and "refusing to load" in r.json()["error"]
        doc = requests.post(classify_url(server), data=PNG, headers={"Content-Type": "image/png"}, timeout=30).json()
        assert doc["model_version"] == "v1"
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert metric_value(text, "modelops_model_loads_total", result="failure") == 1
    finally:
        assert server.stop() == 0


def test_model_control_needs_a_token_to_start(tmp_path: Path, model_v1: ExportedModel):
    proc = ServerProcess(model=model_v1.path, args=["--enable-model-control"]).start(tmp_path, wait_ready=False)
    assert proc.proc is not None and proc.proc.wait(LIVENESS_S) == 2
    assert "enable_model_control needs model_control_token (MODELOPS_MODEL_CONTROL_TOKEN)" in proc.logs()


def test_a_hot_swap_needs_the_token_a_json_body_and_a_digest(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel
):
    server = ServerProcess(
        model=model_v1.path, args=["--model-version", "v1", "--enable-model-control"], env=CONTROL_ENV
    ).start(tmp_path)
    (tmp_path / "internal.onnx.card.json").write_text('{"secret": "internal-token-123"}')
    url = f"{server.url}/v2/repository/models/{MODEL}/load"
    good = {"parameters": {"uri": str(model_v2.path), "digest": model_v2.digest}}
    form = f"parameters={json.dumps(good['parameters'])}"
    cases = [
        ({"json": good}, 403, "a hot swap needs the header Authorization: Bearer <model control token>"),
        ({"json": good, "headers": {"Authorization": "Bearer wrong-token-wrong-token"}}, 403, "Authorization: Bearer"),
        # What an HTML form on another site can send without a CORS preflight:
        ({"data": form, "headers": {**CONTROL_HEADERS, "Content-Type": "text/plain"}}, 415, "send Content-Type"),
        ({"data": form, "headers": {**CONTROL_HEADERS, "Content-Type": "application/x-www-form-urlencoded"}}, 415, ""),
        (
            {"json": {"parameters": {"uri": str(model_v2.path)}}, "headers": CONTROL_HEADERS},
            400,
            "uri and digest are required",
        ),
        (
            {
                "json": {"parameters": {"uri": str(tmp_path / "internal.onnx"), "digest": model_v2.digest}},
                "headers": CONTROL_HEADERS,
            },
            400,
            "invalid model card",
        ),
    ]
    try:
        for kwargs, status, words in cases:
            r = requests.post(url, timeout=60, **kwargs)
            assert r.status_code == status and words in r.json()["error"], (kwargs, r.text)
            assert "internal-token-123" not in r.text
        doc = requests.post(classify_url(server), data=PNG, headers={"Content-Type": "image/png"}, timeout=30).json()
        assert doc["model_version"] == "v1"  # nothing was swapped
    finally:
        assert server.stop() == 0


def test_model_control_is_off_by_default(server: ServerProcess, model_v2: ExportedModel):
    body = {"parameters": {"uri": str(model_v2.path), "digest": model_v2.digest}}
    r = requests.post(f"{server.url}/v2/repository/models/{MODEL}/load", json=body, headers=CONTROL_HEADERS, timeout=30)
    assert r.status_code == 403 and "--enable-model-control" in r.json()["error"]


def test_full_queue_answers_503_with_retry_after(tmp_path: Path, model_v1: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=[
            "--queue-capacity",
            "2",
            "--max-batch-size",
            "64",
            "--max-batch-delay-ms",
            "1500",
            "--batch-wait",
            "window",
            "--retry-after-s",
            "3",
        ],
    ).start(tmp_path)
    try:
        results = asyncio.run(_classify_many(classify_url(server), 10))
        text = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        assert server.stop() == 0
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) + len(refused) == 10
    assert len(ok) >= 2 and len(refused) >= 1
    for _, doc, headers in refused:
        assert headers["Retry-After"] == "3"
        assert "queue is full" in doc["error"]
    assert metric_value(text, "modelops_errors_total", reason="overloaded") == len(refused)
    assert metric_value(text, "modelops_requests_total", code="503") == len(refused)


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path, model_v1: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *("--max-batch-size", "64", "--max-batch-delay-ms", "2500", "--batch-wait", "window"),
            *("--drain-timeout-s", "60"),
        ],
    ).start(tmp_path)
    assert server.proc is not None

    async def scenario() -> tuple[list[tuple[int, dict, dict[str, str]]], bool]:
        requests_task = asyncio.create_task(_classify_many(classify_url(server), 6))
        await asyncio.to_thread(wait_for_depth, server, 6)
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        refused = False
        for _ in range(500):  # the listening socket closes while the 6 requests are still held
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                    pass
            except ConnectionRefusedError:
                refused = True
                break
            await asyncio.sleep(0.01)
        return await requests_task, refused

    try:
        results, refused = asyncio.run(scenario())
        assert server.proc.wait(LIVENESS_S) == 0
    finally:  # a failure above must not leave the server running
        with contextlib.suppress(AssertionError):
            server.stop()
    assert refused
    assert [status for status, _, _ in results] == [200] * 6
    logs = server.logs()
    assert "shutting down" in logs and '"message": "stopped"' in logs


def test_a_dead_worker_fails_its_requests_fast_and_is_replaced(tmp_path: Path, model_v1: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *("--max-batch-size", "64", "--max-batch-delay-ms", "3000", "--batch-wait", "window"),
            *("--request-timeout-s", "120"),
        ],
    ).start(tmp_path)
    try:

        async def scenario() -> list[tuple[int, dict, dict[str, str]]]:
            task = asyncio.create_task(_classify_many(classify_url(server), 3))
            await asyncio.to_thread(wait_for_depth, server, 3)
            (pid,) = server.worker_pids()
            os.kill(pid, signal.SIGKILL)
            return await task

        results = asyncio.run(scenario())
        assert [status for status, _, _ in results] == [503] * 3
        assert all("died" in doc["error"] and headers.get("Retry-After") for _, doc, headers in results)
        status = 0
        deadline = time.monotonic() + LIVENESS_S
        while status != 200 and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                status = requests.post(
                    classify_url(server), data=PNG, headers={"Content-Type": "image/png"}, timeout=30
                ).status_code
            time.sleep(0.1)
        assert status == 200  # the replacement worker loaded the model and serves
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert metric_value(text, "modelops_worker_restarts_total") == 1
        assert metric_value(text, "modelops_errors_total", reason="worker_crashed") == 3
    finally:
        assert server.stop() == 0


def test_workers_exit_when_their_front_end_is_killed(tmp_path: Path, model_v1: ExportedModel):
    """A front end killed outright (SIGKILL, the OOM killer) cannot stop its workers: each sees its
    pipe from the front end end, and exits instead of holding its memory (a GPU's, too) for good."""
    server = ServerProcess(model=model_v1.path, args=["--workers", "2"]).start(tmp_path)
    pids = server.worker_pids()
    assert server.proc is not None and len(pids) == 2

    def gone(pid: int) -> bool:  # exited: no such process, or a zombie nobody reaped yet
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    assert not any(gone(pid) for pid in pids)
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + LIVENESS_S
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if not gone(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their front end"


def test_the_page_escapes_the_model_name_and_carries_a_content_security_policy(tmp_path: Path, model_v1: ExportedModel):
    model = tmp_path / "model.onnx"
    model.write_bytes(model_v1.path.read_bytes())
    write_card(model, model_v1.digest, name='<img src=x onerror="alert(1)">')
    server = ServerProcess(model=model).start(tmp_path)
    try:
        page = requests.get(f"{server.url}/", headers={"Accept": "text/html"}, timeout=30)
    finally:
        assert server.stop() == 0
    assert "<img src=x" not in page.text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "frame-ancestors 'none'" in policy


def test_a_reload_during_an_unload_keeps_the_model_its_old_requests_finish_on(tmp_path: Path, model_v1: ExportedModel):
    """Unload while requests wait for their batch, load the same file again before they finish:
    when the last old request is answered, the version serving again must not be dropped."""
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *("--model-digest", model_v1.digest),
            *("--max-batch-size", "64", "--max-batch-delay-ms", "4000", "--batch-wait", "window"),
        ],
        env={**CONTROL_ENV, "MODELOPS_ENABLE_MODEL_CONTROL": "true"},
    ).start(tmp_path)
    repo = f"{server.url}/v2/repository/models/{MODEL}"

    async def scenario() -> list[tuple[int, dict, dict[str, str]]]:
        waiting = asyncio.create_task(_classify_many(classify_url(server), 2))
        await asyncio.to_thread(wait_for_depth, server, 2)
        unload = await asyncio.to_thread(requests.post, f"{repo}/unload", headers=CONTROL_HEADERS, timeout=30)
        assert unload.status_code == 200, unload.text
        load = await asyncio.to_thread(requests.post, f"{repo}/load", headers=CONTROL_HEADERS, timeout=120)
        assert load.status_code == 200, load.text
        return await waiting

    try:
        old = asyncio.run(scenario())
        after = requests.post(classify_url(server), data=PNG, headers={"Content-Type": "image/png"}, timeout=60)
    finally:
        assert server.stop() == 0, server.logs()
    assert [status for status, _, _ in old] == [200, 200]
    assert after.status_code == 200, after.text
