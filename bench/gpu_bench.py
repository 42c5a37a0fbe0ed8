"""The GPU run of issue #21 in one process tree, one JSON file of results (`bench/gpu.sh` installs
what is missing and runs this; see bench/README.md).

On one NVIDIA GPU, in about 3 minutes once installed:

1. trainer: training images/s of the program's own loop (`TrainingSession`, as
   bench/trainer_throughput.py drives it) for ResNet-50, bf16 autocast + channels_last,
   synthetic 224 px batches of 256 from pinned memory. The published reference is 2,470 img/s on
   one A100 80 GB (NVIDIA DeepLearningExamples, AMP); an H100/H200 should pass 3,500.
2. export: the same architecture (random weights, 1,000 classes) written by the trainer's own
   exporter (`export_onnx`, opset 18), with a model card.
3. parity: ONNX Runtime's CUDA provider against its CPU provider on that file, on photo-like
   images, with TF32 on (ONNX Runtime's default) and off, against the trainer's tolerance
   (|diff| ≤ 1e-4 + 1e-3·|logit|) and top-1 agreement.
4. libraries: the CUDA runtime, cuBLASLt and cuDNN that an ONNX Runtime process (the server's way:
   no PyTorch, LD_LIBRARY_PATH as server_image/Dockerfile sets it) and a PyTorch process actually
   loaded, read from /proc/self/maps and asked for their versions. They must agree.
5. server: `python -m modelops_server` with the CUDA provider on that model, dynamic batching
   (--max-batch-size 64) against the same server with --max-batch-size 1, at 1 and 64 closed-loop
   connections (bench/server_loadgen.py), one 224 px JPEG per request: images/s, p50, p99, and
   the batching ratio at 64 (goal ≥ 3×). On CUDA a third server batches with
   `--batch-shapes exact` (every batch size from 1 to 64 its own input shape, as before padding to
   powers of two became the default there), so the run measures what the padding changes.
   Each server's process tree is checked for the CUDA provider's library, so a silent
   fall-back to the CPU cannot pass for a GPU figure.

Without CUDA it runs a reduced version on the CPU (ResNet-18; training batches of 16 at 64 px in
the precision `auto` measures; 1 and 16 connections, 5 s per load point; the CPU provider; the
trainer's own torch-vs-ONNX-Runtime parity check) and writes `"device": "cpu"`: a test of the
script, not a figure.

    python bench/gpu_bench.py [--output FILE] [--device auto|cuda|cpu]

Each part that fails is recorded with its error and the others still run; the exit status is 1
when any part failed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import finite  # noqa: E402 - NaN and infinities as null: strict JSON

#: The libraries whose versions must agree, by the file-name prefix they are mapped under.
LIBRARIES = {
    "driver": "libcuda.so",
    "cudaRuntime": "libcudart.so",
    "cublasLt": "libcublasLt.so",
    "cudnn": "libcudnn.so",
}
REFERENCE_A100 = 2470.0
GOAL_H100 = 3500.0
GOAL_BATCHING_RATIO = 3.0


@dataclass(frozen=True)
class Plan:
    """How much of each part runs: full on a GPU, reduced on a CPU."""

    arch: str
    image_size: int
    batch_size: int
    batches: int
    """Training steps per measurement."""
    rounds: int
    precision: str
    """The trainer's mixedPrecision."""
    parity_images: int
    server_seconds: float
    server_warmup: float
    concurrency: tuple[int, ...]
    max_batch_size: int


#: On the GPU the servers warm up 5 s per point: ONNX Runtime's CUDA provider searches cuDNN
#: algorithms for every new batch size the dynamic batcher forms.
GPU_PLAN = Plan("resnet50", 224, 256, 30, 5, "bf16", 64, 8.0, 5.0, (1, 64), 64)
CPU_PLAN = Plan("resnet18", 64, 16, 2, 2, "auto", 8, 5.0, 3.0, (1, 16), 16)


def timed(results: dict[str, Any], name: str, part: Callable[[], dict[str, Any]]) -> None:
    """Run one part, record its result or its error, and how long it took."""
    print(f"--- {name}", flush=True)
    started = time.monotonic()
    try:
        results[name] = part()
    except Exception as exc:  # a part's failure is a result too; the other parts still run
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results[name]["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(finite(results[name]))[:2000], flush=True)


# --- 1. trainer --------------------------------------------------------------------------------


def trainer(plan: Plan, device: str, work: Path) -> dict[str, Any]:
    """The program's training loop on synthetic uint8 batches (decoded-image shape) in memory."""
    import torch  # noqa: PLC0415
    from trainer_throughput import make_dataset, program_epoch, program_session  # noqa: PLC0415

    args = argparse.Namespace(arch=plan.arch, batch_size=plan.batch_size, device=device, precision=plan.precision)
    version = make_dataset(work / "data", plan.image_size, 2 * plan.batch_size)  # a training split ≥ a batch
    session = program_session(version, work / "run", args)
    gen = torch.Generator().manual_seed(0)
    shape = (plan.batch_size, 3, plan.image_size, plan.image_size)
    distinct = []
    for _ in range(min(4, plan.batches)):
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        y = torch.randint(0, len(session.classes), (plan.batch_size,), generator=gen)
        distinct.append((x.pin_memory(), y.pin_memory()) if device == "cuda" else (x, y))
    session.train_loader = [distinct[i % len(distinct)] for i in range(plan.batches)]  # type: ignore[assignment]
    session.steps_per_epoch = plan.batches  # one "epoch" is one measurement
    warm_up = program_epoch(session)  # cuDNN autotuning, allocator growth, oneDNN primitives
    rates = [program_epoch(session) for _ in range(plan.rounds)]
    doc: dict[str, Any] = {
        "arch": plan.arch,
        "imageSize": plan.image_size,
        "batchSize": plan.batch_size,
        "classes": len(session.classes),  # the digits' 10: the head is a rounding error of ResNet's compute
        "stepsPerMeasurement": plan.batches,
        "precision": session.precision_choice.to_json(),
        "channelsLast": True,
        "warmUpImagesPerSecond": round(warm_up, 1),
        "imagesPerSecond": round(statistics.median(rates), 1),
        "rates": [round(r, 1) for r in rates],
        "spread": [round(min(rates), 1), round(max(rates), 1)],
    }
    if device == "cuda":
        doc["referenceA100"] = REFERENCE_A100
        doc["goal"] = GOAL_H100
        doc["met"] = doc["imagesPerSecond"] >= GOAL_H100
    return doc


# --- 2. export ---------------------------------------------------------------------------------


def export(plan: Plan, work: Path) -> tuple[Path, dict[str, Any]]:
    """The architecture at 224 px with 1,000 classes, exported as the trainer exports, plus a card."""
    import torch  # noqa: PLC0415
    from server_bench import write_card  # noqa: PLC0415

    from modelops_trainer.export import export_onnx  # noqa: PLC0415
    from modelops_trainer.models import build_model  # noqa: PLC0415

    torch.manual_seed(0)
    model = build_model(plan.arch, num_classes=1000, in_channels=3, image_size=224).eval()
    path = work / f"{plan.arch}.onnx"
    export_onnx(model, path, in_channels=3, image_size=224, opset=18)
    write_card(path, plan.arch, opset=18)
    return path, {"model": path.name, "bytes": path.stat().st_size, "opset": 18, "exporter": "modelops_trainer"}


# --- 3. parity ---------------------------------------------------------------------------------


def parity_inputs(count: int) -> np.ndarray:
    """Photo-like JPEGs decoded and normalised as the model card says (224 px, ImageNet statistics)."""
    from server_bench import MEAN, STD, photo  # noqa: PLC0415

    from modelops_server.imaging import Preprocessor  # noqa: PLC0415
    from modelops_server.modelcard import InputSpec  # noqa: PLC0415

    card = InputSpec.model_validate(
        {
            "name": "input",
            "imageSize": 224,
            "colorMode": "RGB",
            "resizeMode": "shorterSideCrop",
            "mean": MEAN,
            "std": STD,
        }
    )
    pre = Preprocessor(card, max_pixels=10**8, reduced_decode=True)
    return np.stack([pre.image_row(photo(320, 240, 100 + i)) for i in range(count)]).astype(np.float32)


def compare(reference: np.ndarray, got: np.ndarray, *, atol: float = 1e-4, rtol: float = 1e-3) -> dict[str, Any]:
    """Differences against the trainer's parity tolerance."""
    diff = np.abs(got - reference)
    allowed = atol + rtol * np.abs(reference)
    return {
        "maxAbsDiff": float(diff.max()),
        "maxAbsLogit": float(np.abs(reference).max()),
        "maxAllowedRatio": float((diff / allowed).max()),
        "withinTrainerTolerance": bool(np.all(diff <= allowed)),
        "top1Agreement": float(np.mean(got.argmax(1) == reference.argmax(1))),
    }


def parity(plan: Plan, model: Path, cuda: bool) -> dict[str, Any]:
    """CUDA provider against CPU provider (TF32 on and off); on a CPU, the trainer's own check."""
    import onnxruntime as ort  # noqa: PLC0415

    x = parity_inputs(plan.parity_images)
    cpu = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = cpu.run(["logits"], {"input": x})[0]
    doc: dict[str, Any] = {"images": len(x), "reference": "CPUExecutionProvider"}
    if not cuda:
        import torch  # noqa: PLC0415

        from modelops_trainer.export import check_parity  # noqa: PLC0415
        from modelops_trainer.models import build_model  # noqa: PLC0415

        torch.manual_seed(0)  # the weights export() wrote
        net = build_model(plan.arch, num_classes=1000, in_channels=3, image_size=224).eval()
        report = check_parity(model, net, torch.from_numpy(x), atol=1e-4, rtol=1e-3)
        doc["torchVsOnnxRuntimeCpu"] = report.to_json()
        doc["cuda"] = {"skipped": "no CUDA device"}
        return doc
    for tf32 in (1, 0):
        key = f"cudaTf32{'On' if tf32 else 'Off'}"
        options = {"device_id": "0", "use_tf32": str(tf32)}
        try:
            session = ort.InferenceSession(
                str(model), providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"]
            )
            got = session.run(["logits"], {"input": x})[0]
            single = session.run(["logits"], {"input": x[:1]})[0]
        except Exception as exc:  # an option this ONNX Runtime does not know, say: the other setting still runs
            doc[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        entry = compare(np.concatenate([reference, reference[:1]]), np.concatenate([got, single]))
        entry["providers"] = session.get_providers()
        doc[key] = entry
    doc["passed"] = all(
        "error" not in doc[k] and doc[k]["top1Agreement"] == 1.0 and doc[k]["providers"][0] == "CUDAExecutionProvider"
        for k in ("cudaTf32On", "cudaTf32Off")
    )
    return doc


# --- 4. libraries ------------------------------------------------------------------------------


def _version(key: str, path: str) -> str | None:
    """The version a loaded library reports about itself (None when it cannot be asked)."""
    try:
        lib = ctypes.CDLL(path)
        if key in ("driver", "cudaRuntime"):
            value = ctypes.c_int(0)
            call = lib.cuDriverGetVersion if key == "driver" else lib.cudaRuntimeGetVersion
            if call(ctypes.byref(value)) != 0:
                return None
            return f"{value.value // 1000}.{value.value % 1000 // 10}"
        getter = lib.cudnnGetVersion if key == "cudnn" else lib.cublasLtGetVersion
        getter.restype = ctypes.c_size_t
        v = int(getter())
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    except (OSError, AttributeError):
        return None


def loaded_libraries() -> dict[str, Any]:
    """The CUDA libraries mapped into this process, with their files and versions."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        name = os.path.basename(parts[5])
        for key, prefix in LIBRARIES.items():
            if name.startswith(prefix) and (name == prefix or name[len(prefix)] == "."):
                found.setdefault(key, os.path.realpath(parts[5]))
    return {key: {"file": path, "version": _version(key, path)} for key, path in found.items()}


def libraries_in_this_process(kind: str, model: str) -> dict[str, Any]:
    """`--loaded-libraries ort|torch`: make CUDA work the way that side does, then read the maps."""
    if kind == "ort":
        import onnxruntime as ort  # noqa: PLC0415 - no torch in this process, as in the server

        session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        session.run(None, {"input": np.zeros((2, 3, 224, 224), dtype=np.float32)})
        from onnxruntime.capi import build_and_package_info as info  # noqa: PLC0415

        return {
            "onnxruntime": ort.__version__,
            "builtForCuda": getattr(info, "cuda_version", None),
            "providers": session.get_providers(),
            "loaded": loaded_libraries(),
        }
    import torch  # noqa: PLC0415

    x = torch.randn(8, 3, 224, 224, device="cuda")
    conv = torch.nn.Conv2d(3, 64, 7).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (conv(x).flatten(1)[:, :64] @ torch.randn(64, 64, device="cuda")).sum().item()
    return {
        "torch": torch.__version__,
        "torchVersionCuda": torch.version.cuda,
        "cudnnVersion": torch.backends.cudnn.version(),
        "loaded": loaded_libraries(),
    }


def libraries(model: Path, cuda: bool) -> dict[str, Any]:
    """Each side in its own process; whether the CUDA runtime and cuDNN versions agree."""
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from onnxruntime.capi import build_and_package_info as info  # noqa: PLC0415

    doc: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "onnxruntimePackage": getattr(info, "package_name", None),
        "onnxruntimeBuiltForCuda": getattr(info, "cuda_version", None),
        "onnxruntimeProviders": ort.get_available_providers(),
        "torch": torch.__version__,
        "torchVersionCuda": torch.version.cuda,
        "ldLibraryPath": os.environ.get("LD_LIBRARY_PATH", ""),
    }
    try:
        doc["torchCudnnVersion"] = torch.backends.cudnn.version()
    except RuntimeError as exc:
        doc["torchCudnnVersion"] = f"unavailable: {exc}"
    if not cuda:
        doc["loaded"] = {"skipped": "no CUDA device"}
        return doc
    sides = {}
    for kind in ("ort", "torch"):
        proc = subprocess.run(
            [sys.executable, __file__, "--loaded-libraries", kind, str(model)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if proc.returncode != 0:
            sides[kind] = {"error": proc.stderr[-1500:]}
            continue
        sides[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["onnxruntimeProcess"], doc["torchProcess"] = sides["ort"], sides["torch"]
    agree = {}
    for key in ("cudaRuntime", "cudnn", "cublasLt"):
        a = sides["ort"].get("loaded", {}).get(key, {}).get("version")
        b = sides["torch"].get("loaded", {}).get(key, {}).get("version")
        agree[key] = {"onnxruntime": a, "torch": b, "agree": a is not None and a == b}
    doc["agreement"] = agree
    doc["agree"] = all(v["agree"] for k, v in agree.items() if k != "cublasLt")
    return doc


# --- 5. server ---------------------------------------------------------------------------------


def process_tree_libraries(pid: int) -> set[str]:
    """Base names of the shared libraries mapped by a process and its descendants."""
    from server_bench import descendants  # noqa: PLC0415

    names: set[str] = set()
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/maps").read_text().splitlines():
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and ".so" in parts[5]:
                    names.add(os.path.basename(parts[5]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return names


def server(plan: Plan, model: Path, cuda: bool) -> dict[str, Any]:
    """Dynamic batching against --max-batch-size 1, same model, same machine, alternating points."""
    from server_bench import WORK, free_port, measure, photo, running, v2_body  # noqa: PLC0415
    from server_loadgen import build_request  # noqa: PLC0415

    WORK.mkdir(parents=True, exist_ok=True)  # the servers' logs

    device = "cuda" if cuda else "cpu"
    configs = {"batching": plan.max_batch_size, "batch1": 1}
    shapes = {"batching": "auto", "batch1": "auto"}
    if cuda:  # batches at the size they formed, as before --batch-shapes (on the CPU, auto is this)
        configs["batching-exact"], shapes["batching-exact"] = plan.max_batch_size, "exact"
    servers = {}
    for name, max_batch in configs.items():
        port = free_port()
        cmd = [sys.executable, "-m", "modelops_server", "--model-uri", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--grpc-port", "-1", "--device", device, "--max-batch-size", str(max_batch)]
        cmd += ["--batch-shapes", shapes[name]]
        cmd += ["--queue-capacity", str(4 * max(plan.concurrency)), "--log-format", "json", "--log-level", "WARNING"]
        servers[name] = (cmd, port)
    body, headers = v2_body([photo(224, 224, 1)])
    request = build_request(f"/v2/models/{plan.arch}/infer", body, headers)
    load = argparse.Namespace(duration=plan.server_seconds, warmup=plan.server_warmup)
    points: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in servers}
    with running(servers) as pids:
        providers = {}
        for name, pid in pids.items():
            libs = process_tree_libraries(pid)
            providers[name] = {
                "cudaProviderLoaded": "libonnxruntime_providers_cuda.so" in libs,
                "cudnnLoaded": any(n.startswith("libcudnn") for n in libs),
            }
        for c in plan.concurrency:
            for name, (_, port) in servers.items():
                points[name][c] = measure(name, pids[name], port, request, c, 1, load)
    doc: dict[str, Any] = {
        "model": plan.arch,
        "payload": "one 224x224 JPEG per request (OIP JSON)",
        "device": device,
        "maxBatchSize": configs,
        "batchShapes": shapes,
        "providersInProcessTree": providers,
        "points": {name: {str(c): point for c, point in by_c.items()} for name, by_c in points.items()},
    }
    summary = {}
    for c in plan.concurrency:
        b, one = points["batching"][c], points["batch1"][c]
        summary[f"c{c}"] = {
            "batchingImagesPerSecond": round(b["images_per_s"], 1),
            "batch1ImagesPerSecond": round(one["images_per_s"], 1),
            "ratio": round(b["images_per_s"] / one["images_per_s"], 2) if one["images_per_s"] else None,
            "batchingP50Ms": round(b["p50_ms"], 2),
            "batchingP99Ms": round(b["p99_ms"], 2),
            "batch1P50Ms": round(one["p50_ms"], 2),
            "batch1P99Ms": round(one["p99_ms"], 2),
        }
        if (exact := points.get("batching-exact", {}).get(c)) is not None:
            summary[f"c{c}"] |= {
                "batchingExactImagesPerSecond": round(exact["images_per_s"], 1),
                "batchingExactP99Ms": round(exact["p99_ms"], 2),
            }
    doc["summary"] = summary
    top = f"c{max(plan.concurrency)}"
    ratio = summary[top]["ratio"]
    doc["goal"] = {"ratioAt": top, "atLeast": GOAL_BATCHING_RATIO, "met": ratio is not None and ratio >= 3.0}
    return doc


# --- the run -----------------------------------------------------------------------------------


def machine(cuda: bool) -> dict[str, Any]:
    """trainer_throughput's machine record with ONNX Runtime's version, plus what nvidia-smi says
    of the GPU."""
    import torch  # noqa: PLC0415
    from trainer_throughput import machine as cpu_machine  # noqa: PLC0415

    doc = cpu_machine(torch.device("cuda" if cuda else "cpu"), "onnxruntime")
    if cuda:
        query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        try:
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            doc["nvidiaSmi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            doc["nvidiaSmi"] = f"unavailable: {exc}"
    return doc


class Interrupted(BaseException):
    """SIGTERM (gpu.sh's time limit): stop, keep what was measured (servers are stopped on the way)."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted


def save(results: dict[str, Any], out: Path, started: float) -> list[str]:
    """Write what is known so far (after every part: a time limit loses only the part it cut)."""
    results["seconds"] = round(time.monotonic() - started, 1)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    results["failedParts"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(finite(results), indent=1, allow_nan=False) + "\n")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(BENCH / "results" / "gpu.json"))
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--loaded-libraries", nargs=2, metavar=("ort|torch", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loaded_libraries:
        print(json.dumps(libraries_in_this_process(*args.loaded_libraries)))
        return 0

    import torch  # noqa: PLC0415

    signal.signal(signal.SIGTERM, _interrupt)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    plan = GPU_PLAN if cuda else CPU_PLAN
    out = Path(args.output)
    started = time.monotonic()
    results: dict[str, Any] = {"benchmark": "gpu", "device": device, "plan": asdict(plan)}
    results["machine"] = machine(cuda)
    print(json.dumps(results["machine"]), flush=True)
    model: list[Path] = []

    def do_export(work: Path) -> dict[str, Any]:
        path, doc = export(plan, work)
        model.append(path)
        return doc

    try:
        with tempfile.TemporaryDirectory(prefix="modelops-gpu-bench-") as tmp:
            work = Path(tmp)
            parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("trainer", lambda: trainer(plan, device, work)),
                ("export", lambda: do_export(work)),
                ("parity", lambda: parity(plan, model[0], cuda)),
                ("libraries", lambda: libraries(model[0], cuda)),
                ("server", lambda: server(plan, model[0], cuda)),
            ]
            for name, part in parts:
                if name not in {"trainer", "export"} and not model:
                    results[name] = {"error": "skipped: the export failed"}
                    continue
                results["running"] = name
                timed(results, name, part)
                del results["running"]
                save(results, out, started)
    except Interrupted:
        results["interrupted"] = f"SIGTERM during {results.pop('running', '?')}: the time limit?"
        print(results["interrupted"], flush=True)
    failed = save(results, out, started)
    print(f"written: {out} ({results['seconds']} s); failed parts: {failed or 'none'}", flush=True)
    return 1 if failed or "interrupted" in results else 0


if __name__ == "__main__":
    sys.exit(main())
