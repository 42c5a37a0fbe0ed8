"""Training configs for tests: a config document for a dataset version and an output folder, with
sections merged in (the trainer's tests and the MLflow integration tests run real trainings)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from modelops_trainer.config import API_VERSION, TrainConfig
from modelops_trainer.datasetfmt import DatasetVersion


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_doc(version: DatasetVersion, out: Path, **sections: Any) -> dict[str, Any]:
    """A config document for `version` writing to `out`; `sections` are merged in (camelCase)."""
    base = {
        "apiVersion": API_VERSION,
        "dataset": {"uri": version.uri, "digest": version.digest},
        "model": {"architecture": "resnet18"},
        # fp32: `auto` measures fp32 against bf16 on CPUs with native bf16 and may pick bf16, which
        # is not deterministic on CPUs (oneDNN); the tests of auto itself are in test_precision.py.
        "hyperparameters": {
            "epochs": 1,
            "batchSize": 32,
            "learningRate": 0.003,
            "warmupEpochs": 0.3,
            "mixedPrecision": "off",
        },
        "output": {"uri": out.as_uri()},
        "dataLoader": {"workers": 0},
        "logging": {"format": "json", "everySteps": 1},
        "terminationMessagePath": str(out.parent / f"{out.name}.termination-log"),
    }
    return _merge(base, sections)


def make_config(version: DatasetVersion, out: Path, **sections: Any) -> TrainConfig:
    """`config_doc` validated."""
    return TrainConfig.model_validate(config_doc(version, out, **sections))
