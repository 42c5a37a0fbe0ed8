"""ONNX Runtime sessions: provider choice, thread counts, warm-up.

The CUDA execution provider is requested only where ONNX Runtime was built with it *and* a CUDA
device exists (``onnxruntime-gpu`` lists it even on a machine without a GPU, and then fails at the
first run); TensorRT only when asked for. On CPU, intra-op threads default to the cores divided by
the worker processes, so that two workers on two cores do not fight over four threads, and
spinning is off by default so that idle ORT threads leave the cores to image decoding.
"""

from __future__ import annotations

import ctypes.util
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from modelops_server.errors import ModelLoadError
from modelops_server.imaging import Preprocessor
from modelops_server.modelcard import ModelCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """How a worker opens its ONNX Runtime session (from the server's settings)."""

    device: str = "auto"  # auto | cpu | cuda | tensorrt
    intra_op_threads: int = 0  # 0: cores / workers
    workers: int = 1
    spinning: Literal["off", "run", "always"] = "off"  # see ModelRunner
    max_image_pixels: int = 40_000_000
    reduced_decode: bool = True
    max_batch_size: int = 16
    batch_shapes: Literal["auto", "exact", "pow2"] = "auto"  # see padded_sizes


def cuda_device_present() -> bool:
    """True when an NVIDIA driver is loaded and reports at least one device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not os.path.exists("/dev/nvidiactl"):
        return False
    lib = ctypes.util.find_library("cuda")
    if lib is None:
        return False
    try:
        cuda = ctypes.CDLL(lib)
        count = ctypes.c_int(0)
        return bool(cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0)
    except OSError:
        return False


#: Options per execution provider. cuDNN's convolution algorithm search: ONNX Runtime's default,
#: EXHAUSTIVE, times every algorithm of every convolution for each new input shape, and dynamic
#: batching sends a new shape with every batch size from 1 to the maximum. On an H200 with
#: ResNet-50 and batches up to 64 that made batching at 64 connections 0.13x the batch-1 server
#: (63.8 against 487 img/s, p50 904 ms: bench/gpu.sh, 2026-12-04). HEURISTIC asks cuDNN's
#: heuristics once per shape, without timing.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"}}


def padded_sizes(mode: str, limit: int, on_cpu: bool) -> tuple[int, ...] | None:
    """The batch sizes a session runs when batches of 1 to ``limit`` rows are padded, or None when
    each runs at its own size.

    ``pow2``: the powers of two below ``limit``, and ``limit``; a batch is padded with zero rows up
    to the next of them, so the session sees at most log2(limit) + 2 shapes, all warmed up at load.
    On CUDA each new input shape costs cuDNN's algorithm choice for every convolution and new
    allocations, paid by the requests of the batch that brings it, and dynamic batching brings up
    to ``limit`` of them. ``exact``: no padding. ``auto``: pow2 except on the CPU, where a new
    shape costs little and a padded row costs a row's compute."""
    if mode == "exact" or (mode == "auto" and on_cpu):
        return None
    return tuple(sorted({1 << i for i in range(limit.bit_length()) if 1 << i < limit} | {limit}))


def choose_providers(device: str) -> list[str]:
    """The execution providers for ``device``: CUDA/TensorRT only where usable, CPU always last."""
    available = ort.get_available_providers()
    gpu_ok = "CUDAExecutionProvider" in available and cuda_device_present()
    if device == "cpu" or (device == "auto" and not gpu_ok):
        return ["CPUExecutionProvider"]
    if not gpu_ok:
        raise ModelLoadError(f"--device {device} asked for, but no CUDA device is usable (providers: {available})")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "tensorrt" and "TensorrtExecutionProvider" in available:
        providers.insert(0, "TensorrtExecutionProvider")
    return providers


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: the affinity mask, within the container's CPU quota (cgroup v2
    ``cpu.max``, else v1 ``cpu.cfs_quota_us``) rounded up. A pod limited to 2 CPUs on a 64-core
    node must not start 64 decode and ONNX Runtime threads, which the quota would then throttle."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file is not None:
                fields.append((cgroup / period_file).read_text().strip())
        except OSError:
            continue
        if len(fields) == 2 and fields[0] not in ("max", "-1") and int(fields[1]) > 0:
            cores = min(cores, math.ceil(int(fields[0]) / int(fields[1])))
        break
    return max(1, cores)


class ModelRunner:
    """One model in one process: an ONNX Runtime session, the card and the preprocessor."""

    def __init__(self, path: str, card: ModelCard, options: RuntimeOptions) -> None:
        self.card = card
        self.options = options
        self.preprocessor = Preprocessor(
            card.input, max_pixels=options.max_image_pixels, reduced_decode=options.reduced_decode
        )
        so = ort.SessionOptions()
        threads = options.intra_op_threads or max(1, cpu_count() // max(1, options.workers))
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads pick up the next parallel section of a run sooner (0.6 ms less per
        # ResNet-18 image on 2 idle cores), but on cores shared with another busy process a spinning
        # thread burns the time slice its partner needs (p50 at one connection 38 ms instead of 23):
        # off by default; "run" spins within a run and stops when it ends (force_spinning_stop).
        if options.spinning == "off":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif options.spinning == "run":
            so.add_session_config_entry("session.force_spinning_stop", "1")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")  # sequential: no inter-op pool
        self.providers = choose_providers(options.device)
        started = time.monotonic()
        try:
            self.session = ort.InferenceSession(
                path, sess_options=so, providers=[(p, PROVIDER_OPTIONS.get(p, {})) for p in self.providers]
            )
        except Exception as exc:  # ORT raises its own exception types for every kind of bad model
            raise ModelLoadError(f"ONNX Runtime cannot open the model: {exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if card.input.name not in names:
            raise ModelLoadError(f"the card's input {card.input.name!r} is not an input of the ONNX model ({names})")
        if card.output.name not in outputs:
            raise ModelLoadError(f"the card's output {card.output.name!r} is not an output of the model ({outputs})")
        self.input_name = card.input.name
        self.output_name = card.output.name
        self.threads = threads
        on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.padded = padded_sizes(options.batch_shapes, options.max_batch_size, on_cpu)
        self.shapes = self.padded or tuple(sorted({1, options.max_batch_size}))
        """The batch sizes warmed up at load; with padding on, the only sizes the session runs."""
        self.open_seconds = time.monotonic() - started

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a ``[N, C, S, S]`` batch; checks that the model returns one row per image.
        With padding on (`batch_shapes`), the batch runs as the next warmed-up size, zero rows
        added and their logits dropped."""
        n = batch.shape[0]
        size = next((s for s in self.padded if s >= n), n) if self.padded else n
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), dtype=batch.dtype)])
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        result: npt.NDArray[np.float32] = np.asarray(logits, dtype=np.float32)
        if result.ndim != 2 or result.shape[0] != size or result.shape[1] != len(self.card.classes):
            raise ModelLoadError(
                f"the model returned {result.shape} for {size} images and {len(self.card.classes)} classes"
            )
        return result[:n]

    def warm_up(self) -> float:
        """Run the model on zeros at each of `shapes` (allocations, kernel choice); returns seconds."""
        started = time.monotonic()
        c, s = self.card.input.channels, self.card.input.image_size
        for n in self.shapes:
            self.run(np.zeros((n, c, s, s), dtype=np.float32))
        return time.monotonic() - started

    def describe(self) -> dict[str, Any]:
        """Facts for logs: providers and threads."""
        return {
            "providers": self.providers,
            "intra_op_threads": self.threads,
            "batch_shapes": list(self.padded) if self.padded else "exact",
            "open_seconds": self.open_seconds,
        }
