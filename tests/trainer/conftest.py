"""Fixtures for the trainer's tests: real digit datasets written once per session, and configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelops_trainer.config import TrainConfig
from modelops_trainer.datasetfmt import DatasetVersion
from tests.support.digits import write_digits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> DatasetVersion:
    """All 1,797 digits, 16×16 grayscale PNG (train 1,445 / val 176 / test 176)."""
    return write_digits((tmp_path_factory.mktemp("data") / "digits16").as_uri(), size=16, mode="L")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> DatasetVersion:
    """30 digits per class, 8×8 RGB PNG (train 240 / val 30 / test 30): for fast mechanics tests."""
    return write_digits((tmp_path_factory.mktemp("data") / "tiny").as_uri(), size=8, mode="RGB", limit=30)


def termination_message(config: TrainConfig) -> dict[str, Any]:
    """What the run wrote as its termination message."""
    return json.loads(Path(config.termination_message_path).read_text())


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment of a trainer subprocess: this venv's packages, no inherited rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"}}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_trainer(args: list[str], *, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m modelops_trainer.train ARGS` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "modelops_trainer.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=trainer_env(**env),
        check=False,
    )
