"""Checkpoints and exact resumption: a run stopped by SIGTERM in the middle of an epoch and
resumed ends in the same state, bit for bit, as the run that was never stopped.

Why bit for bit is the right bar on a CPU in fp32: everything random is either restored (every
generator's state is in the checkpoint) or a pure function of (seed, epoch, sample) (the
augmentation, seeded per sample by the sampler), and PyTorch's fp32 CPU kernels are
deterministic. So any difference means some state was not saved or restored. (bf16 autocast
on CPU is not: oneDNN's bf16 weight-gradient kernels reduce in varying order, and two fresh
bf16 runs already differ, so bf16 is exercised below without comparing bits.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelops_trainer import checkpoint, train
from modelops_trainer.errors import CheckpointError
from modelops_trainer.session import Preempted
from tests.support.trainconfig import config_doc, make_config
from tests.trainer.conftest import termination_message, trainer_env

TIMING = {"epoch_seconds", "images_per_second"}


class _SigtermAtStep(logging.Handler):
    """Sends this process a real SIGTERM when the trainer logs optimizer step `step`."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "step" and getattr(record, "step", None) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _run_stopped_at(config, step: int):
    handler = _SigtermAtStep(step)
    logger = logging.getLogger("modelops_trainer.session")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with pytest.raises(Preempted) as stopped:
            train.run(config)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return stopped.value


def _last(out: Path):
    state = checkpoint.load((out / checkpoint.LAST).as_uri())
    assert state is not None
    return state


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


@pytest.mark.parametrize(
    ("name", "sections", "stop_step"),
    [
        # AdamW + cosine; the stopped run loads with no workers, the resumed one with two: the
        # augmentation must not depend on who decodes.
        ("adamw-cosine", {"hyperparameters": {"epochs": 2}}, 11),
        # SGD + one-cycle (momentum cycling) + EMA + gradient accumulation + label smoothing.
        (
            "sgd-onecycle-ema-accum",
            {
                "hyperparameters": {
                    "epochs": 2,
                    "optimizer": "sgd",
                    "learningRate": 0.05,
                    "lrSchedule": "oneCycle",
                    "emaDecay": 0.9,
                    "gradAccumulationSteps": 2,
                    "labelSmoothing": 0.2,
                }
            },
            5,
        ),
    ],
)
def test_resumed_run_matches_the_uninterrupted_run_exactly(tiny, tmp_path, name, sections, stop_step):
    straight = make_config(tiny, tmp_path / "straight", **sections)
    train.run(straight)

    interrupted_out = tmp_path / "interrupted"
    stopped = _run_stopped_at(make_config(tiny, interrupted_out, **sections), stop_step)
    mid = _last(interrupted_out)
    assert stopped.step == mid["step"] == stop_step
    assert mid["batch_in_epoch"] > 0, "the stop must fall inside an epoch"
    assert not mid["finished"]

    resumed = make_config(tiny, interrupted_out, **_with_workers(sections, 2))
    summary = train.run(resumed)

    a, b = _last(tmp_path / "straight"), _last(interrupted_out)
    assert a["finished"] and b["finished"] and a["step"] == b["step"] > stop_step
    for part in ("model", "optimizer", "scheduler", "scaler", "ema", "rng"):
        _assert_same_tensors(a[part], b[part], part)
    assert _without_timing(a["history"]) == _without_timing(b["history"])
    assert (a["best_epoch"], a["best_value"]) == (b["best_epoch"], b["best_value"])
    assert summary["metrics"] == json.loads((tmp_path / "straight" / "summary.json").read_text())["metrics"]


def _with_workers(sections, workers):
    return {**sections, "dataLoader": {"workers": workers}}


def test_checkpoints_every_n_steps_and_keeps_the_best(tiny, tmp_path, monkeypatch):
    config = make_config(
        tiny,
        tmp_path / "run",
        # fp32: bf16 on CPU is not deterministic (oneDNN) and once drove this tiny run to NaN in CI;
        # the test is about when checkpoints are written, not about precision.
        hyperparameters={"epochs": 2, "mixedPrecision": "off"},
        checkpointing={"everySteps": 4, "everyEpochs": 5},
    )
    seen_steps = []
    original = checkpoint.save

    def record_then_save(uri, state):
        if uri.endswith("last.pt"):
            seen_steps.append(state["step"])
        original(uri, state)

    monkeypatch.setattr(checkpoint, "save", record_then_save)
    train.run(config)
    # 7 steps per epoch (240 images / 32): every 4th step, and at the end of training.
    assert seen_steps == [4, 8, 12, 14]
    best = checkpoint.load((tmp_path / "run" / checkpoint.BEST).as_uri())
    assert best is not None
    history = _last(tmp_path / "run")["history"]
    assert best["epoch"] == max(history, key=lambda r: r["val_accuracy"])["epoch"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_of_another_config_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    _run_stopped_at(make_config(tiny, out, hyperparameters={"epochs": 2}), 3)
    with pytest.raises(CheckpointError, match="another dataset, model or hyper-parameters"):
        train.run(make_config(tiny, out, hyperparameters={"epochs": 2, "learningRate": 0.01}))


@pytest.mark.slow
def test_sigterm_stops_a_training_process_which_resumes_when_rerun(tiny, tmp_path):
    """The pod's view: the program gets SIGTERM, checkpoints, exits 143 with a termination
    message; the restarted program resumes from the checkpoint and finishes."""
    doc = config_doc(tiny, tmp_path / "run", hyperparameters={"epochs": 3})
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(doc))
    args = [sys.executable, "-m", "modelops_trainer.train", "--config", str(cfg_path)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=trainer_env())
    assert proc.stderr is not None
    for line in proc.stderr:
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("message") == "step" and record.get("step") == 3:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 143, rest[-2000:]
    config = make_config(tiny, tmp_path / "run", hyperparameters={"epochs": 3})
    message = termination_message(config)
    assert message["status"] == "Preempted" and "resumes" in message["message"]
    state = _last(tmp_path / "run")
    assert 3 <= state["step"] < 21 and not state["finished"]

    done = subprocess.run(args, capture_output=True, text=True, env=trainer_env(), timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any('"message": "resumed"' in line for line in done.stderr.splitlines())
    assert termination_message(config)["status"] == "Succeeded"
    assert _last(tmp_path / "run")["step"] == 21
