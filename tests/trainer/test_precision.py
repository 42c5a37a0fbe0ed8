"""Mixed precision: the rules, the decision from measured rates (injected, no timing), one real
probe on this CPU (no thresholds: any choice is right if it is a candidate and was measured), and
what a run records and keeps across a resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modelops_trainer import checkpoint, session, train
from modelops_trainer.cpuinfo import CpuFeatures
from modelops_trainer.models import build_model
from modelops_trainer.precision import (
    BF16,
    FP16,
    FP32,
    GuardedConv2d,
    Precision,
    PrecisionChoice,
    choose_measured,
    choose_precision,
    guard_strided_convs,
    measure_rates,
    resolve_precision,
)
from tests.support.trainconfig import make_config
from tests.trainer.test_resume import _run_stopped_at

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = CpuFeatures("Intel Xeon Platinum 8480+", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
COOPER_LAKE = CpuFeatures("Intel Xeon Platinum 8380H", frozenset({"avx2", "avx512f", "avx512_bf16"}))
ZEN3 = CpuFeatures("AMD EPYC 7763", frozenset({"avx2", "fma"}))


def _tiny_model_and_batch(batch_size: int = 4) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32).to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return model, nn.CrossEntropyLoss(), (x, torch.randint(0, 10, (batch_size,)))


# --- the rules without measuring ---------------------------------------------------------------


def test_explicit_precisions_on_a_cpu():
    assert resolve_precision("off", CPU) == FP32
    assert resolve_precision("auto", CPU) == FP32  # unmeasured; choose_precision measures
    assert resolve_precision("bf16", CPU) == BF16 and not BF16.scaler
    assert resolve_precision("fp16", CPU) == FP16 and FP16.scaler  # fp16 always trains with loss scaling
    assert [Precision.named(n).name for n in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize(
    ("cpuinfo", "model", "native", "flags"),
    [
        (
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f "
            "avx512_bf16 amx_tile amx_bf16 amx_int8\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n",
            "Intel(R) Xeon(R) Platinum 8480+",
            True,
            {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"},
        ),
        ("model name : Xeon\nflags : avx2 avx512f avx512_bf16\n", "Xeon", True, {"avx2", "avx512f", "avx512_bf16"}),
        ("model name : EPYC\nflags : avx2 fma\n", "EPYC", False, {"avx2"}),
        ("", "unknown", False, set()),
    ],
    ids=["amx", "avx512-bf16-only", "no-bf16", "unreadable"],
)
def test_cpu_features_from_cpuinfo(cpuinfo, model, native, flags):
    cpu = CpuFeatures.parse(cpuinfo)
    assert cpu.model == model and cpu.native_bf16 is native
    assert {f for f, present in cpu.bf16_flags().items() if present} == flags


# --- the decision from measurements ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rates", "chosen"),
    [
        ({"fp32": [18.6, 18.4, 18.9], "bf16": [12.5, 12.7, 12.1]}, "fp32"),  # the outside AVX-512 BF16 Xeon
        ({"fp32": [30.0, 31.0, 29.0], "bf16": [45.0, 44.0, 46.0]}, "bf16"),  # AMX
        ({"fp32": [30.0, 30.0, 30.0], "bf16": [31.0, 31.4, 31.2]}, "fp32"),  # within the margin: fp32
        ({"fp32": [30.0, 90.0, 29.0], "bf16": [40.0, 5.0, 41.0]}, "bf16"),  # medians, not means
        ({"fp32": [30.0], "bf16": []}, "fp32"),  # an unmeasured candidate is never chosen
    ],
    ids=["avx512-bf16-slower", "amx-faster", "tie-goes-to-fp32", "outliers", "unmeasured"],
)
def test_choice_from_measured_rates(rates, chosen):
    assert choose_measured(rates) == chosen


def test_choice_needs_an_fp32_measurement():
    with pytest.raises(ValueError, match="fp32"):
        choose_measured({"bf16": [10.0]})


def _injected(rates):
    calls = []

    def measure(model, criterion, batch, candidates):
        calls.append([c.name for c in candidates])
        return rates

    return measure, calls


@pytest.mark.parametrize(
    ("cpu", "rates", "name", "reason", "measured"),
    [
        (ZEN3, {}, "fp32", "no-native-bf16", False),
        (COOPER_LAKE, {"fp32": [18.6, 18.6], "bf16": [12.5, 12.5]}, "fp32", "measured", True),
        (SAPPHIRE_RAPIDS, {"fp32": [30.0, 30.0], "bf16": [45.0, 45.0]}, "bf16", "measured", True),
    ],
    ids=["no-native-bf16-is-not-measured", "avx512-bf16", "amx"],
)
def test_auto_on_a_cpu_measures_where_bf16_is_native(cpu, rates, name, reason, measured):
    model, criterion, batch = _tiny_model_and_batch()
    measure, calls = _injected(rates)
    made = []

    def make_batch():
        made.append(batch)
        return batch

    choice = choose_precision("auto", CPU, model, criterion, make_batch, cpu=cpu, measure=measure)
    assert (choice.precision.name, choice.reason) == (name, reason)
    assert calls == ([["fp32", "bf16"]] if measured else [])
    assert len(made) == (1 if measured else 0)  # no probe batch is allocated unless measured
    doc = choice.to_json()
    assert doc["cpu"] == cpu.model and doc["requested"] == "auto" and doc["name"] == name
    assert set(doc["cpuFlags"]) <= set(cpu.flags)
    if measured:
        assert doc["imagesPerSecond"] == {k: v[0] for k, v in rates.items()} and doc["rounds"] == 2


def test_asked_precisions_and_a_failed_probe():
    model, criterion, batch = _tiny_model_and_batch()
    measure, calls = _injected({})
    for requested, name in [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")]:
        choice = choose_precision(requested, CPU, model, criterion, lambda: batch, cpu=SAPPHIRE_RAPIDS, measure=measure)
        assert (choice.precision.name, choice.reason) == (name, "asked")
    assert calls == []

    def broken(*_args):
        raise RuntimeError("no bf16 kernel for this operator")

    choice = choose_precision("auto", CPU, model, criterion, lambda: batch, cpu=SAPPHIRE_RAPIDS, measure=broken)
    assert (choice.precision, choice.reason) == (FP32, "probe-failed")


# --- a real probe on this CPU ------------------------------------------------------------------


def test_a_real_probe_measures_both_candidates_and_leaves_the_run_untouched():
    model, criterion, batch = _tiny_model_and_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    # Flags with native bf16 whatever this CPU has, so that the probe runs here (emulated bf16
    # is merely slow); the rounds are bounded by count, the budget only cuts them short.
    choice = choose_precision("auto", CPU, model, criterion, lambda: batch, cpu=SAPPHIRE_RAPIDS)
    assert choice.reason == "measured" and choice.precision.name in {"fp32", "bf16"}
    assert set(choice.rates) == {"fp32", "bf16"}
    assert all(rate > 0 for values in choice.rates.values() for rate in values)
    assert 2 <= len(choice.rates["fp32"]) == len(choice.rates["bf16"]) <= 3
    assert choice.probe_seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_rounds_stop_at_the_budget_once_the_minimum_is_measured():
    model, criterion, batch = _tiny_model_and_batch(2)
    ticks = iter(range(1000))  # every step "takes" a second: the budget is spent in the first round
    rates = measure_rates(
        model, criterion, batch, [FP32, BF16], rounds=5, min_rounds=2, budget_s=0.5, clock=lambda: next(ticks)
    )
    assert [len(v) for v in rates.values()] == [2, 2]
    rates = measure_rates(model, criterion, batch, [FP32, BF16], rounds=3, min_rounds=1, budget_s=1e9)
    assert [len(v) for v in rates.values()] == [3, 3]


# --- oneDNN's bf16 weight gradients on maps smaller than the stride ----------------------------


def _weight_grad(conv: nn.Module, x: torch.Tensor, upstream: torch.Tensor, *, bf16: bool) -> torch.Tensor:
    conv.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    (out.float() * upstream).sum().backward()
    return conv.weight.grad.clone()


def test_a_strided_convolution_on_a_map_smaller_than_its_stride_gets_fp32s_gradient_under_bf16():
    # Unguarded, this convolution's bf16 weight gradient was NaN or wrong (up to 1e36) in 89 of 100
    # trials on this machine's CPU: oneDNN reads memory it never wrote. Guarded, it runs in fp32.
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False)
    keys = set(conv.state_dict())
    assert guard_strided_convs(conv) == 1 and isinstance(conv, GuardedConv2d) and set(conv.state_dict()) == keys
    for _ in range(10):
        x, upstream = torch.randn(32, 128, 1, 1), torch.randn(32, 256, 1, 1)
        guarded, exact = _weight_grad(conv, x, upstream, bf16=True), _weight_grad(conv, x, upstream, bf16=False)
        assert torch.isfinite(guarded).all()
        assert torch.allclose(guarded, exact, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(2, 128, 1, 1)).dtype == torch.float32
        assert conv(torch.randn(2, 128, 4, 4)).dtype == torch.bfloat16  # larger maps stay in bf16
    assert conv(torch.randn(2, 128, 1, 1)).dtype == torch.float32


def test_a_guarded_resnet_on_8px_images_has_finite_bf16_gradients_close_to_fp32():
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=8)
    unstrided = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) == 1]
    assert guard_strided_convs(model) == 7  # the stem, three 3×3 and three 1×1 downsampling convolutions
    assert not any(isinstance(m, GuardedConv2d) for n, m in model.named_modules() if n in unstrided)
    criterion = nn.CrossEntropyLoss()
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        grads = {}
        for bf16 in (True, False):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = criterion(model(x), y)
            loss.backward()
            grads[bf16] = {n: p.grad.clone() for n, p in model.named_parameters()}
        for name, exact in grads[False].items():
            low = grads[True][name]
            assert torch.isfinite(low).all(), name
            # bf16 noise alone moves some early gradients of a fresh network by half their norm
            assert (low - exact).norm() <= exact.norm() + 1e-6, name


# --- what a run records ------------------------------------------------------------------------


def _forced(name: str):
    def choose(requested, device, model, criterion, make_batch):
        return PrecisionChoice(Precision.named(name), requested, "measured", SAPPHIRE_RAPIDS, {name: [1.0]}, 0.1)

    return choose


def test_a_run_records_its_choice_and_a_resumed_run_keeps_it(tiny, tmp_path, monkeypatch):
    # The tiny dataset's 8 px images put ResNet-18's stride-2 convolutions on 1×1 maps: the case
    # that turned bf16 losses to NaN before the convolutions were guarded (5 of 30 runs).
    _record_then_resume(tiny, tmp_path / "run", monkeypatch)


def _record_then_resume(tiny, out, monkeypatch) -> None:
    sections = {"hyperparameters": {"epochs": 1, "mixedPrecision": "auto", "learningRate": 0.0003}}
    monkeypatch.setattr(session, "choose_precision", _forced("bf16"))
    _run_stopped_at(make_config(tiny, out, **sections), 3)
    saved = checkpoint.load((out / checkpoint.LAST).as_uri())
    assert saved is not None and saved["precision"]["name"] == "bf16"

    monkeypatch.setattr(session, "choose_precision", _forced("fp32"))  # the probe would now say fp32
    summary = train.run(make_config(tiny, out, **sections))
    assert summary["precision"]["name"] == "bf16" and summary["precision"]["reason"] == "resumed"
    written = json.loads((out / "summary.json").read_text())
    assert written["precision"] == summary["precision"]


def test_a_run_on_auto_measures_on_its_own_model(tiny, tmp_path):
    config = make_config(tiny, tmp_path / "run", hyperparameters={"mixedPrecision": "auto"})
    summary = train.run(config)
    precision = summary["precision"]
    assert precision["requested"] == "auto" and precision["name"] in {"fp32", "bf16"}
    if precision["reason"] == "measured":  # this CPU has native bf16
        assert set(precision["imagesPerSecond"]) == {"fp32", "bf16"}
        assert all(rate > 0 for rate in precision["imagesPerSecond"].values())
    else:
        assert precision["reason"] == "no-native-bf16" and precision["name"] == "fp32"
