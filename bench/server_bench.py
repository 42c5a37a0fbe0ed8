"""Inference server benchmark: the in-process limit, KServe, and modelops_server, in one run.

    .venv/bin/python bench/server_bench.py            # about 6 minutes on 2 cores
    .venv/bin/python bench/server_bench.py --quick    # a shorter smoke run

Same model (torchvision ResNet-18, random weights, exported to ONNX with a dynamic batch), same
payloads, same machine, same load generator:

0. the in-process limit: decode, preprocess and ONNX Runtime in a tight loop, one image at a time
   (Pillow's plain decode; and our preprocessor with reduced-scale JPEG decoding);
1. KServe's Python model server (PyPI ``kserve``, one worker, ``bench/server_kserve_model.py``),
   installed by this script into ``build/bench-venv`` (git-ignored), never into ``.venv``;
2. ``python -m modelops_server`` from this repository.

Payloads, all as Open Inference Protocol JSON requests (BYTES input as base64, JSON logits out),
so both servers parse identical bytes: a 224×224 JPEG, a 1920×1080 JPEG photo,
and a batch of 8 224×224 JPEGs in one request. Concurrency 1, 4, 16, 64 closed-loop keep-alive
connections; a 503 is honoured with its Retry-After. Prints a table and the ratios the issue's
goals name, and writes everything to ``bench/results/server_bench.json`` (bench/report.py puts its
figures into the docs); a ``--quick`` run writes ``build/bench/server-results.json`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from another folder's script
    sys.path.append(str(Path(__file__).resolve().parent))
from harness import machine, write_result
from server_loadgen import Result, build_request, run_point

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "bench"
BENCH_VENV = ROOT / "build" / "bench-venv"
KSERVE_VERSION = "0.21.0"
#: The peer's packages: kserve pinned, with the kserve client virtualenv's pins as constraints
#: (hack/clients/kserve.txt), and the same ONNX Runtime release as ours (its CPU package).
KSERVE_PACKAGES = [f"kserve=={KSERVE_VERSION}", "onnxruntime", "pillow", "numpy", "uvloop"]
KSERVE_CONSTRAINTS = ROOT / "hack" / "clients" / "kserve.txt"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_bench_venv() -> Path:
    """A separate virtualenv with kserve (heavy, conflicting pins): created once, reused after."""
    import onnxruntime as ort  # noqa: PLC0415

    python = BENCH_VENV / "bin" / "python"
    ort_version = ort.__version__
    packages = [f"onnxruntime=={ort_version}" if p == "onnxruntime" else p for p in KSERVE_PACKAGES]
    if not python.exists():
        print(f"creating {BENCH_VENV} with {' '.join(packages)} (once)", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
    check = (
        "import importlib.metadata as m, kserve, onnxruntime, PIL, numpy, uvloop; "
        f"assert m.version('kserve') == {KSERVE_VERSION!r} and onnxruntime.__version__ == {ort_version!r}"
    )
    if subprocess.run([str(python), "-c", check], capture_output=True, check=False).returncode != 0:
        pip = [str(python), "-m", "pip", "install", "-q", "-c", str(KSERVE_CONSTRAINTS)]
        subprocess.run([*pip, *packages], check=True)
    return python


def export_resnet18() -> Path:
    """torchvision ResNet-18 (random weights: no download) as ONNX, with a model card."""
    path = WORK / "resnet18.onnx"
    if path.exists() and Path(f"{path}.card.json").exists():
        return path
    import warnings  # noqa: PLC0415

    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    WORK.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    write_card(path, "resnet18", opset=17)
    return path


def write_card(path: Path, arch: str, *, opset: int, classes: int = 1000) -> None:
    """`<path>.card.json` for an ImageNet-shaped model (224 px RGB, ImageNet statistics)."""
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    card = {
        "format": "modelops.modelcard/v1",
        "name": arch,
        "architecture": arch,
        "classes": [f"class-{i}" for i in range(classes)],
        "input": {
            "name": "input",
            "layout": "NCHW",
            "dtype": "float32",
            "imageSize": 224,
            "colorMode": "RGB",
            "resizeMode": "shorterSideCrop",
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits", "kind": "logits"},
        "onnx": {"file": path.name, "digest": digest, "opset": opset, "dynamicBatch": True},
    }
    Path(f"{path}.card.json").write_text(json.dumps(card))


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth shapes and fine texture, so it compresses like a real picture."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = rng.integers(-12, 12, (height, width, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def v2_body(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request in JSON: BYTES images as base64 strings in, JSON logits out.

    JSON rather than the binary-data extension because KServe's binary path cannot carry
    non-UTF-8 BYTES (it fails with "Failed to encode ... using UTF-8"); both servers get these bytes.
    """
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(b).decode() for b in images],
                }
            ],
        }
    ).encode()
    return body, {"Content-Type": "application/json"}


def payloads() -> dict[str, list[bytes]]:
    return {
        "224px JPEG": [photo(224, 224, 1)],
        "1920x1080 JPEG": [photo(1920, 1080, 2)],
        "8 x 224px in one request": [photo(224, 224, 10 + i) for i in range(8)],
    }


def in_process_limit(model: Path, images: list[bytes], seconds: float, reduced: bool, spinning: bool) -> float:
    """Images/s of decode + preprocess + ONNX Runtime in a tight loop, one request's images per run."""
    import onnxruntime as ort  # noqa: PLC0415

    from modelops_server.imaging import Preprocessor  # noqa: PLC0415
    from modelops_server.modelcard import ModelCard  # noqa: PLC0415

    card = ModelCard.model_validate_json(Path(f"{model}.card.json").read_text())
    options = ort.SessionOptions()
    if not spinning:  # the server's setting: idle ORT threads leave the cores to decoding
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    pre = Preprocessor(card.input, max_pixels=10**8, reduced_decode=reduced)
    mean, std = np.array(MEAN, dtype=np.float32), np.array(STD, dtype=np.float32)

    def plain(data: bytes) -> np.ndarray:  # the naive way: full decode, resize, crop
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        s = 224 / min(w, h)
        img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.Resampling.BILINEAR)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        x = (np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255 - mean) / std
        return x.transpose(2, 0, 1)

    prepare = pre.image_row if reduced else plain
    session.run(None, {"input": np.stack([prepare(b) for b in images]).astype(np.float32)})
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": np.stack([prepare(b) for b in images]).astype(np.float32)})
        done += len(images)
    return done / (time.perf_counter() - start)


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (Linux /proc): a server's workers and helpers."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            children = [
                int(c) for task in Path(f"/proc/{p}/task").iterdir() for c in (task / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            continue
        out += children
        stack += children
    return out


def cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file (a process's, all its threads; or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (Linux /proc)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(Path(f"/proc/{p}/stat"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout} s")


def measure(
    name: str, pid: int, port: int, request: bytes, c: int, images: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One load point against one server, with the CPU it and the load generator used."""
    cpu0, own0 = tree_cpu_seconds(pid), time.process_time()
    r: Result = asyncio.run(run_point(port, request, c, args.duration, args.warmup, images))
    cpu = (tree_cpu_seconds(pid) - cpu0) / (args.duration + args.warmup)
    own = (time.process_time() - own0) / (args.duration + args.warmup)
    print(
        f"  {name:8s} c={c:<3d} {r.images_per_s:7.1f} img/s  {r.rps:7.1f} req/s  "
        f"p50 {r.pct(0.5) * 1000:7.1f} ms  p99 {r.pct(0.99) * 1000:7.1f} ms  503s {r.rejected:5d}  "
        f"errors {sum(r.other.values()):3d}  server {cpu:.2f} cores ({r.images_per_s / max(cpu, 1e-9):5.1f} img per "
        f"core-second), loadgen {own:.2f}",
        flush=True,
    )
    return {
        "rps": r.rps,
        "images_per_s": r.images_per_s,
        "p50_ms": r.pct(0.5) * 1000,
        "p99_ms": r.pct(0.99) * 1000,
        "ok": len(r.ok_latencies),
        "rejected": r.rejected,
        "rejected_p99_ms": r.pct(0.99, rejected=True) * 1000,
        "other": r.other,
        "server_cores": cpu,
        "images_per_core_s": r.images_per_s / max(cpu, 1e-9),
        "loadgen_cores": own,
    }


def limit_point(model: Path, label: str, images: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    """The in-process limit for one payload, with ONNX Runtime's thread spinning on and off."""
    runs = {
        f"{'reduced' if reduced else 'plain'}_{'spin' if spin else 'nospin'}": in_process_limit(
            model, images, args.duration, reduced=reduced, spinning=spin
        )
        for reduced in (False, True)
        for spin in (True, False)
    }
    runs["plain"] = max(runs["plain_spin"], runs["plain_nospin"])
    runs["reduced_decode"] = max(runs["reduced_spin"], runs["reduced_nospin"])
    print(
        f"  limit    {runs['plain']:7.1f} img/s (Pillow full decode)   "
        f"{runs['reduced_decode']:7.1f} img/s (our preprocessor, reduced-scale decode); "
        f"ORT spinning on/off: {runs['plain_spin']:.1f}/{runs['plain_nospin']:.1f}",
        flush=True,
    )
    return runs


@contextlib.contextmanager
def running(
    servers: dict[str, tuple[list[str], int]], envs: dict[str, dict[str, str]] | None = None
) -> Iterator[dict[str, int]]:
    """Start every server (with what `envs` adds to its environment), wait until each is ready,
    yield their pids, stop them all."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    try:
        for name, (cmd, _) in servers.items():
            log = (WORK / f"{name}.log").open("wb")
            logs.append(log)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **(envs or {}).get(name, {})}
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        for name, (_, port) in servers.items():
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", procs[name])
        yield {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def print_ratios(
    results: dict[str, Any], limits: dict[str, dict[str, float]], labels: list[str], cs: list[int]
) -> dict[str, Any]:
    """The ratios the issue's goals name."""
    print("\nratios (images/s unless noted):")
    summary: dict[str, Any] = {}
    ours = results["modelops"]
    small = "224px JPEG"
    c_mid = 16 if 16 in cs else cs[-1]
    summary["224_vs_limit_c16"] = ours[small][c_mid]["images_per_s"] / limits[small]["plain"]
    print(
        f"  224px at c={c_mid}: modelops / in-process limit = {summary['224_vs_limit_c16']:.3f} "
        f"(server used {ours[small][c_mid]['server_cores']:.2f} cores)"
    )
    if "kserve" in results:
        ks = results["kserve"]
        for label in labels:
            parts = []
            for c in cs:
                if ks[label][c]["images_per_s"] == 0:  # every KServe answer took longer than the window
                    summary[f"{label} c={c} modelops/kserve"] = None
                    parts.append(f"c={c}: n/a (KServe answered none within the window)")
                    continue
                ratio = ours[label][c]["images_per_s"] / ks[label][c]["images_per_s"]
                summary[f"{label} c={c} modelops/kserve"] = ratio
                parts.append(f"c={c}: {ratio:.2f}")
            print(f"  {label:26s} modelops / kserve: " + "  ".join(parts))
    if "kserve" in results:
        # Images per CPU-second the server used: robust to other processes taking cores away.
        for label in labels:
            parts = []
            for c in cs:
                k = results["kserve"][label][c]["images_per_core_s"]
                o = ours[label][c]["images_per_core_s"]
                parts.append(f"c={c}: {o / k:.2f}" if k > 0 else f"c={c}: n/a")
                summary[f"{label} c={c} efficiency modelops/kserve"] = o / k if k > 0 else None
            print(f"  {label:26s} img per core-second, modelops / kserve: " + "  ".join(parts))
    if 4 in cs and 64 in cs:
        for name, res in results.items():
            ratio = res[small][64]["p99_ms"] / res[small][4]["p99_ms"]
            summary[f"{name} p99 c64/c4"] = ratio
            print(
                f"  {name}: p99 at c=64 / p99 at c=4 (224px, admitted requests) = {ratio:.2f}; "
                f"503s at c=64: {res[small][64]['rejected']}, their p99 {res[small][64]['rejected_p99_ms']:.1f} ms"
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--quick", action="store_true", help="3 s points, concurrency 1 and 16")
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument("--queue-capacity", type=int, default=8, help="modelops_server's admission limit")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="modelops_server's ORT threads (0: auto)")
    parser.add_argument("--decode-threads", type=int, default=0, help="modelops_server's decode threads (0: auto)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.concurrency = 3.0, 1.0, [1, 16]
    WORK.mkdir(parents=True, exist_ok=True)
    model = export_resnet18()
    bodies = payloads()
    print(
        f"machine: {os.cpu_count()} CPUs; model {model.name}; payload sizes "
        + ", ".join(f"{k}: {sum(map(len, v)) // 1024} KiB" for k, v in bodies.items()),
        flush=True,
    )

    port = free_port()
    servers: dict[str, tuple[list[str], int]] = {
        "modelops": (
            [
                sys.executable,
                "-m",
                "modelops_server",
                "--model-uri",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-batch-delay-ms",
                str(args.max_batch_delay_ms),
                "--queue-capacity",
                str(args.queue_capacity),
                "--intra-op-threads",
                str(args.intra_op_threads),
                "--decode-threads",
                str(args.decode_threads),
                "--log-format",
                "json",
                "--log-level",
                "WARNING",
            ],
            port,
        )
    }
    if not args.skip_kserve:
        python = ensure_bench_venv()
        kport = free_port()
        servers["kserve"] = (
            [
                str(python),
                str(ROOT / "bench" / "server_kserve_model.py"),
                "--model_path",
                str(model),
                "--http_port",
                str(kport),
                "--workers",
                "1",
                # Per-request logging off, as in our server at INFO: measure serving, not logging.
                "--enable_latency_logging",
                "false",
            ],
            kport,
        )
    limits: dict[str, dict[str, float]] = {}
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {name: {} for name in servers}
    with running(servers) as pids:
        # Points alternate between the servers, so that a change in the shared machine's load
        # during the run falls on both alike.
        for label, images in bodies.items():
            print(f"{label}:", flush=True)
            limits[label] = limit_point(model, label, images, args)
            body, headers = v2_body(images)
            request = build_request("/v2/models/resnet18/infer", body, headers)
            for c in args.concurrency:
                for name, (_, p) in servers.items():
                    results[name].setdefault(label, {})[c] = measure(name, pids[name], p, request, c, len(images), args)

    summary = print_ratios(results, limits, list(bodies), args.concurrency)
    doc = {"limits": limits, "results": results, "summary": summary, "args": vars(args)}
    if args.quick:  # a smoke run: not a figure for the docs
        out = WORK / "server-results.json"
        out.write_text(json.dumps(doc, indent=1))
        print(f"\nwritten: {out}")
    else:
        write_result("server_bench", {"machine": machine("onnxruntime", "numpy", "pillow"), **doc})


if __name__ == "__main__":
    main()
