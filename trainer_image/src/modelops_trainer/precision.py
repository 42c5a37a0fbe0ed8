"""Mixed precision: which autocast dtype a run trains in, and why.

- `auto` on a GPU: bf16 where the GPU has it, else fp16 with a gradient scaler. No measuring.
- `auto` on a CPU: whichever of fp32 and bf16 trains *this* model fastest on *this* CPU.
  A CPU without native bf16 (neither AVX-512 BF16 nor AMX) gets fp32 without measuring:
  emulated bf16 only adds conversions. Otherwise a short probe times forward+backward steps of
  the run's own model at the run's batch shape in each precision, after one warm-up step each,
  alternating which goes first so that background load falls on both alike, and compares the
  medians. bf16 must beat fp32 by `MARGIN` to be chosen: fp32 resumes bit for bit and needs no
  thought about accuracy, so a tie goes to it. The feature flag alone is not enough: on a Xeon
  with AVX-512 BF16 but no AMX, ResNet-18 at batch 32 trained 18.6 img/s in fp32 + channels_last
  against 12.5 in bf16 + channels_last (issue #21); with AMX, bf16 usually wins.
- `bf16` / `fp16` asked for explicitly: as asked (bf16 on a CPU without native bf16 warns).

On a CPU, oneDNN's bf16 weight gradient of a strided convolution whose input is smaller than its
stride (ResNet's stride-2 3×3 convolutions on a 1×1 map: images of 16 px or less) reads memory it
never wrote: a 128→256 convolution on a 1×1 map had a NaN or wrong weight gradient in 89 of 100
trials (off by up to 1e36), and one-epoch ResNet-18 runs on 8 px images ended in a NaN loss in 5
of 30 (PyTorch 2.15 on an AMD EPYC with AVX-512 BF16; fp32, and bf16 on larger maps, are right).
`guard_strided_convs` makes such convolutions leave autocast and run in fp32 for those inputs
only (0 of 30 runs diverged); on larger maps they stay in bf16.

The outcome is a `PrecisionChoice` — the precision, the reason, the CPU features seen and the
measured rates — that the session logs at start-up, keeps in its checkpoints (a resumed run
trains on in the precision it started with) and writes to the run's summary.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelops_trainer.cpuinfo import CpuFeatures
from modelops_trainer.errors import ConfigError

log = logging.getLogger(__name__)

#: bf16's median must beat fp32's by this fraction to be chosen on a CPU.
MARGIN = 0.05
#: Measured rounds (one step of each candidate per round): at least `PROBE_MIN_ROUNDS` (one sample
#: each is too easily one unlucky moment on a shared machine), at most `PROBE_ROUNDS`, and no new
#: one after `PROBE_BUDGET_S` seconds. The warm-up steps come on top.
PROBE_MIN_ROUNDS = 2
PROBE_ROUNDS = 3
PROBE_BUDGET_S = 5.0


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: full fp32) and whether a gradient scaler is needed."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        """bf16, fp16 or fp32."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    @classmethod
    def named(cls, name: str) -> Precision:
        """fp32, bf16 or fp16 (with its scaler)."""
        return {"fp32": FP32, "bf16": BF16, "fp16": FP16}[name]


FP32 = Precision(None, scaler=False)
BF16 = Precision(torch.bfloat16, scaler=False)
FP16 = Precision(torch.float16, scaler=True)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """Autocast for `precision` on `device`, or nothing for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


class GuardedConv2d(nn.Conv2d):
    """A `Conv2d` that runs in fp32 under CPU autocast when its input is smaller than its stride
    (see the module's docstring). Same parameters and state dict as `Conv2d`; outside autocast,
    or on other inputs, it is `Conv2d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and (input.shape[-2] < self.stride[0] or input.shape[-1] < self.stride[1])
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float())
        return super().forward(input)


def guard_strided_convs(model: nn.Module) -> int:
    """Make every strided `Conv2d` of `model` a `GuardedConv2d`, in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and max(module.stride) > 1:
            module.__class__ = GuardedConv2d
            count += 1
    return count


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in and why."""

    precision: Precision
    requested: str
    reason: str
    """asked | gpu | no-native-bf16 | measured | probe-failed | resumed"""
    cpu: CpuFeatures | None = None
    rates: dict[str, list[float]] = field(default_factory=dict)
    """Training images/s of each measured candidate, one value per round."""
    probe_seconds: float = 0.0

    @property
    def medians(self) -> dict[str, float]:
        """The median rate of each candidate."""
        return {name: statistics.median(values) for name, values in self.rates.items() if values}

    def to_json(self) -> dict[str, Any]:
        """For the summary, checkpoints and logs."""
        doc: dict[str, Any] = {"name": self.precision.name, "requested": self.requested, "reason": self.reason}
        if self.cpu is not None:
            doc["cpu"] = self.cpu.model
            doc["cpuFlags"] = sorted(f for f, present in self.cpu.bf16_flags().items() if present)
        if self.rates:
            doc["imagesPerSecond"] = {k: round(v, 2) for k, v in self.medians.items()}
            doc["rounds"] = min(len(v) for v in self.rates.values())
            doc["probeSeconds"] = round(self.probe_seconds, 2)
        return doc


def choose_measured(rates: Mapping[str, Sequence[float]], *, margin: float = MARGIN) -> str:
    """The candidate to train in, from measured images/s (each candidate's median).

    fp32 unless another candidate's median beats fp32's by more than `margin`; among those, the
    fastest. A candidate with no measurement is never chosen.
    """
    medians = {name: statistics.median(values) for name, values in rates.items() if values}
    if "fp32" not in medians:
        raise ValueError(f"no fp32 measurement to compare with: {dict(rates)}")
    best = max(medians, key=lambda name: medians[name])
    return best if medians[best] > medians["fp32"] * (1 + margin) else "fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision of `mixedPrecision: requested` on `device`, without measuring: `auto` on a
    CPU is fp32 here (`choose_precision` measures)."""
    if requested == "off":
        return FP32
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return BF16 if bf16_ok else FP16
        if requested == "bf16" and not bf16_ok:
            raise ConfigError(
                f"mixedPrecision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or auto"
            )
        return BF16 if requested == "bf16" else FP16
    if requested == "auto":
        return FP32
    if requested == "bf16" and not CpuFeatures.read().native_bf16:
        log.warning("mixedPrecision bf16 on a CPU without native bf16: expect it to be slower than fp32")
    return BF16 if requested == "bf16" else FP16


def measure_rates(
    model: nn.Module,
    criterion: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    candidates: Sequence[Precision],
    *,
    rounds: int = PROBE_ROUNDS,
    min_rounds: int = PROBE_MIN_ROUNDS,
    budget_s: float = PROBE_BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Training images/s of a forward+backward step of `model` on `batch` in each candidate.

    A copy of the model is timed (the run's weights, normalisation statistics and gradients stay
    untouched) with the global random generators forked (dropout draws nothing of the run's).
    One warm-up step each (oneDNN creates its primitives), then rounds of one step each with the
    order reversed every round: `min_rounds` rounds, then more until `rounds` or `budget_s` seconds.
    """
    x, y = batch
    device = x.device
    probe = copy.deepcopy(model).train()
    rates: dict[str, list[float]] = {c.name: [] for c in candidates}

    def step(precision: Precision) -> float:
        started = clock()
        with autocast(device, precision):
            loss = criterion(probe(x), y)
        loss.backward()
        probe.zero_grad(set_to_none=True)
        return len(y) / max(clock() - started, 1e-9)

    with torch.random.fork_rng(devices=[]):
        for precision in candidates:
            step(precision)
        started = clock()
        for r in range(rounds):
            for precision in candidates if r % 2 == 0 else list(reversed(candidates)):
                rates[precision.name].append(step(precision))
            if r + 1 >= min_rounds and clock() - started > budget_s:
                break
    return rates


def choose_precision(
    requested: str,
    device: torch.device,
    model: nn.Module,
    criterion: nn.Module,
    make_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    cpu: CpuFeatures | None = None,
    measure: Callable[..., dict[str, list[float]]] = measure_rates,
) -> PrecisionChoice:
    """The precision for `mixedPrecision: requested`, measured on `model` and a batch of
    `make_batch()` (made only then) when it is `auto` on a CPU with native bf16 (see the module
    docstring)."""
    if requested != "auto" or device.type != "cpu":
        reason = "gpu" if requested == "auto" else "asked"
        return PrecisionChoice(resolve_precision(requested, device), requested, reason)
    cpu = cpu or CpuFeatures.read()
    if not cpu.native_bf16:
        return PrecisionChoice(FP32, requested, "no-native-bf16", cpu)
    started = time.perf_counter()
    try:
        rates = measure(model, criterion, make_batch(), [FP32, BF16])
    except RuntimeError as exc:  # an operator without a bf16 kernel on this CPU, say
        log.warning("the precision probe failed: training in fp32", extra={"error": str(exc)})
        return PrecisionChoice(FP32, requested, "probe-failed", cpu, probe_seconds=time.perf_counter() - started)
    chosen = choose_measured(rates)
    return PrecisionChoice(Precision.named(chosen), requested, "measured", cpu, rates, time.perf_counter() - started)
