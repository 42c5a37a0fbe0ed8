"""Resource exhaustion by clients: many connections that send bodies slowly, and requests that
name many huge images. The real server in its own process; memory is the kernel's peak RSS
(`VmHWM`) of the front end and of the worker."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support.serving import ExportedModel, ServerProcess, image_bytes

MIB = 1 << 20
DECLARED = 33_000_000  # each slow body announces just under the default 32 MiB limit
SENT = 8 * MIB  # ... sends this much of it, then stalls
SENDERS = 40  # 320 MiB of bodies in all, well past the default 128 MiB budget for bodies in flight
BODY_TIMEOUT_S = 5


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def lone_server(model_v1: ExportedModel, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own (peak memory is per process), with default body limits and one worker."""
    proc = ServerProcess(model=model_v1.path, args=["--workers", "1", "--body-timeout-s", str(BODY_TIMEOUT_S)]).start(
        tmp_path
    )
    yield proc
    assert proc.stop() == 0, proc.logs()


def stall(port: int, answers: list[bytes]) -> None:
    """Announce a large body, send part of it, then wait for whatever the server answers."""
    head = (
        f"POST /v1/models/tiny-cnn:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(120)
        try:
            sock.sendall(head + bytes(SENT))
            answers.append(sock.recv(4096))
        except OSError as e:  # refused and closed while still sending: what was answered, if anything
            answers.append(f"closed: {e}".encode())


def test_slow_bodies_on_many_connections_hold_bounded_memory_and_time_out(lone_server):
    pid = lone_server.proc.pid
    before = peak_rss(pid)
    answers: list[bytes] = []
    threads = [threading.Thread(target=stall, args=(lone_server.port, answers)) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    growth = peak_rss(pid) - before
    assert growth < 160 * MIB, f"the front end grew by {growth / MIB:.0f} MiB for {SENDERS} stalled bodies"
    statuses = [a.split(b" ", 2)[1] if a.startswith(b"HTTP/1.1 ") else a[:40] for a in answers]
    refused, timed_out = statuses.count(b"503"), statuses.count(b"408")
    assert timed_out >= 1 and refused >= SENDERS - 128 * MIB // DECLARED, statuses
    assert refused + timed_out + sum(s.startswith(b"closed") for s in statuses) == SENDERS, statuses
    # The stalled bodies gave their budget back: a real request is answered.
    ok = requests.post(
        f"{lone_server.url}/v1/models/tiny-cnn:classify",
        data=image_bytes(1),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert ok.status_code == 200, ok.text


def huge_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 200)).save(out, "PNG", compress_level=9)
    return out.getvalue()


def test_a_request_naming_many_huge_images_is_refused_before_decoding(lone_server):
    image = huge_png(6000)  # 36 megapixels, under the per-image limit of 40; about 100 KiB
    images = [base64.b64encode(image).decode()] * 64
    body = {"inputs": [{"name": "image", "shape": [64], "datatype": "BYTES", "data": images}]}
    assert len(json.dumps(body)) < 16 * MIB
    worker = lone_server.worker_pids()[0]
    before = peak_rss(worker)

    answer = requests.post(f"{lone_server.url}/v2/models/tiny-cnn/infer", json=body, timeout=120)

    assert answer.status_code == 413, answer.text
    assert answer.json()["error"].startswith(
        "the request's 64 images hold 2304000000 pixels together, above the limit of 128000000 per request"
    )
    growth = peak_rss(worker) - before
    assert growth < 64 * MIB, f"the worker grew by {growth / MIB:.0f} MiB (one such image decodes to 103 MiB)"


@pytest.fixture
def guarded_server(model_v1: ExportedModel, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with a short header timeout and room for only a few connections."""
    args = ["--workers", "1", "--header-timeout-s", "2", "--max-connections", str(CONNECTIONS)]
    proc = ServerProcess(model=model_v1.path, args=args).start(tmp_path)
    yield proc
    assert proc.stop() == 0, proc.logs()


CONNECTIONS = 3


def dribble_head(port: int, lines: int, pause_s: float) -> tuple[int, bytes]:
    """Send a request head one header line at a time; how many lines went out before the server
    closed the connection, and what it answered."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(pause_s)
        sent = 0
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            for sent in range(1, lines + 1):
                try:
                    answer = sock.recv(4096)
                    return sent, answer  # answered or closed (b"") before the head was complete
                except TimeoutError:
                    pass
                sock.sendall(f"X-Slow-{sent}: {'a' * 10}\r\n".encode())
        except OSError as e:  # reset while sending: closed by the server
            return sent, f"closed: {e}".encode()
        return sent, b"never closed"


def test_a_request_head_sent_slowly_is_cut_off_at_the_header_timeout(guarded_server):
    lines, pause_s = 100, 0.25  # the whole head would take 25 s; the timeout is 2 s
    sent, answer = dribble_head(guarded_server.port, lines, pause_s)

    assert answer == b"" or answer.startswith(b"closed"), answer[:200]
    # No line reset the timer: closed about 2 s (8 lines) after it opened, long before the 25 s head ended.
    assert sent < lines, "the slow head was read to its end"
    live = requests.get(f"{guarded_server.url}/v2/health/live", timeout=10)
    assert live.status_code == 200, live.text


def test_connections_past_the_limit_are_answered_503_and_closed(guarded_server):
    held = [socket.create_connection(("127.0.0.1", guarded_server.port)) for _ in range(CONNECTIONS)]
    try:
        with socket.create_connection(("127.0.0.1", guarded_server.port)) as extra:
            extra.settimeout(10)
            answer = extra.recv(4096)
            assert extra.recv(4096) == b"", "the refused connection was left open"
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 503 Service Unavailable", answer
        assert b"Retry-After: 1" in rest and b"too many connections" in rest, answer
    finally:
        for sock in held:
            sock.close()
    # Once the server has seen the held connections close, there is room again; its counter says
    # how many were refused (the one above, and any of these tries that came before it saw them).
    refused = 1
    for _ in range(50):
        metrics = requests.get(f"{guarded_server.url}/metrics", timeout=10)
        if metrics.status_code != 503:
            break
        refused += 1
        time.sleep(0.1)
    assert metrics.status_code == 200, metrics.text
    assert f"modelops_connections_refused_total {refused:.1f}" in metrics.text, metrics.text[-2000:]
