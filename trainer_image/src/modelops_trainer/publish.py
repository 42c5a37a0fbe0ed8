"""After training: evaluate the best checkpoint, export it, check parity, write the results.

Every process takes part in the evaluation of the best checkpoint on val and test (the splits
are shared among them); rank 0 alone exports, checks parity and writes:

    <output>/model.onnx              only after the parity check passed
    <output>/model.onnx.card.json    the model card (docs/contracts.md)
    <output>/evaluation.json         val and test: per-class precision/recall, confusion matrices
    <output>/summary.json            what the termination message says, in full

Rank 0 then tells the others how it went, so a failed export fails every process (and pod)
with the same reason instead of leaving them waiting.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

import modelops_trainer
from modelops_trainer import checkpoint, distributed, storage
from modelops_trainer.data import ImageSamples, Preprocess, eval_transform, normalization
from modelops_trainer.errors import CheckpointError, TrainerError
from modelops_trainer.evaluate import Evaluation, evaluate
from modelops_trainer.export import check_parity, export_onnx
from modelops_trainer.modelcard import CARD_SUFFIX, CardInput, CardLineage, CardOnnx, ModelCard
from modelops_trainer.models import build_model
from modelops_trainer.session import Progress, TrainingSession

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"


def publish(session: TrainingSession, progress: Progress) -> dict[str, Any]:
    """Evaluate, export and record the best checkpoint; returns the run's summary."""
    cfg, rt = session.cfg, session.runtime
    best = checkpoint.load(session.best_uri)
    if best is None or best.get("fingerprint") != session.fingerprint:
        raise CheckpointError(f"the best checkpoint {session.best_uri} is missing or belongs to another run")
    model = build_model(
        cfg.model.architecture,
        num_classes=session.num_classes,
        in_channels=session.in_channels,
        image_size=session.image.size,
    )
    model.load_state_dict(best["model"])
    model.to(session.device).to(memory_format=session.memory_format)
    evaluations: dict[str, Evaluation] = {}
    for split in ("val", "test"):
        if session.split_sizes[split]:
            result = evaluate(
                model,
                session.eval_loaders[split],
                num_classes=session.num_classes,
                runtime=rt,
                precision=session.precision,
                preprocess=session.preprocess,
            )
            if result is not None:
                evaluations[split] = result
    metrics: dict[str, float] = {}
    for split, ev in evaluations.items():
        metrics.update(ev.metrics(split))
        metrics[f"{split}_top1"] = ev.top1
    summary: dict[str, Any] = {"status": "Succeeded", "rank": rt.rank}
    outcome: dict[str, Any] = {"ok": True}
    failure: BaseException | None = None
    if rt.is_main:
        try:
            summary = _export_and_write(session, progress, model, best, metrics, evaluations)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, TrainerError) else "InternalError"
            outcome, failure = {"ok": False, "reason": reason, "message": str(exc)}, exc
    shared = distributed.broadcast_object(rt, outcome)
    if failure is not None:
        raise failure
    if not shared["ok"]:
        raise _RemoteFailure(shared["reason"], shared["message"])
    return summary


class _RemoteFailure(TrainerError):
    """Rank 0 failed after training; this process reports the same reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"rank 0: {message}")
        self.reason = reason


def _parity_images(session: TrainingSession, count: int) -> torch.Tensor:
    """The first `count` images of val (else test, else train), preprocessed as servers do."""
    samples = next((s for s in session.eval_samples.values() if len(s)), None)
    if samples is None:
        samples = ImageSamples(session.reader.index("train"), session.image, eval_transform(session.image))
    n = min(count, len(samples))
    cpu = Preprocess(session.image.color_mode, torch.device("cpu"), channels_last=False)
    return cpu.images(torch.stack([samples[i][0] for i in range(n)]))


def _export_and_write(
    session: TrainingSession,
    progress: Progress,
    model: torch.nn.Module,
    best: dict[str, Any],
    metrics: dict[str, float],
    evaluations: dict[str, Evaluation],
) -> dict[str, Any]:
    cfg = session.cfg
    out = cfg.output.uri
    onnx_uri = storage.join(out, ONNX_FILE)
    card_uri = onnx_uri + CARD_SUFFIX
    with tempfile.TemporaryDirectory(prefix="modelops-export-") as tmp:
        path = Path(tmp) / ONNX_FILE
        export_onnx(model, path, in_channels=session.in_channels, image_size=session.image.size, opset=cfg.export.opset)
        parity = check_parity(
            path,
            model,
            _parity_images(session, cfg.export.parity_samples),
            atol=cfg.export.parity_atol,
            rtol=cfg.export.parity_rtol,
        )
        data = path.read_bytes()
    digest = storage.sha256_bytes(data)
    storage.write_bytes_atomic(onnx_uri, data)
    mean, std = normalization(session.image.color_mode)
    run_name = cfg.lineage.training_run or (cfg.trial.name if cfg.trial else "standalone")
    card = ModelCard(
        name=run_name,
        architecture=cfg.model.architecture,
        classes=session.classes,
        input=CardInput(
            image_size=session.image.size,
            color_mode=session.image.color_mode,
            resize_mode=session.image.resize_mode,
            mean=list(mean),
            std=list(std),
        ),
        onnx=CardOnnx(file=ONNX_FILE, digest=digest, opset=cfg.export.opset, dynamic_batch=True),
        metrics=metrics,
        lineage=CardLineage(
            dataset=cfg.lineage.dataset or session.reader.manifest.name or session.reader.version,
            dataset_version=session.reader.version,
            dataset_digest=session.reader.digest,
            training_run=run_name,
            trial=cfg.trial.name if cfg.trial else run_name,
            parameters=dict(cfg.trial.parameters) if cfg.trial else {},
            code_version=modelops_trainer.__version__,
        ),
    )
    storage.write_bytes_atomic(card_uri, card.to_bytes())
    report = {split: ev.report(session.classes) for split, ev in evaluations.items()}
    storage.write_bytes_atomic(storage.join(out, "evaluation.json"), json.dumps(report, indent=2).encode())
    objective = cfg.objective.metric
    summary: dict[str, Any] = {
        "status": "Succeeded",
        "reason": "Succeeded",
        "message": f"trained {progress.epoch} epoch(s); best epoch {best['epoch']}; exported and parity-checked",
        "epochs": progress.epoch,
        "steps": progress.step,
        "bestEpoch": best["epoch"],
        "stoppedEarly": progress.stopped_early,
        "objective": {"metric": objective, "value": metrics.get(objective)},
        "metrics": metrics,
        "model": {"uri": onnx_uri, "digest": digest, "opset": cfg.export.opset, "modelCardUri": card_uri},
        "datasetVersion": session.reader.version,
        "datasetDigest": session.reader.digest,
        "parity": parity.to_json(),
        "precision": session.precision_choice.to_json(),
    }
    if cfg.trial:
        summary["trial"] = cfg.trial.name
    storage.write_bytes_atomic(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    log.info("model published", extra={"uri": onnx_uri, "digest": digest, "metrics": metrics})
    return summary
