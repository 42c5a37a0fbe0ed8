"""The trainer's progress endpoint, read while a real (tiny) training runs: rank 0 serves
`/progress` and `/metrics`; a resumed run reports the epochs before the stop too.

The reads happen in the training thread itself, from a log handler on the trainer's `step` and
`epoch finished` records, so every read sees a known point of the run (no sleeps, no races).
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelops_trainer import progress, train
from modelops_trainer.reporting import METRICS_FILE
from tests.support.trainconfig import make_config
from tests.trainer.test_resume import _run_stopped_at


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.headers["Content-Type"], r.read()


class _Poller(logging.Handler):
    """GETs /progress (and /metrics once) whenever the trainer logs a step or a finished epoch."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.metrics_text = ""

    def emit(self, record: logging.LogRecord) -> None:
        what = record.getMessage()
        if what in ("step", "epoch finished"):
            _, body = _get(self.port, "/progress")
            self.seen.append((what, json.loads(body)))
            if what == "epoch finished" and not self.metrics_text:
                self.metrics_text = _get(self.port, "/metrics")[1].decode()


def _polled(port: int):
    poller = _Poller(port)
    loggers = [logging.getLogger("modelops_trainer.session"), logging.getLogger("modelops_trainer.reporting")]
    for lg in loggers:
        lg.addHandler(poller)
        lg.setLevel(logging.INFO)
    return poller, loggers


def _objectives(out: Path, metric: str = "val_accuracy") -> list[float]:
    return [json.loads(line)[metric] for line in (out / METRICS_FILE).read_text().splitlines()]


@pytest.fixture
def port(monkeypatch) -> int:
    chosen = _free_port()
    monkeypatch.setenv(progress.PORT_ENV, str(chosen))
    return chosen


def test_progress_is_served_while_training(tiny, tmp_path, port):
    out = tmp_path / "run"
    config = make_config(tiny, out, hyperparameters={"epochs": 3})
    poller, loggers = _polled(port)
    try:
        train.run(config)
    finally:
        for lg in loggers:
            lg.removeHandler(poller)
    steps = [doc for what, doc in poller.seen if what == "step"]
    ends = [doc for what, doc in poller.seen if what == "epoch finished"]
    per_epoch = steps[0]["stepsPerEpoch"]
    assert per_epoch > 1 and len(steps) == 3 * per_epoch
    assert [d["step"] for d in steps] == list(range(1, 3 * per_epoch + 1))
    assert [d["stepInEpoch"] for d in steps[:per_epoch]] == list(range(1, per_epoch + 1))
    assert [d["epoch"] for d in ends] == [1, 2, 3]
    assert all(d["epochs"] == 3 and d["metric"] == "val_accuracy" for _, d in poller.seen)
    # From the second step on there is a rate, and with it an ETA that falls to 0 at the end.
    assert all(d["imagesPerSecond"] > 0 and d["etaSeconds"] is not None for d in steps[1:])
    assert steps[-1]["etaSeconds"] == 0
    assert all(d["etaSeconds"] > 0 for d in steps[1 : per_epoch - 1])
    # The history is what metrics.jsonl records for the objective, one value per finished epoch.
    recorded = _objectives(out)
    assert [d["history"] for d in ends] == [recorded[:1], recorded[:2], recorded]
    assert ends[-1]["history"] == pytest.approx(recorded)
    text = poller.metrics_text
    assert "modelops_train_epoch 1.0" in text
    assert f"modelops_train_steps_per_epoch {float(per_epoch)!r}" in text
    assert f'modelops_train_objective{{metric="val_accuracy"}} {recorded[0]!r}' in text
    assert "# TYPE modelops_train_images_per_second gauge" in text
    # The server is gone with the run.
    with pytest.raises(urllib.error.URLError, match="refused"):
        _get(port, "/progress")


def test_a_resumed_run_reports_the_epochs_before_the_stop(tiny, tmp_path, port):
    out = tmp_path / "run"
    config = make_config(tiny, out, hyperparameters={"epochs": 3}, checkpointing={"everySteps": 1})
    _run_stopped_at(config, step=10)  # in epoch 2 (the tiny set has fewer than 10 steps per epoch)
    before = _objectives(out)
    assert len(before) == 1
    poller, loggers = _polled(port)
    try:
        train.run(config)
    finally:
        for lg in loggers:
            lg.removeHandler(poller)
    first = poller.seen[0][1]
    assert first["epoch"] == 1 and first["step"] == 11 and first["history"] == before
    assert poller.seen[-1][1]["history"] == _objectives(out) and len(_objectives(out)) == 3


def test_a_taken_port_does_not_stop_training(tiny, tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        monkeypatch.setenv(progress.PORT_ENV, str(taken.getsockname()[1]))
        summary = train.run(make_config(tiny, tmp_path / "run"))
    assert summary["status"] == "Succeeded"


@pytest.mark.parametrize(
    ("raw", "port"),
    [(None, 9400), ("", 9400), ("9500", 9500), ("0", 0), ("off", None), ("OFF", None), ("http", 9400), ("70000", 9400)],
)
def test_the_port_from_the_environment(raw, port):
    env = {} if raw is None else {progress.PORT_ENV: raw}
    assert progress.port_from_env(env) == port


def test_unknown_paths_are_404_and_errors_do_not_escape(tmp_path):
    board = progress.ProgressBoard(metric="val_loss", epochs=2, steps_per_epoch=4, images_per_step=8)
    server = progress.serve(board, {progress.PORT_ENV: "0"})
    assert server is not None
    try:
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get(server.port, "/nope")
        assert missing.value.code == 404
        doc = json.loads(_get(server.port, "/progress")[1])
        assert doc["epoch"] == 0 and doc["history"] == [] and doc["imagesPerSecond"] is None
        assert doc["etaSeconds"] is None
        board.epoch_finished([{"epoch": 1, "val_loss": float("nan")}])  # a diverged value: null, not NaN
        assert json.loads(_get(server.port, "/progress")[1])["history"] == [None]
        assert "modelops_train_objective" not in _get(server.port, "/metrics")[1].decode()
    finally:
        server.close()
