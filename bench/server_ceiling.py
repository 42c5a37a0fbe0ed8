"""What dynamic batching can gain at most: the server with a model that costs nothing.

    .venv/bin/python bench/server_ceiling.py              # 3 runs, about 3 minutes on 2 cores
    .venv/bin/python bench/server_ceiling.py --runs 1 --duration 3 --warmup 1 --no-write   # a smoke run

The GPU goal (`bench/gpu.sh`) asks dynamic batching for at least 3× the images a second of the
same server with `--max-batch-size 1`, at 64 connections. Batching can only win what the model's
runs cost: on the H200 (run of 2026-12-04) batch 1 answered 736 images a second, one ResNet-50 run
every 1.36 ms, and 3× that is 2,208 requests a second through everything else in the server. This
script measures that everything else on the machine at hand: `python -m modelops_server` serving
an ImageNet-shaped model whose run costs microseconds (3×224×224 in, 1,000 logits out: the mean of
each channel, then one matrix product), with batches of up to 64 and of 1, one worker, at 1, 16 and
64 connections, one 224 px JPEG per request (`bench/server_bench.py`'s photo and body).

For each point it records images a second, p50 and p99, and the CPU time per request of the two
processes: the front end (the HTTP server, the JSON body, the hand-off to the worker and the
answer: one event loop, so 1,000 ÷ its CPU-ms per request is what one core of it can carry) and the
worker (parsing, base64, JPEG decode and preprocessing in its decode threads; the batcher). The
servers are started once and measured alternately, the order swapped from run to run; the summary
is the median and range over the runs. Writes `bench/results/server_ceiling.json` (or `--result`).

`--baseline VAR=VALUE` also starts both servers with that in their environment (another checkout's
server: `PYTHONPATH=/tmp/base/server_image/src`), measured in the same runs, summarised apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from another folder's script
    sys.path.append(str(Path(__file__).resolve().parent))
from harness import machine, write_result
from server_bench import (
    ROOT,
    WORK,
    cpu_seconds,
    descendants,
    free_port,
    photo,
    running,
    tree_cpu_seconds,
    v2_body,
    write_card,
)
from server_loadgen import build_request, run_point
from server_lone_client import spread

CONNECTIONS = (1, 16, 64)
#: The servers: their largest batch.
SERVERS = {"batching": 64, "batch1": 1}
CLASSES = 1000


def null_model(path: Path) -> Path:
    """An ImageNet-shaped ONNX model that costs almost nothing to run: logits = mean over each
    channel (N×3) times a fixed 3×1,000 matrix; with a model card, so the server serves it as any
    exported model."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    weights = np.linspace(-1.0, 1.0, 3 * CLASSES, dtype=np.float32).reshape(3, CLASSES)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["logits"]),
        ],
        "null",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    write_card(path, "null", opset=17, classes=CLASSES)
    return path


def batcher_cpu_seconds(pid: int) -> float:
    """The main threads of the server's child processes: in a worker, the batcher, which runs the
    model and encodes the answers, one batch at a time (the decode threads are the others)."""
    total = 0.0
    for child in descendants(pid):
        try:
            total += cpu_seconds(Path(f"/proc/{child}/task/{child}/stat"))
        except FileNotFoundError:
            continue
    return total


def point(pid: int, port: int, request: bytes, c: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load point: throughput, latency, and the CPU per request of the front end and the worker
    (both over the warm-up and the measured seconds, at the measured rate)."""
    stat = Path(f"/proc/{pid}/stat")
    front0, tree0, batcher0 = cpu_seconds(stat), tree_cpu_seconds(pid), batcher_cpu_seconds(pid)
    r = asyncio.run(run_point(port, request, c, args.duration, args.warmup))
    front, tree = cpu_seconds(stat) - front0, tree_cpu_seconds(pid) - tree0
    batcher = batcher_cpu_seconds(pid) - batcher0
    requests = r.rps * (args.duration + args.warmup)
    return {
        "imagesPerSecond": r.images_per_s,
        "p50Ms": r.pct(0.5) * 1000,
        "p99Ms": r.pct(0.99) * 1000,
        "rejected": r.rejected,
        "errors": sum(r.other.values()),
        "frontEndCores": front / (args.duration + args.warmup),
        "workerCores": (tree - front) / (args.duration + args.warmup),
        "frontEndCpuMsPerRequest": 1000 * front / requests if requests else None,
        "workerCpuMsPerRequest": 1000 * (tree - front) / requests if requests else None,
        "batcherCpuMsPerRequest": 1000 * batcher / requests if requests else None,
    }


#: What the baseline's servers are called in a run's points: `batching@baseline`.
BASELINE = "@baseline"


def summarise(runs: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """Each figure of each point, and batching's ratio to batch 1: median and range over the runs
    (of the baseline's servers with `suffix` BASELINE)."""
    points: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name in SERVERS:
        points[name] = {}
        for c in runs[0]["points"][name + suffix]:
            samples = [r["points"][name + suffix][c] for r in runs]
            points[name][c] = {
                key: spread([s[key] for s in samples])
                for key in samples[0]
                if all(isinstance(s[key], int | float) for s in samples)
            }
    ratios = {
        f"c={c}": spread(
            [
                r["points"]["batching" + suffix][c]["imagesPerSecond"]
                / r["points"]["batch1" + suffix][c]["imagesPerSecond"]
                for r in runs
            ]
        )
        for c in runs[0]["points"]["batching" + suffix]
    }
    top = points["batching"][str(max(CONNECTIONS))]
    front_ms, batcher_ms = top["frontEndCpuMsPerRequest"]["median"], top["batcherCpuMsPerRequest"]["median"]
    return {
        "runs": len(runs),
        "points": points,
        "batchingOverBatch1": ratios,
        # What one core of each serial part can carry, from batching's figures at 64 connections:
        # the front end's event loop, and the worker's batcher thread.
        "frontEndRequestsPerCoreSecond": 1000 / front_ms if front_ms else None,
        "batcherRequestsPerCoreSecond": 1000 / batcher_ms if batcher_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of every point (the result file needs 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results/ alone")
    parser.add_argument(
        "--baseline", metavar="VAR=VALUE", help="also measure both servers with this in their environment"
    )
    parser.add_argument("--result", default="server_ceiling", help="the result file's name under bench/results/")
    args = parser.parse_args()
    baseline = dict([args.baseline.split("=", 1)]) if args.baseline else {}

    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    model = null_model(WORK / "null.onnx")
    servers, envs = {}, {}
    for suffix in ("", BASELINE) if baseline else ("",):
        for name, max_batch in SERVERS.items():
            port = free_port()
            cmd = [sys.executable, "-m", "modelops_server", "--model-uri", str(model), "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--grpc-port", "-1", "--workers", "1", "--max-batch-size", str(max_batch)]
            cmd += ["--queue-capacity", str(4 * max(CONNECTIONS)), "--log-format", "json", "--log-level", "WARNING"]
            servers[name + suffix] = (cmd, port)
            envs[name + suffix] = baseline if suffix else {}
    body, headers = v2_body([photo(224, 224, 1)])
    request = build_request("/v2/models/null/infer", body, headers)
    runs = []
    with running(servers, envs) as pids:
        for index in range(args.runs):
            order = list(servers) if index % 2 == 0 else list(reversed(servers))
            points: dict[str, dict[str, Any]] = {name: {} for name in servers}
            for c in CONNECTIONS:
                for name in order:
                    p = point(pids[name], servers[name][1], request, c, args)
                    points[name][str(c)] = p
                    print(
                        f"run {index + 1} {name:17s} c={c:<3d} {p['imagesPerSecond']:7.1f} img/s  "
                        f"p50 {p['p50Ms']:6.1f} ms  p99 {p['p99Ms']:6.1f} ms  front end "
                        f"{p['frontEndCpuMsPerRequest'] or 0:.3f} CPU-ms/request ({p['frontEndCores']:.2f} cores), "
                        f"worker {p['workerCpuMsPerRequest'] or 0:.3f} ({p['workerCores']:.2f} cores; its "
                        f"batcher {p['batcherCpuMsPerRequest'] or 0:.3f})",
                        flush=True,
                    )
            runs.append({"order": order, "loadAverage": list(os.getloadavg()), "points": points})
    summary = summarise(runs)
    before = summarise(runs, BASELINE) if baseline else None
    if before is not None:
        for conns in map(str, CONNECTIONS):
            now, then = summary["points"]["batching"][conns], before["points"]["batching"][conns]
            print(
                f"batching at c={conns}: front end {now['frontEndCpuMsPerRequest']['median']:.3f} CPU-ms/request "
                f"(baseline {then['frontEndCpuMsPerRequest']['median']:.3f}), p50 {now['p50Ms']['median']:.2f} ms "
                f"(baseline {then['p50Ms']['median']:.2f}), {now['imagesPerSecond']['median']:.0f} img/s "
                f"(baseline {then['imagesPerSecond']['median']:.0f})"
            )
    for c, ratio in summary["batchingOverBatch1"].items():
        print(f"batching / batch 1 at {c}: {ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})")
    print(
        f"one core carries {summary['frontEndRequestsPerCoreSecond']:.0f} requests a second of the front end, "
        f"{summary['batcherRequestsPerCoreSecond']:.0f} of the batcher"
    )
    if args.no_write or args.runs < 3:
        print("not written: --no-write, or fewer than 3 runs")
        return
    result = {
        "machine": machine("onnxruntime", "numpy", "pillow", "aiohttp", "uvloop", "orjson"),
        "model": f"null: ReduceMean over H and W, then MatMul 3x{CLASSES} (ONNX opset 17, dynamic batch)",
        "payload": "one 224x224 JPEG per request (OIP JSON, base64 BYTES)",
        "settings": {
            name: " ".join(cmd[3:]).replace(str(ROOT) + "/", "").replace(f"--port {port} ", "")
            for name, (cmd, port) in servers.items()
        },
        "connections": list(CONNECTIONS),
        "secondsPerPoint": args.duration,
        "warmupSeconds": args.warmup,
        "seconds": round(time.time() - started),
        "summary": summary,
        "runs": runs,
    }
    if before is not None:
        result["baseline"] = {"env": baseline, "summary": before}
    write_result(args.result, result)


if __name__ == "__main__":
    main()
