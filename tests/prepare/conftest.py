"""Real images for the preparation tests: scikit-learn's bundled digits and sample photos, plus
generated broken, tiny, odd-mode, oversized and duplicate files."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from modelops_trainer.prepare import pipeline
from modelops_trainer.prepare.__main__ import main
from modelops_trainer.prepare.config import PrepareConfig


def digit_png(image: np.ndarray, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST).save(out, "PNG")
    return out.getvalue()


def write_digits(root: Path, per_class: int | None = None, start: int = 0) -> dict[str, list[Path]]:
    """Digits as an ImageFolder `root/<digit>/<n>.png`; returns the files by class."""
    digits = load_digits()
    files: dict[str, list[Path]] = {}
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        if i < start:
            continue
        label = str(y)
        if per_class is not None and len(files.get(label, [])) >= per_class:
            continue
        path = root / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(digit_png(img))
        files.setdefault(label, []).append(path)
    return files


def photos() -> list[Image.Image]:
    """The two sample photos scikit-learn ships (427x640 JPEGs)."""
    return [Image.fromarray(a) for a in load_sample_images().images]


def config(src: str | list[dict[str, Any]], out: Path, **overrides: Any) -> PrepareConfig:
    sources = [{"uri": src}] if isinstance(src, str) else src
    doc: dict[str, Any] = {
        "dataset": {"name": "t"},
        "sources": sources,
        "output": {"uri": f"file://{out}"},
        "cleaning": {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 0},
        "preprocessing": {"imageSize": 16, "format": "png", "shardSize": 200},
        "workers": 2,
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return PrepareConfig.model_validate(doc)


def run_cli(cfg: PrepareConfig, tmp: Path) -> tuple[int, dict[str, Any]]:
    """The program as the Job runs it: config in the environment, summary in the termination log."""
    term = tmp / "termination-log"
    os.environ["MODELOPS_PREPARE_CONFIG"] = cfg.model_dump_json(by_alias=True)
    try:
        code = main(["--termination-log", str(term), "--log-format", "json"])
    finally:
        del os.environ["MODELOPS_PREPARE_CONFIG"]
    return code, json.loads(term.read_text())


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture
def small_digits(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_digits(root, per_class=12)
    return root


__all__ = ["config", "digit_png", "photos", "pipeline", "run_cli", "shutil", "write_digits"]
