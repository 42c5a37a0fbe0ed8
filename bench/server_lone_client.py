"""A lone client and a crowd: modelops_server against KServe 0.21, one 224 px JPEG per request.

    .venv/bin/python bench/server_lone_client.py              # 5 runs, about 12 minutes on 2 cores
    .venv/bin/python bench/server_lone_client.py --runs 1 --duration 3 --warmup 1   # a smoke run

A server that batches must not cost a lone client anything: at 1 connection it must be no slower
than KServe's (p50 and p99), while at 16 connections it stays within 5% of the in-process limit
and under overload (64 connections against 4) its p99 grows at most 2×. All on the same machine,
in one process tree, the servers started once and measured alternately:

- ``modelops``: ``python -m modelops_server`` with ``bench/server_bench.py``'s settings, under which
  the 16-connection and overload targets were set: one worker, batches of up to 4 images, a 2 ms
  window, ``--queue-capacity 8`` (so that overload is answered with 503s), and the default
  ``--batch-wait adaptive``. (With the default 16-image batches, 8 admitted requests make one
  batch that the next 8 wait behind, and the p99 at 64 connections is about twice that at 4 by
  construction: a median of 2.36 in a first run.)
- ``modelops-window``: the same with ``--batch-wait window`` (the behaviour before adaptive
  batching), at 1 and 16 connections only: what the option changes;
- ``kserve``: KServe's Python model server (PyPI ``kserve`` 0.21.0 in the git-ignored
  ``build/bench-venv``, ``bench/server_kserve_model.py``), one worker, per-request logging off;
- the in-process limit: Pillow decode, preprocessing and ONNX Runtime in a tight loop, one image
  per run, thread spinning on and off (the better counts), measured in every run.

The model is torchvision's ResNet-18 (random weights, exported with a dynamic batch), the request
an Open Inference Protocol JSON body with the JPEG as a base64 BYTES element, the same bytes to
both servers (``bench/server_bench.py``'s model, photo and body). The load generator
(``bench/server_loadgen.py``) keeps 1, 4, 16 or 64 closed-loop keep-alive connections busy and
honours a 503's Retry-After (capped at 1 s). Each run measures every point once; the order of the
servers rotates from run to run, so that a change in the shared machine's load falls on each
alike. The summary is the median over the runs and their range (min–max), of each server's figures
and of the per-run ratios, the targets judged on the medians. Writes
``bench/results/server_lone_client.json`` with the machine record (``bench/harness.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import machine, write_result
from server_bench import (
    KSERVE_VERSION,
    ROOT,
    WORK,
    ensure_bench_venv,
    export_resnet18,
    free_port,
    in_process_limit,
    photo,
    running,
    tree_cpu_seconds,
    v2_body,
)
from server_loadgen import build_request, run_point

BENCH = Path(__file__).resolve().parent
CONNECTIONS = (1, 4, 16, 64)
WINDOW_CONNECTIONS = (1, 16)
#: bench/server_bench.py's settings for this server.
SETTINGS = ("--workers", "1", "--max-batch-size", "4", "--max-batch-delay-ms", "2", "--queue-capacity", "8")
#: The targets, judged on the medians over the runs.
GOALS = {
    "c1P50VsKserve": ("≤", 1.0),
    "c1P99VsKserve": ("≤", 1.0),
    "c16VsLimit": ("≥", 0.95),
    "overloadP99Ratio": ("≤", 2.0),
}


def server_commands(model: Path, python: Path, ports: dict[str, int], extra: list[str]) -> dict[str, Any]:
    """The command lines, by name, of the servers `ports` names (of `modelops`, `modelops-window`
    and `kserve`), each with its port."""

    def ours(*more: str) -> list[str]:
        return [
            sys.executable,
            *("-m", "modelops_server", "--model-uri", str(model), "--host", "127.0.0.1"),
            *("--grpc-port", "-1", *SETTINGS),
            *("--log-format", "json", "--log-level", "WARNING"),
            *extra,
            *more,
        ]

    kserve = [
        str(python),
        str(BENCH / "server_kserve_model.py"),
        *("--model_path", str(model), "--workers", "1", "--enable_latency_logging", "false"),
    ]
    commands = {
        "modelops": lambda port: ours("--port", str(port)),
        "modelops-window": lambda port: ours("--port", str(port), "--batch-wait", "window"),
        "kserve": lambda port: [*kserve, "--http_port", str(port)],
    }
    return {name: (commands[name](port), port) for name, port in ports.items()}


def point(pid: int, port: int, request: bytes, c: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load point against one server: throughput, latency, 503s, the server's cores."""
    cpu0 = tree_cpu_seconds(pid)
    r = asyncio.run(run_point(port, request, c, args.duration, args.warmup))
    cpu = (tree_cpu_seconds(pid) - cpu0) / (args.duration + args.warmup)
    return {
        "imagesPerSecond": r.images_per_s,
        "p50Ms": r.pct(0.5) * 1000,
        "p99Ms": r.pct(0.99) * 1000,
        "answered": len(r.ok_latencies),
        "rejected": r.rejected,
        "rejectedP99Ms": r.pct(0.99, rejected=True) * 1000 if r.rejected else None,
        "errors": sum(r.other.values()),
        "serverCores": cpu,
    }


def show(name: str, c: int, p: dict[str, Any]) -> None:
    """One measured point, printed as it comes."""
    print(
        f"  {name:16s} c={c:<3d} {p['imagesPerSecond']:6.1f} img/s  p50 {p['p50Ms']:7.1f} ms  "
        f"p99 {p['p99Ms']:7.1f} ms  503s {p['rejected']:4d}  errors {p['errors']}  "
        f"server {p['serverCores']:.2f} cores",
        flush=True,
    )


def one_run(
    index: int,
    pids: dict[str, int],
    ports: dict[str, int],
    request: bytes,
    model: Path,
    image: bytes,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every point once, the servers' order rotated by `index`; the in-process limit first."""
    names = ["modelops", "kserve", "modelops-window"]
    order = names[index % 3 :] + names[: index % 3]
    load_before = os.getloadavg()
    spin = in_process_limit(model, [image], args.limit_seconds, reduced=False, spinning=True)
    nospin = in_process_limit(model, [image], args.limit_seconds, reduced=False, spinning=False)
    limit = {"spin": spin, "nospin": nospin, "imagesPerSecond": max(spin, nospin)}
    print(
        f"run {index + 1}: limit {limit['imagesPerSecond']:.1f} img/s (spin {spin:.1f}, no spin {nospin:.1f})",
        flush=True,
    )
    points: dict[str, dict[str, Any]] = {name: {} for name in names}
    for c in CONNECTIONS:
        for name in order:
            if name == "modelops-window" and c not in WINDOW_CONNECTIONS:
                continue
            points[name][str(c)] = point(pids[name], ports[name], request, c, args)
            show(name, c, points[name][str(c)])
    ours, ks, window = points["modelops"], points["kserve"], points["modelops-window"]
    ratios = {
        "c1P50VsKserve": ours["1"]["p50Ms"] / ks["1"]["p50Ms"],
        "c1P99VsKserve": ours["1"]["p99Ms"] / ks["1"]["p99Ms"],
        "c16VsLimit": ours["16"]["imagesPerSecond"] / limit["imagesPerSecond"],
        "overloadP99Ratio": ours["64"]["p99Ms"] / ours["4"]["p99Ms"],
        "c1P50WindowVsAdaptive": window["1"]["p50Ms"] / ours["1"]["p50Ms"],
        "c16WindowVsLimit": window["16"]["imagesPerSecond"] / limit["imagesPerSecond"],
    }
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)
    return {
        "order": order,
        "loadAverageStart": list(load_before),
        "loadAverageEnd": list(os.getloadavg()),
        "limit": limit,
        "points": points,
        "ratios": ratios,
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one figure over the runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def spread_point(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One load point's figures (img/s, p50, p99, server cores, 503s) over the runs: each a `spread`."""
    figures = ("imagesPerSecond", "p50Ms", "p99Ms", "serverCores", "rejected")
    return {key: spread([p[key] for p in samples]) for key in figures}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each server's figures per point and each ratio: median and range over the runs; the goals."""
    points = {
        name: {c: spread_point([r["points"][name][c] for r in runs]) for c in per_c}
        for name, per_c in runs[0]["points"].items()
    }
    ratios = {key: spread([r["ratios"][key] for r in runs]) for key in runs[0]["ratios"]}
    goals = {}
    for key, (op, target) in GOALS.items():
        median = ratios[key]["median"]
        goals[key] = {
            "target": f"{op} {target:g}",
            "median": median,
            "met": median <= target if op == "≤" else median >= target,
        }
    return {
        "runs": len(runs),
        "limit": spread([r["limit"]["imagesPerSecond"] for r in runs]),
        "points": points,
        "ratios": ratios,
        "goals": goals,
    }


def kserve_version(python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('kserve'))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def parse_args(description: str | None) -> argparse.Namespace:
    """The options of the runs against KServe (this benchmark's and bench/server_photos.py's)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of every point (at least 5 for the result file)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--limit-seconds", type=float, default=4.0, help="seconds of each in-process limit loop")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra flag for the modelops servers (repeat it; e.g. --server-arg=--ort-spinning=run)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results/ alone")
    return parser.parse_args()


def settings(servers: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """What a result file records of how the servers ran and were measured."""
    return {
        "modelops": " ".join(servers["modelops"][0][3:-2]).replace(str(ROOT) + "/", ""),  # not its port
        "kserve": "server_kserve_model.py, 1 worker, latency logging off",
        "connections": list(CONNECTIONS),
        "secondsPerPoint": args.duration,
        "warmupSeconds": args.warmup,
        "limitSeconds": args.limit_seconds,
    }


def keep(
    name: str,
    args: argparse.Namespace,
    python: Path,
    about: dict[str, Any],
    started: float,
    summary: dict[str, Any],
    runs: list[dict[str, Any]],
    packages: tuple[str, ...] = (),
) -> None:
    """bench/results/<name>.json with the machine record, KServe's version, the model, `about` (the
    payloads and settings), the summary and every run; not written when asked not to or from fewer
    runs than a summary needs. `packages`: versions to record beside the servers' own."""
    if args.no_write or args.runs < 5:
        print("not written: --no-write, or fewer than 5 runs")
        return
    result = {
        "machine": machine("onnxruntime", "numpy", "pillow", "aiohttp", "uvloop", *packages),
        "kserve": kserve_version(python),
        "kserveWanted": KSERVE_VERSION,
        "model": "torchvision resnet18 (random weights), ONNX opset 17, dynamic batch",
        **about,
        "seconds": round(time.time() - started),
        "summary": summary,
        "runs": runs,
    }
    write_result(name, result)


def main() -> None:
    args = parse_args(__doc__)
    WORK.mkdir(parents=True, exist_ok=True)
    model = export_resnet18()
    image = photo(224, 224, 1)
    body, headers = v2_body([image])
    request = build_request("/v2/models/resnet18/infer", body, headers)
    python = ensure_bench_venv()
    ports = {name: free_port() for name in ("modelops", "modelops-window", "kserve")}
    servers = server_commands(model, python, ports, args.server_arg)
    started = time.time()
    runs = []
    with running(servers) as pids:
        for index in range(args.runs):
            runs.append(one_run(index, pids, ports, request, model, image, args))
    summary = summarise(runs)
    for key, goal in summary["goals"].items():
        r = summary["ratios"][key]
        print(
            f"{key}: median {r['median']:.3f} (range {r['min']:.3f}–{r['max']:.3f}), target {goal['target']}: "
            f"{'met' if goal['met'] else 'NOT met'}"
        )
    about = {
        "payload": f"one 224x224 JPEG ({len(image)} bytes) as base64 in an OIP JSON request ({len(body)} bytes)",
        "settings": {
            **settings(servers, args),
            "modelopsWindow": "the same with --batch-wait window",
            "windowConnections": list(WINDOW_CONNECTIONS),
        },
    }
    keep("server_lone_client", args, python, about, started, summary, runs)


if __name__ == "__main__":
    main()
