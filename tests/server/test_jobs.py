"""The asynchronous job API on a real Redis (Debian's redis-server): submit, poll, callback, crash."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading

import pytest
import requests
from aiohttp import web

from tests.support.jobs import NEEDS_REDIS, expected_top, kill_consumer_mid_job, wait_job
from tests.support.serving import (
    CLASSES,
    LIVENESS_S,
    ExportedModel,
    ServerProcess,
    free_port,
    image_bytes,
)

pytestmark = NEEDS_REDIS


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


def test_job_takes_file_uploads_under_any_field_name(job_server: ServerProcess):
    files = [("images", (f"{i}.png", image_bytes(700 + i), "image/png")) for i in range(2)]
    r = requests.post(f"{job_server.url}/v1/jobs", data={"note": "x"}, files=files, timeout=30)
    assert r.status_code == 202, r.text
    doc = wait_job(job_server, r.json()["id"])
    assert doc["status"] == "completed" and doc["done"] == 2
    assert all(res["predictions"] for res in doc["results"])


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
        ({"data": {"note": "x"}, "files": {"x": (None, b"y")}}, 400, "the multipart body has no file"),
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
        "multipart-without-a-file",
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
