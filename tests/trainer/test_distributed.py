"""Distributed data-parallel training with real processes and gloo: under torchrun, and the way a
Kubeflow PyTorchJob starts one process per pod (MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK only)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
import torch

from modelops_trainer import cgroup, checkpoint
from tests.support.trainconfig import config_doc
from tests.trainer.conftest import trainer_env

EPOCHS = 2
#: 240 training images shared by 2 processes, 32 per micro-batch: 120 // 32 = 3 steps per epoch
#: (one process alone takes 240 // 32 = 7).
STEPS_PER_EPOCH_2_PROCS = 3


def _records(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_trained_by_two(out, summary):
    assert summary["status"] == "Succeeded"
    assert summary["steps"] == EPOCHS * STEPS_PER_EPOCH_2_PROCS
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))  # written once, by rank 0
    last = checkpoint.load((out / checkpoint.LAST).as_uri())
    assert last is not None and last["world_size"] == 2 and len(last["rng"]) == 2
    assert (out / "model.onnx").exists() and summary["parity"]["top1Agreement"] == 1.0


@pytest.mark.slow
def test_two_processes_under_torchrun_with_gloo(tiny, tmp_path):
    doc = config_doc(tiny, tmp_path / "run", hyperparameters={"epochs": EPOCHS})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "modelops_trainer.train",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=trainer_env(OMP_NUM_THREADS="1"),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(result.stderr)
    start = next(r for r in records if r.get("message") == "training")
    assert (start["processes"], start["globalBatch"], start["device"]) == (2, 64, "cpu")
    assert {r["rank"] for r in records if r["level"] == "INFO"} == {0}  # the other rank stays quiet
    summary = json.loads((tmp_path / "run.termination-log").read_text())
    _assert_trained_by_two(tmp_path / "run", summary)


@pytest.mark.slow
def test_two_processes_started_like_pytorchjob_pods(tiny, tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        doc = config_doc(
            tiny,
            tmp_path / "run",
            hyperparameters={"epochs": EPOCHS},
            terminationMessagePath=str(tmp_path / f"pod-{rank}.termination-log"),
        )
        env = trainer_env(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), OMP_NUM_THREADS="1"
        )
        args = [sys.executable, "-m", "modelops_trainer.train", "--config-json", json.dumps(doc)]
        procs.append(subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env))
    outputs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    summary = json.loads((tmp_path / "pod-0.termination-log").read_text())
    _assert_trained_by_two(tmp_path / "run", summary)
    assert not (tmp_path / "pod-1.termination-log").exists()  # a worker pod has nothing to report


def _torchrun(config_path, **popen):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args += ["-m", "modelops_trainer.train", "--config", str(config_path)]
    return subprocess.Popen(args, text=True, env=trainer_env(OMP_NUM_THREADS="1"), **popen)


@pytest.mark.slow
def test_preempted_distributed_run_resumes_to_the_same_state(digits16, tmp_path):
    """SIGTERM to torchrun mid-epoch: both processes agree on a step, rank 0 writes both
    processes' generator states and the epoch's global metric sums; resumed under torchrun the
    run ends exactly where the uninterrupted one does (gloo sums two ranks in a fixed order)."""
    sections = {"hyperparameters": {"epochs": 1}, "logging": {"everySteps": 1}}
    paths = {}
    for name in ("straight", "interrupted"):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(config_doc(digits16, tmp_path / name, **sections)))
    assert _torchrun(paths["straight"], stderr=subprocess.DEVNULL).wait(timeout=900) == 0

    proc = _torchrun(paths["interrupted"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("step") == 2:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stderr.read()
    proc.wait(timeout=300)
    mid = checkpoint.load((tmp_path / "interrupted" / checkpoint.LAST).as_uri())
    assert mid is not None and not mid["finished"]
    assert mid["step"] == 10 and mid["batch_in_epoch"] == 10  # the processes vote every 10 steps
    message = json.loads((tmp_path / "interrupted.termination-log").read_text())
    assert message["status"] == "Preempted"

    assert _torchrun(paths["interrupted"], stderr=subprocess.DEVNULL).wait(timeout=900) == 0
    a = checkpoint.load((tmp_path / "straight" / checkpoint.LAST).as_uri())
    b = checkpoint.load((tmp_path / "interrupted" / checkpoint.LAST).as_uri())
    assert a is not None and b is not None and a["step"] == b["step"] == 22
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    timing = {"epoch_seconds", "images_per_second"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in a["history"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in b["history"]
    ]


@pytest.mark.parametrize(
    ("files", "environ", "expected"),
    [
        ({}, {}, "PASSIVE"),  # no quota: the cores may be shared with other pods
        ({"cpu.max": "max 100000"}, {}, "PASSIVE"),
        ({"cpu.max": "200000 100000"}, {}, None),  # a quota of 2 cores: its threads are sized to it
        ({"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}, {}, None),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1"}, {}, "PASSIVE"),  # v1 without a quota
        ({}, {"OMP_WAIT_POLICY": "ACTIVE"}, None),  # the user's choice is kept
        ({}, {"GOMP_SPINCOUNT": "10000"}, None),
    ],
)
def test_openmp_threads_sleep_when_idle_only_without_a_cpu_quota(tmp_path, files, environ, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    before = dict(environ)
    assert cgroup.openmp_wait_policy(environ, tmp_path) == expected
    assert environ == (before | {"OMP_WAIT_POLICY": expected} if expected else before)


def test_the_wait_policy_reaches_openmp_before_pytorch_loads_it():
    # libgomp prints the settings it started with (OMP_DISPLAY_ENV) when PyTorch loads it; how long an
    # idle thread spins is the telling one (it shows OMP_WAIT_POLICY as PASSIVE whether set or not).
    env = {k: v for k, v in trainer_env(OMP_DISPLAY_ENV="VERBOSE").items() if k not in cgroup.OPENMP_WAIT_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", "import modelops_trainer.train"], env=env, capture_output=True, text=True, check=True
    )
    spin = "300000" if cgroup.cpu_quota() is not None else "0"  # libgomp's default, or none: no quota on a CI host
    assert f"GOMP_SPINCOUNT = '{spin}'" in out.stderr, out.stderr
