"""The asynchronous job API on a real Redis (Debian's redis-server): submit, poll, callback, crash."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import requests
from aiohttp import web
from PIL import Image

from tests.support.serving import (
    CLASSES,
    LIVENESS_S,
    SIZE,
    ExportedModel,
    ServerProcess,
    free_port,
    image_bytes,
    normalise,
    redis_server_binary,
    softmax,
)
from tests.support.tools import in_ci

# Skipped on a developer machine without Redis; in CI (tests.support.tools.in_ci) a missing
# redis-server fails instead.
pytestmark = pytest.mark.skipif(
    redis_server_binary() is None and not in_ci(), reason="needs Debian's redis-server (hack/setup.sh)"
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            redis_server_binary() or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    deadline = time.monotonic() + LIVENESS_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def job_server(
    model_v1: ExportedModel, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        model=model_v1.path,
        args=[
            "--model-version",
            "v1",
            "--redis-url",
            redis_url,
            "--job-workers",
            "1",
            "--max-batch-size",
            "1",
            "--job-callback-hosts",
            "127.0.0.1",
        ],
    ).start(tmp_path_factory.mktemp("job-server"))
    yield server
    assert server.stop() == 0, server.logs()


def consumer_pid(server: ServerProcess, after: int = 0) -> int:
    """The pid of the latest job consumer that logged 'job consumer ready' (newer than ``after``)."""
    import json  # noqa: PLC0415

    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        pids = [json.loads(line)["pid"] for line in server.logs().splitlines() if '"job consumer ready"' in line]
        if pids and pids[-1] != after:
            return int(pids[-1])
        time.sleep(0.05)
    raise AssertionError("no job consumer became ready")


def expected_top(model: ExportedModel, data: bytes) -> tuple[int, float]:
    """The reference answer; square images larger than the model's input are resized with PIL's bilinear."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    probs = softmax(model.logits(normalise(np.asarray(img))[None]))[0]
    best = int(np.argmax(probs))
    return best, float(probs[best])


def wait_job(server: ServerProcess, job_id: str, status: str = "completed") -> dict:
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        doc = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
        if doc["status"] == status:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {status}: {doc}")


def kill_consumer_mid_job(
    server: ServerProcess, body: dict, while_dead: Callable[[dict], None] | None = None
) -> tuple[str, dict]:
    """Submit `body` and SIGKILL the consumer once some, not all, images are done; (job id, job then).

    `while_dead` sees the job document after the kill, before a new consumer starts; this returns
    once the supervisor has started one.
    """
    for _ in range(3):  # bounded retries in case the whole job finished before it could be stopped
        pid = consumer_pid(server)
        job_id = requests.post(f"{server.url}/v1/jobs", json=body, timeout=60).json()["id"]
        deadline = time.monotonic() + LIVENESS_S
        done = 0
        while done == 0 and time.monotonic() < deadline:
            done = requests.get(f"{server.url}/v1/jobs/{job_id}?results=false", timeout=10).json()["done"]
        os.kill(pid, signal.SIGSTOP)  # freeze it, then look: is the job really unfinished?
        doc = requests.get(f"{server.url}/v1/jobs/{job_id}?results=false", timeout=10).json()
        if doc["done"] < doc["total"]:
            os.kill(pid, signal.SIGKILL)
            assert 0 < doc["done"] < doc["total"]
            if while_dead is not None:
                while_dead(doc)
            consumer_pid(server, after=pid)  # the supervisor started a new consumer
            return job_id, doc
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("the job always finished before the consumer could be killed")


def test_job_submit_poll_and_results(job_server: ServerProcess, model_v1: ExportedModel):
    images = [image_bytes(500 + i) for i in range(5)] + [b"not an image"]
    r = requests.post(
        f"{job_server.url}/v1/jobs",
        json={"images": [base64.b64encode(b).decode() for b in images], "topK": 2},
        timeout=30,
    )
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["total"] == 6
    doc = wait_job(job_server, job["id"])
    assert doc["done"] == 6 and doc["model_version"] == "v1" and doc["model_name"] == "tiny-cnn"
    for result, data in zip(doc["results"][:5], images[:5], strict=True):
        best, score = expected_top(model_v1, data)
        assert len(result["predictions"]) == 2
        assert result["predictions"][0]["label"] == CLASSES[best]
        assert result["predictions"][0]["score"] == pytest.approx(score, abs=1e-5)
    assert doc["results"][5]["reason"] == "unsupported_media_type"


def test_job_multipart_and_callback(job_server: ServerProcess):
    received: list[dict] = []

    async def scenario() -> None:
        got = asyncio.Event()

        async def hook(request: web.Request) -> web.Response:
            received.append(await request.json())
            got.set()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        files = [("file", (f"{i}.png", image_bytes(600 + i), "image/png")) for i in range(3)]
        r = await asyncio.to_thread(
            requests.post,
            f"{job_server.url}/v1/jobs",
            files=files,
            params={"top_k": "1", "callback_url": f"http://127.0.0.1:{port}/hook"},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        await asyncio.wait_for(got.wait(), LIVENESS_S)
        await runner.cleanup()
        assert received[0]["id"] == r.json()["id"]

    asyncio.run(scenario())
    (doc,) = received
    assert doc["status"] == "completed" and doc["done"] == 3 and len(doc["results"]) == 3
    assert all(len(res["predictions"]) == 1 for res in doc["results"])


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"json": {"images": []}}, 400, "at least one image"),
        ({"json": {"images": ["%%"]}}, 400, "base64"),
        ({"json": {"pictures": []}}, 400, "images"),
        ({"json": {"images": ["aGk="], "callbackUrl": "file:///etc/passwd"}}, 400, "http(s)"),
        ({"json": {"images": ["aGk="], "callbackUrl": 123}}, 400, "callbackUrl must be a string"),
        (
            {"json": {"images": ["aGk="], "callbackUrl": "http://169.254.169.254/latest/meta-data"}},
            400,
            "callbackUrl host '169.254.169.254' is not allowed (--job-callback-hosts: 127.0.0.1)",
        ),
        ({"json": {"images": ["aGk="], "topK": "three"}}, 400, "topK must be an integer"),
        ({"json": ["aGk="]}, 400, "send {"),
        ({"files": [("file", ("a.png", b"x", "image/png"))], "params": {"top_k": "x"}}, 400, "topK must be an integer"),
        (
            {
                "data": b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\nabc",
                "headers": {"Content-Type": "multipart/form-data; boundary=zz"},
            },
            400,
            "malformed multipart body",
        ),
        ({"data": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "multipart"),
    ],
    ids=[
        "empty",
        "bad-base64",
        "no-images",
        "bad-callback",
        "callback-not-a-string",
        "callback-host-not-allowed",
        "topk-not-an-integer",
        "json-not-an-object",
        "multipart-topk-not-an-integer",
        "malformed-multipart",
        "content-type",
    ],
)
def test_job_rejects_bad_submissions(job_server: ServerProcess, kwargs: dict, status: int, fragment: str):
    r = requests.post(f"{job_server.url}/v1/jobs", timeout=30, **kwargs)
    assert r.status_code == status and fragment in r.json()["error"]


def test_unknown_job_is_404(job_server: ServerProcess):
    r = requests.get(f"{job_server.url}/v1/jobs/0123", timeout=10)
    assert r.status_code == 404 and "no job" in r.json()["error"]


def test_job_results_survive_a_consumer_killed_mid_job(job_server: ServerProcess, model_v1: ExportedModel):
    """SIGKILL the consumer half-way: the restarted one resumes; finished results are kept, not redone."""
    images = [image_bytes(700 + i, size=256) for i in range(120)]
    body = {"images": [base64.b64encode(b).decode() for b in images], "topK": 1}
    job_id, _ = kill_consumer_mid_job(job_server, body)
    final = wait_job(job_server, job_id)
    assert final["done"] == final["total"] == len(images)
    assert final["runs"] == 2  # started once, resumed once after the crash
    assert [r["index"] for r in final["results"]] == list(range(len(images)))
    for result, data in zip(final["results"], images, strict=True):
        best, _ = expected_top(model_v1, data)
        assert result["predictions"][0]["index"] == best


def test_a_callback_that_never_answers_holds_up_no_other_job_and_redirects_are_not_followed(
    job_server: ServerProcess, redis_url: str
):
    import redis  # noqa: PLC0415

    held: list[socket.socket] = []
    black_hole = socket.create_server(("127.0.0.1", 0))

    def hold_connections() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                held.append(black_hole.accept()[0])

    threading.Thread(target=hold_connections, daemon=True).start()
    redirected: list[str] = []

    async def scenario() -> dict:
        async def elsewhere(request: web.Request) -> web.Response:
            redirected.append(request.path)
            return web.Response(text="ok")

        async def hook(request: web.Request) -> web.Response:
            return web.Response(status=307, headers={"Location": f"{target}/stolen"})

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/stolen", elsewhere)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        target = f"http://127.0.0.1:{port}"
        await web.TCPSite(runner, "127.0.0.1", port).start()
        body = {"images": [base64.b64encode(image_bytes(900)).decode()]}
        slow = {**body, "callbackUrl": f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"}
        bounced = {**body, "callbackUrl": f"{target}/hook"}
        ids = []
        for doc in (slow, bounced, body):
            r = await asyncio.to_thread(requests.post, f"{job_server.url}/v1/jobs", json=doc, timeout=30)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        last = await asyncio.to_thread(wait_job, job_server, ids[2])
        await asyncio.sleep(1)  # the redirect, had it been followed, would have arrived by now
        await runner.cleanup()
        return last

    last = asyncio.run(scenario())
    # The job after the black-holed callback completed while that callback still waits for an answer.
    assert last["status"] == "completed" and held and all(s.fileno() != -1 for s in held)
    assert redirected == []
    assert redis.Redis.from_url(redis_url).xlen("modelops:jobs") == 0  # finished entries leave the stream
    for s in held:
        s.close()
    black_hole.close()
