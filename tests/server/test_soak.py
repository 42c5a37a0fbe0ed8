"""Soak: thousands of good and bad requests; the server's memory (front end + workers) stays flat,
and each kind of request gets its one answer every time."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.support.serving import ExportedModel, ServerProcess, image_bytes


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


#: The pixel cap the soak's server runs with (`--max-image-pixels`).
CAP = 4_000_000


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _photo(width: int, height: int) -> Image.Image:
    """A picture with detail everywhere (a Mandelbrot render in three channels), so that it
    compresses like a photograph rather than like a flat colour."""
    channels = [
        Image.effect_mandelbrot((width, height), (-2.0 + k * 0.1, -1.2, 1.0, 1.2), 60 + 20 * k) for k in range(3)
    ]
    return Image.merge("RGB", channels)


def _header_bomb() -> bytes:
    """12000×12000 in a few kB of PNG: refused from its header (IHDR), before any pixel is decoded."""
    return _png(Image.new("1", (12000, 12000)))


def _frame_bomb() -> bytes:
    """A GIF whose header (the logical screen) says 16×16 but whose frame is 3000×3000 (7 kB): it
    passes a check of the header alone; the pixel cap refuses it once the frame is read, before
    its pixels are decoded."""
    data = bytearray(_gif(Image.new("P", (3000, 3000), 0)))
    data[6:10] = struct.pack("<HH", 16, 16)
    return bytes(data)


def _gif(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="GIF")
    return buf.getvalue()


def _cap_bomb() -> bytes:
    """2000×2000 = exactly the cap, in a few kB of PNG (a 1000-fold expansion): it passes every
    check and must be decoded and answered, with the decoded 12 MB freed afterwards."""
    return _png(Image.new("1", (2000, 2000)))


@dataclass(frozen=True)
class Case:
    """One kind of request in the soak's mix, and the one status it must always get."""

    name: str
    kind: str  # "classify" or "infer"
    body: bytes
    content_type: str
    status: int
    bomb: bool = False
    message: str = ""  # what the error names (the `error` field), for the refusals


def _cases() -> list[Case]:
    good = image_bytes(1, size=64)
    four = {
        "inputs": [{"name": "image", "shape": [4], "datatype": "BYTES", "data": [base64.b64encode(good).decode()] * 4}]
    }
    short = b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1]}]}'
    return [
        Case("png", "classify", good, "image/png", 200),
        Case("jpeg", "classify", _jpeg(Image.open(io.BytesIO(image_bytes(2, size=300)))), "image/jpeg", 200),
        Case("photo-jpeg-1920x1080", "classify", _jpeg(_photo(1920, 1080)), "image/jpeg", 200),
        Case("photo-png-1024x768", "classify", _png(_photo(1024, 768)), "image/png", 200),
        Case("truncated", "classify", good[:100], "image/png", 400, message="truncated or corrupt"),
        Case("not-an-image", "classify", b"\x00" * 5000, "image/png", 415, message="cannot identify the image format"),
        Case(
            "header-bomb",
            "classify",
            _header_bomb(),
            "image/png",
            413,
            bomb=True,
            message=f"the image is 12000x12000 = 144000000 pixels, above the limit of {CAP}",
        ),
        Case(
            "frame-bomb",
            "classify",
            _frame_bomb(),
            "image/gif",
            413,
            bomb=True,
            message=f"the image is 3000x3000 = 9000000 pixels, above the limit of {CAP}",
        ),
        Case("cap-bomb", "classify", _cap_bomb(), "image/png", 200, bomb=True),
        Case("infer-4-images", "infer", json.dumps(four).encode(), "application/json", 200),
        Case("infer-short-data", "infer", short, "application/json", 400, message="input 'input'"),
        Case("infer-not-json", "infer", b"{" * 1000, "application/json", 400),
    ]


async def _hammer(server: ServerProcess, count: int) -> dict[str, Counter[int]]:
    """`count` requests cycling through the cases from 8 clients; each case's statuses, and the
    first error message of each case checked against the case's `message`."""
    cases = _cases()
    urls = {"classify": f"{server.url}/v1/models/tiny-cnn:classify", "infer": f"{server.url}/v2/models/tiny-cnn/infer"}
    statuses: dict[str, Counter[int]] = {case.name: Counter() for case in cases}
    wrong_messages: list[str] = []
    feed = itertools.islice(itertools.cycle(cases), count)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client() -> None:
            for case in feed:
                headers = {"Content-Type": case.content_type}
                async with session.post(urls[case.kind], data=case.body, headers=headers) as r:
                    body = await r.read()
                    statuses[case.name][r.status] += 1
                    if case.message and case.message not in json.loads(body).get("error", ""):
                        wrong_messages.append(f"{case.name}: {body[:300]!r}")

        await asyncio.gather(*(client() for _ in range(8)))
    assert wrong_messages == [], wrong_messages[:3]
    return statuses


def test_the_soak_mix_is_what_its_description_says():
    """A quarter of the requests are decompression bombs, of three kinds: refused from the header,
    refused by the pixel cap although the header passes, and exactly at the cap (answered); the
    heavy photos are real-size and under the cap."""
    cases = _cases()
    assert sum(c.bomb for c in cases) * 4 == len(cases)
    by_name = {c.name: c for c in cases}
    for name in ("header-bomb", "frame-bomb", "cap-bomb"):
        assert len(by_name[name].body) < 20_000  # a few kB that expand a thousand-fold or more
    screen = struct.unpack("<HH", by_name["frame-bomb"].body[6:10])
    assert screen == (16, 16) and Image.open(io.BytesIO(by_name["frame-bomb"].body)).size == (3000, 3000)
    assert Image.open(io.BytesIO(by_name["cap-bomb"].body)).size == (2000, 2000) and CAP == 2000 * 2000
    for name, size in (("photo-jpeg-1920x1080", (1920, 1080)), ("photo-png-1024x768", (1024, 768))):
        assert Image.open(io.BytesIO(by_name[name].body)).size == size and len(by_name[name].body) > 100_000


@pytest.mark.slow
def test_memory_stays_flat_under_good_and_bad_traffic(model_v1: ExportedModel, tmp_path: Path):
    server = ServerProcess(model=model_v1.path, args=["--workers", "2", "--max-image-pixels", str(CAP)]).start(tmp_path)
    assert server.proc is not None
    try:
        asyncio.run(_hammer(server, 1000))  # warm-up: allocator pools, caches, lazy imports
        baseline = tree_rss_bytes(server.proc.pid)
        samples = []
        totals: dict[str, Counter[int]] = {}
        for _ in range(5):
            for name, statuses in asyncio.run(_hammer(server, 3000)).items():
                totals.setdefault(name, Counter()).update(statuses)
            samples.append(tree_rss_bytes(server.proc.pid))
    finally:
        assert server.stop() == 0
    # Every request of each kind got that kind's one answer: 15000 requests, 1250 of each of the 12.
    expected = {case.name: {case.status: 15000 // len(_cases())} for case in _cases()}
    assert {name: dict(statuses) for name, statuses in totals.items()} == expected
    growth = max(samples) - baseline
    print(
        f"soak: RSS baseline {baseline / 2**20:.1f} MiB, after each 3000 requests: "
        + ", ".join(f"{x / 2**20:.1f}" for x in samples)
        + f" MiB; statuses { ({name: dict(c) for name, c in totals.items()}) }"
    )
    # 15000 requests after warm-up, a quarter of them decompression bombs (two refused, one at the cap and
    # decoded), a quarter corrupt data, and real-size photos: a leak of even 10 kB per request would add
    # 150 MB; allocator noise stays well below the bound.
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB: baseline {baseline}, samples {samples}"
