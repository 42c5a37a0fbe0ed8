"""ONNX export and the parity check that decides whether the exported file may be served.

The model is exported in fp32 with torch.onnx's exporter (torch.export + onnxscript) at a stated
opset: one input `input` (float32 NCHW, dynamic batch), one output `logits` (batch × classes).
`onnx.checker` validates the file (full check, shape inference included), and the graph's names,
opset and dynamic batch are checked against what the model card will promise.

Parity: real validation images, preprocessed as servers do, go through PyTorch and through ONNX
Runtime (CPU provider). Every logit must satisfy |onnx − torch| ≤ atol + rtol·|torch| and every
image must get the same top-1 class; the whole batch runs at once and the first image alone, so
the dynamic batch dimension is exercised too. Any miss raises ParityCheckFailed, which fails the
run: a model that answers differently from the one that was evaluated is never registered.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from modelops_trainer import cgroup
from modelops_trainer.errors import ExportError, ParityCheckFailed

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 65_536


def export_onnx(model: nn.Module, path: Path, *, in_channels: int, image_size: int, opset: int) -> None:
    """Export `model` (a copy, on CPU, fp32, eval mode) to `path` and validate the file."""
    cpu_model = _cpu_copy(model)
    example = torch.randn(2, in_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet():
            torch.onnx.export(
                cpu_model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    validate_onnx(path, opset=opset)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the CPU in fp32, contiguous, in eval mode (the original is untouched)."""
    cpu_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).to(memory_format=torch.contiguous_format)
    return cpu_model.eval()


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep the exporter's progress chatter and warnings out of the run's logs."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def validate_onnx(path: Path, *, opset: int) -> None:
    """onnx.checker (full) plus the interface the model card promises; ExportError otherwise."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker refused {path.name}: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(f"exported graph has inputs {inputs} and outputs {outputs}, expected [input] and [logits]")
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if default_opset != opset:
        raise ExportError(f"exported graph has opset {default_opset}, expected {opset}")
    first_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if first_dim.HasField("dim_value"):
        raise ExportError(f"exported graph has a fixed batch size {first_dim.dim_value}, expected a dynamic one")


@dataclass(frozen=True)
class ParityReport:
    """How ONNX Runtime's answers compared with PyTorch's."""

    samples: int
    max_abs_diff: float
    max_allowed_ratio: float
    """max over logits of |diff| / (atol + rtol·|torch|): at most 1 passes."""
    top1_agreement: float
    atol: float
    rtol: float
    provider: str

    def to_json(self) -> dict[str, Any]:
        """camelCase for the summary."""
        d = asdict(self)
        return {
            "samples": d["samples"],
            "maxAbsDiff": d["max_abs_diff"],
            "maxAllowedRatio": d["max_allowed_ratio"],
            "top1Agreement": d["top1_agreement"],
            "atol": d["atol"],
            "rtol": d["rtol"],
            "provider": d["provider"],
        }


def check_parity(path: Path, model: nn.Module, images: torch.Tensor, *, atol: float, rtol: float) -> ParityReport:
    """Compare ONNX Runtime on `path` with `model` on `images`; ParityCheckFailed on any miss."""
    import onnxruntime as ort  # type: ignore[import-untyped]  # noqa: PLC0415 - loads its providers; only needed here

    if len(images) == 0:
        raise ParityCheckFailed("no images to check parity on: the dataset has no val, test or train images")
    cpu_model = _cpu_copy(model)
    x = images.to(device="cpu", dtype=torch.float32).contiguous()
    with torch.no_grad():
        expected = cpu_model(x).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, cgroup.cpu_limit()))
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        whole = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        single = session.run([OUTPUT_NAME], {INPUT_NAME: x[:1].numpy()})[0]
    except Exception as exc:
        raise ParityCheckFailed(f"ONNX Runtime cannot run {path.name}: {exc}") from exc
    if whole.shape != expected.shape or single.shape != expected[:1].shape:
        raise ParityCheckFailed(
            f"ONNX Runtime returned shapes {whole.shape} and {single.shape}, PyTorch {expected.shape}"
        )
    got = np.concatenate([whole, single])
    want = np.concatenate([expected, expected[:1]])
    diff = np.abs(got - want)
    allowed = atol + rtol * np.abs(want)
    ratio = float(np.max(diff / np.maximum(allowed, np.finfo(np.float32).tiny)))
    agree = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    report = ParityReport(
        samples=len(x),
        max_abs_diff=float(diff.max()),
        max_allowed_ratio=ratio,
        top1_agreement=agree,
        atol=atol,
        rtol=rtol,
        provider="CPUExecutionProvider",
    )
    if not np.all(diff <= allowed) or agree < 1.0:
        raise ParityCheckFailed(
            f"ONNX Runtime and PyTorch disagree on {len(x)} validation images: max |diff| {report.max_abs_diff:.3g} "
            f"(allowed atol {atol:g} + rtol {rtol:g}·|logit|, worst at {ratio:.3g}× the allowance), "
            f"top-1 agreement {agree:.1%}; the exported model is not registered"
        )
    log.info("parity check passed", extra={"parity": report.to_json()})
    return report
