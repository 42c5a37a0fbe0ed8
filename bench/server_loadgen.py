"""A small closed-loop HTTP/1.1 load generator for the server benchmark (loopback only).

``connections`` keep-alive connections each send the same prepared request again as soon as the
previous answer arrives, for a fixed duration after a warm-up. It is written on raw asyncio
streams so that it costs the shared CPU as little as possible (both servers pay the same). A 503
is counted apart and its ``Retry-After`` is honoured (capped), as a well-behaved client would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

RETRY_AFTER_CAP_S = 1.0


@dataclass
class Result:
    """What one load point measured."""

    connections: int
    seconds: float
    ok_latencies: list[float] = field(default_factory=list)
    rejected_latencies: list[float] = field(default_factory=list)
    other: dict[int, int] = field(default_factory=dict)
    images_per_request: int = 1

    @property
    def rps(self) -> float:
        return len(self.ok_latencies) / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.rps * self.images_per_request

    def pct(self, q: float, rejected: bool = False) -> float:
        values = sorted(self.rejected_latencies if rejected else self.ok_latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def rejected(self) -> int:
        return len(self.rejected_latencies)


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers


async def run_point(
    port: int, request: bytes, connections: int, duration_s: float, warmup_s: float, images_per_request: int = 1
) -> Result:
    """Run ``connections`` closed-loop clients; only answers after the warm-up are counted."""
    result = Result(connections=connections, seconds=duration_s, images_per_request=images_per_request)
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    writer.write(request)
                    status, headers = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    result.other[-1] = result.other.get(-1, 0) + 1  # -1: connection reset
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                done = time.perf_counter()
                counted = sent >= measure_from and done <= stop_at
                if status == 200:
                    if counted:
                        result.ok_latencies.append(done - sent)
                elif status == 503:
                    if counted:
                        result.rejected_latencies.append(done - sent)
                    wait = min(RETRY_AFTER_CAP_S, float(headers.get("retry-after", "0") or 0))
                    await asyncio.sleep(max(0.0, min(wait, stop_at - time.perf_counter())))
                else:
                    result.other[status] = result.other.get(status, 0) + 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return result
