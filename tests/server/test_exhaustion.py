"""Resource exhaustion by clients: many connections that send bodies slowly, and requests that
name many huge images. The real server in its own process; memory is the kernel's peak RSS
(`VmHWM`) of the front end and of the worker."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
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
