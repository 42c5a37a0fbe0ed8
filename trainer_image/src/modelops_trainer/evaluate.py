"""Evaluation: loss, top-1/top-5 accuracy, per-class precision and recall, and the confusion matrix.

Each process evaluates its share of the split (`data.EvalSampler`: no sample twice, none
missing); the confusion matrix, loss sum and top-5 hits are summed over processes, so every
process ends with the metrics of the whole split. Everything is accumulated on the device and
read back once per evaluation (no per-batch synchronisation). The loss is plain cross-entropy
(no label smoothing), comparable across runs whatever their training settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelops_trainer import distributed
from modelops_trainer.data import Preprocess
from modelops_trainer.distributed import Runtime
from modelops_trainer.precision import Precision, autocast


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one model on one split."""

    count: int
    loss: float
    top1: float
    top5: float
    confusion: list[list[int]]
    """confusion[true][predicted]: images of class `true` predicted as `predicted`."""

    @property
    def precision(self) -> list[float]:
        """Per class: of the images predicted as the class, the share that is it (0 when none)."""
        n = len(self.confusion)
        predicted = [sum(self.confusion[t][p] for t in range(n)) for p in range(n)]
        return [self.confusion[c][c] / predicted[c] if predicted[c] else 0.0 for c in range(n)]

    @property
    def recall(self) -> list[float]:
        """Per class: of the images of the class, the share predicted as it (0 when none)."""
        return [row[c] / sum(row) if sum(row) else 0.0 for c, row in enumerate(self.confusion)]

    def metrics(self, prefix: str) -> dict[str, float]:
        """`<prefix>_loss`, `<prefix>_accuracy` (top-1) and `<prefix>_top5`."""
        return {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.top1, f"{prefix}_top5": self.top5}

    def report(self, classes: list[str]) -> dict[str, Any]:
        """The full evaluation as JSON: totals, per-class precision/recall/support, the confusion matrix."""
        return {
            "images": self.count,
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "perClass": {
                name: {"precision": p, "recall": r, "support": sum(row)}
                for name, p, r, row in zip(classes, self.precision, self.recall, self.confusion, strict=True)
            },
            "confusionMatrix": {
                "classes": classes,
                "rows": "true class",
                "columns": "predicted",
                "counts": self.confusion,
            },
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    runtime: Runtime,
    precision: Precision,
    preprocess: Preprocess,
) -> Evaluation | None:
    """Evaluate `model` on this process's batches and combine over processes; None for an empty split."""
    device = runtime.device
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, top-5 hits
    k = min(5, num_classes)
    try:
        for batch in batches:
            x, y = preprocess(batch)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            topk = logits.topk(k, dim=1).indices
            sums[1] += (topk == y[:, None]).any(dim=1).sum().double()
            confusion += torch.bincount(y * num_classes + topk[:, 0], minlength=num_classes * num_classes)
    finally:
        model.train(was_training)
    distributed.all_reduce_sum(runtime, confusion)
    distributed.all_reduce_sum(runtime, sums)
    matrix = confusion.view(num_classes, num_classes).cpu()
    count = int(matrix.sum())
    if count == 0:
        return None
    loss_sum, top5_hits = sums.cpu().tolist()
    return Evaluation(
        count=count,
        loss=loss_sum / count,
        top1=float(matrix.diagonal().sum()) / count,
        top5=top5_hits / count,
        confusion=matrix.tolist(),
    )
