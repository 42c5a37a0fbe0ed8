"""gRPC next to REST: the same server process, model and payloads, side by side in one run.

    .venv/bin/python bench/grpc_vs_rest.py        # about 2 minutes on 2 cores
    .venv/bin/python bench/grpc_vs_rest.py --seconds 2  # a shorter smoke run

One ``python -m modelops_server`` (one worker) serves a small CNN (the server tests' model at
64×64, so that the protocol's cost is visible next to inference) on both its ports. Each payload
is sent in its REST form and its gRPC form, prepared once, by closed-loop clients (1 and 8
concurrent), alternating the protocol point by point:

- ``fp32x8-binary``: an FP32 tensor of 8 rows, REST's binary extension vs gRPC ``raw_input_contents``;
- ``fp32x1-json``: one FP32 row as JSON ``data`` vs gRPC's typed ``fp32_contents``;
- ``jpeg-binary``: one JPEG as a BYTES element, binary extension vs ``raw_input_contents``.

REST's client is ``bench/server_loadgen.py`` (raw asyncio streams, one keep-alive connection per
client); gRPC's is grpc.aio with one channel per client and the request bytes serialized once, so
that neither client parses answers or re-encodes requests. Both clients share the machine's cores
with the server, so each point also records the CPU time per answered request of the server (front
end and worker, from /proc) and of the client: on a busy machine those compare the two paths
better than throughput does. Writes ``bench/results/grpc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
from harness import machine, write_result  # puts the repository on sys.path
from PIL import Image
from server_loadgen import Result, build_request, run_point

from modelops_server.proto import grpc_predict_v2_pb2 as pb
from tests.support.serving import ServerProcess, export_model

MODEL = "bench-cnn"
SIZE = 64
INFER = "/inference.GRPCInferenceService/ModelInfer"
Tensor = pb.ModelInferRequest.InferInputTensor


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def payloads() -> dict[str, tuple[bytes, dict[str, str], bytes]]:
    """name -> (REST body, REST headers, serialized gRPC ModelInferRequest)."""
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    row = batch[:1]
    image = jpeg(1)
    out: dict[str, tuple[bytes, dict[str, str], bytes]] = {}

    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    grpc_msg = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[Tensor(name="input", datatype="FP32", shape=list(batch.shape))],
        raw_input_contents=[batch.tobytes()],
    )
    out["fp32x8-binary"] = (
        header + batch.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        grpc_msg.SerializeToString(),
    )

    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}]}
    )
    grpc_msg = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            Tensor(
                name="input",
                datatype="FP32",
                shape=list(row.shape),
                contents=pb.InferTensorContents(fp32_contents=row.ravel().tolist()),
            )
        ],
    )
    out["fp32x1-json"] = (body, {"Content-Type": "application/json"}, grpc_msg.SerializeToString())

    element = len(image).to_bytes(4, "little") + image
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    grpc_msg = pb.ModelInferRequest(
        model_name=MODEL, inputs=[Tensor(name="image", datatype="BYTES", shape=[1])], raw_input_contents=[element]
    )
    out["jpeg-binary"] = (
        header + element,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        grpc_msg.SerializeToString(),
    )
    return out


async def grpc_point(target: str, message: bytes, clients: int, seconds: float, warmup: float) -> Result:
    """Closed-loop gRPC clients, one channel each, counted like ``run_point`` counts REST."""
    result = Result(connections=clients, seconds=seconds)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
            call = channel.unary_unary(INFER)  # bytes in, bytes out: no (de)serialization here
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    await call(message, timeout=60)
                    status = 200
                except grpc.aio.AioRpcError as exc:
                    status = 503 if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 500
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    if status == 200:
                        result.ok_latencies.append(done - sent)
                    elif status == 503:
                        result.rejected_latencies.append(done - sent)
                    else:
                        result.other[status] = result.other.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured(point: Coroutine[Any, Any, Result], server_pids: list[int]) -> dict[str, Any]:
    """Run one point; its figures, with server and client CPU milliseconds per answered request
    (over the whole point, warm-up included, so they count a few more requests than answered)."""
    server_before, client_before = cpu_seconds(server_pids), time.process_time()
    res = asyncio.run(point)
    server_cpu, client_cpu = cpu_seconds(server_pids) - server_before, time.process_time() - client_before
    answered = max(1, len(res.ok_latencies))
    return {
        "rps": round(res.rps, 1),
        "p50_ms": round(res.pct(0.50) * 1000, 2),
        "p99_ms": round(res.pct(0.99) * 1000, 2),
        "answered": len(res.ok_latencies),
        "rejected": res.rejected,
        "errors": sum(res.other.values()),
        "server_cpu_ms_per_request": round(1000 * server_cpu / answered, 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / answered, 2),
    }


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[ServerProcess]:
    model = export_model(workdir / "model", seed=0, name=MODEL, size=SIZE)
    proc = ServerProcess(model=model.path, args=["--workers", "1", "--queue-capacity", "256"]).start(workdir)
    try:
        yield proc
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients per point")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as proc:
        assert proc.proc is not None
        pids = [proc.proc.pid, *proc.worker_pids()]
        for name, (body, headers, message) in payloads().items():
            request = build_request(f"/v2/models/{MODEL}/infer", body, headers)
            for clients in args.clients:
                rest = measured(run_point(proc.port, request, clients, args.seconds, args.warmup), pids)
                over_grpc = measured(grpc_point(proc.grpc_target, message, clients, args.seconds, args.warmup), pids)
                rows.append({"payload": name, "clients": clients, "rest": rest, "grpc": over_grpc})
                print(
                    f"{name:14} c={clients:<3} "
                    + " | ".join(
                        f"{label} {r['rps']:7.1f} rps p99 {r['p99_ms']:7.2f} ms cpu/req "
                        f"server {r['server_cpu_ms_per_request']:5.2f} client {r['client_cpu_ms_per_request']:5.2f} ms"
                        for label, r in (("REST", rest), ("gRPC", over_grpc))
                    ),
                    flush=True,
                )
    write_result(
        "grpc",
        {
            "what": "REST and gRPC on one modelops_server process: same model, payloads and closed-loop load",
            "model": f"tiny CNN (tests/support/serving.py) at {SIZE}x{SIZE}, 1 worker",
            "seconds_per_point": args.seconds,
            "machine": machine("onnxruntime", "grpcio"),
            "points": rows,
        },
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
