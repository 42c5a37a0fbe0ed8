"""Training progress: the trainer's `/progress` document read over real HTTP by the controller's
function, parsed and validated in the pure layer, and what it makes of the TrainingRun's status
(per-trial step, throughput and ETA; the run's percentComplete and etaSeconds)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from modelops_operator import progress as io
from modelops_operator.api.trainingrun import TrainingRunStatus, TrialStatus
from modelops_operator.controllers.trainingrun import read_progress
from modelops_operator.reconcile import progress as rp
from tests.operator.test_trainingrun import Sim, ok, reported, searching

GOOD = {
    "epoch": 2,
    "epochs": 5,
    "step": 45,
    "stepInEpoch": 5,
    "stepsPerEpoch": 20,
    "imagesPerSecond": 1234.5,
    "etaSeconds": 61.2,
    "metric": "val_accuracy",
    "history": [0.5, 0.61],
    "startedAt": "2026-01-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:01:00Z",
    "somethingNew": {"ignored": True},
}

# --- the document ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps(GOOD), (2, 45, 1234.5, 61.2, [0.5, 0.61])),
        (json.dumps({"epoch": 0, "step": 0}), (0, 0, None, None, [])),  # just started
        (json.dumps({**GOOD, "history": [None, 0.6]}), (2, 45, 1234.5, 61.2, [None, 0.6])),
        ("not json", None),
        ("[1, 2]", None),
        (json.dumps({"step": 3}), None),  # no epoch
        (json.dumps({**GOOD, "epoch": -1}), None),
        (json.dumps({**GOOD, "step": "many"}), None),
        (json.dumps({**GOOD, "imagesPerSecond": -5}), None),
        ('{"epoch": 1, "step": 2, "etaSeconds": NaN}', None),
        ('{"epoch": 1, "step": 2, "imagesPerSecond": Infinity}', None),
        (json.dumps({**GOOD, "history": ["x"]}), None),
        (json.dumps({**GOOD, "history": [0.5] * 10_001}), None),
        (b"\xff\xfe", None),
    ],
    ids=[
        "good",
        "minimal",
        "null-epoch",
        "not-json",
        "not-object",
        "no-epoch",
        "negative",
        "wrong-type",
        "negative-rate",
        "nan",
        "inf",
        "bad-history",
        "long-history",
        "not-utf8",
    ],
)
def test_parse_progress(body, expected):
    raw = body if isinstance(body, bytes) else body.encode()
    got = rp.parse_progress(raw)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.epoch, got.step, got.images_per_second, got.eta_seconds, got.history) == expected


@pytest.mark.parametrize(
    ("reported_", "known", "expected"),
    [
        ([], [], []),
        ([], [0.1, 0.2], [0.1, 0.2]),  # a restarted trainer before it read its checkpoint
        ([0.5, 0.6], [], [0.5, 0.6]),
        ([0.5, 0.55, 0.7], [0.5, 0.6, 0.4], [0.5, 0.55, 0.7]),  # resumed and re-run: the trainer wins
        ([0.5], [0.5, 0.6, 0.7], [0.5, 0.6, 0.7]),  # epochs it does not report keep their value
        ([None, 0.4], [0.2], [0.2, 0.4]),  # a diverged epoch keeps the known value
        ([None, 0.4], [], [0.4, 0.4]),  # ... or takes the next one at the start
        ([0.3, None, 0.5], [], [0.3, 0.3, 0.5]),  # ... or the one before
        ([None, None], [], []),
    ],
    ids=["none", "nothing-reported", "fresh", "resumed", "shorter", "nan-known", "nan-first", "nan-gap", "all-nan"],
)
def test_curve(reported_, known, expected):
    assert rp.curve(reported_, known) == expected


# --- the fetch: a real HTTP server ----------------------------------------------------------------


class _Trainer(BaseHTTPRequestHandler):
    """Answers as the path says: good, malformed, oversized, slow, trickling, or an error."""

    release = threading.Event()
    asked: ClassVar[list[str]] = []
    mode = "good"
    """How `/progress` answers (other paths answer as they are named)."""

    def do_GET(self) -> None:
        path = self.path.split("/")[1]
        self.asked.append(path)
        if path == "progress":
            path = self.mode
        body = {
            "good": json.dumps(GOOD).encode(),
            "malformed": b'{"epoch": 1, "step": ',
            "wrong": json.dumps({**GOOD, "epoch": "two"}).encode(),
            "oversized": json.dumps({**GOOD, "pad": "x" * io.MAX_BYTES}).encode(),
        }.get(path, b"")
        if path == "slow":
            self.release.wait(10)  # longer than the client waits; released at teardown
            body = json.dumps(GOOD).encode()
        if path == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if path == "trickle":
            self.end_headers()
            for _ in range(60):  # a byte every 50 ms: each read is quick, the whole is not
                if self.release.wait(0.05):
                    return
                self.wfile.write(b" ")
                self.wfile.flush()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up first
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def trainer() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trainer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    _Trainer.release.set()
    server.shutdown()
    server.server_close()


def pod(port: int, path: str = "good", phase: str = "Running", ip: str | None = "127.0.0.1") -> dict[str, Any]:
    """A master pod whose progress port is `port`; `path` replaces /progress (the server's switch)."""
    return {
        "metadata": {"name": f"t-master-{path}"},
        "spec": {"containers": [{"name": "pytorch", "ports": [{"name": "progress", "containerPort": port}]}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_a_good_answer_is_read(trainer, monkeypatch):
    monkeypatch.setattr(_Trainer, "mode", "good")
    got = read_progress(pod(trainer), io.Backoff())
    assert got is not None and (got.epoch, got.step, got.history) == (2, 45, [0.5, 0.61])


@pytest.mark.parametrize("mode", ["malformed", "wrong", "oversized", "slow", "trickle", "missing", "empty"])
def test_a_bad_answer_is_no_progress(trainer, monkeypatch, mode):
    monkeypatch.setattr(_Trainer, "mode", mode)
    assert read_progress(pod(trainer), io.Backoff()) is None


@pytest.mark.parametrize(
    ("path", "message"),
    [("oversized", "more than 262144 bytes"), ("slow", "timed out"), ("trickle", "took longer"), ("missing", "404")],
)
def test_why_an_answer_is_refused(trainer, path, message):
    with pytest.raises(io.ProgressUnavailable, match=message):
        io.fetch(f"http://127.0.0.1:{trainer}/{path}")


def test_a_closed_port_is_no_progress():
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert read_progress(pod(closed), io.Backoff()) is None


def test_a_refused_connection_is_asked_again_at_once():
    """A trainer not listening yet refuses at once: backing off would miss a short trial's run."""
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    backoff = io.Backoff(seconds=30, clock=lambda: 1000.0)
    assert read_progress(pod(closed), backoff) is None
    assert not backoff.waiting(io.endpoint(pod(closed)) or "")


@pytest.mark.parametrize(
    ("mode", "asked_again"),
    [("slow", False), ("good", True), ("malformed", True), ("missing", True), ("trickle", True)],
)
def test_an_endpoint_that_does_not_answer_is_not_asked_again_for_a_while(trainer, monkeypatch, mode, asked_again):
    """Only silence backs off (kwok's pods: every reconcile would wait the timeout); a trainer that
    answers, even badly, is asked at the next reconcile."""
    monkeypatch.setattr(_Trainer, "mode", mode)
    now = [1000.0]
    backoff = io.Backoff(seconds=30, clock=lambda: now[0])
    _Trainer.asked.clear()
    read_progress(pod(trainer), backoff)
    read_progress(pod(trainer), backoff)
    assert _Trainer.asked == ["progress"] * (2 if asked_again else 1)
    now[0] += 31  # the back-off is over: asked again
    monkeypatch.setattr(_Trainer, "mode", "good")
    assert read_progress(pod(trainer), backoff) is not None
    assert not backoff.waiting(io.endpoint(pod(trainer)) or "")


@pytest.mark.parametrize(
    ("the_pod", "url"),
    [
        (pod(9500), "http://127.0.0.1:9500/progress"),
        ({"status": {"phase": "Running", "podIP": "10.0.0.7"}}, "http://10.0.0.7:9400/progress"),  # an older job
        ({"status": {"phase": "Running", "podIP": "fd00::7"}}, "http://[fd00::7]:9400/progress"),
        (pod(9500, phase="Pending"), None),
        (pod(9500, phase="Succeeded"), None),
        (pod(9500, ip=None), None),
        ({}, None),
    ],
    ids=["named-port", "default-port", "ipv6", "pending", "finished", "no-ip", "empty"],
)
def test_endpoint(the_pod, url):
    assert io.endpoint(the_pod) == url


# --- status -------------------------------------------------------------------------------------


def test_a_running_trial_shows_step_throughput_and_eta_and_the_run_its_progress():
    sim = Sim(searching(maxTrials=2, parallelism=1))
    sim.step()
    assert sim.status.percent_complete == 0 and sim.status.eta_seconds is None  # nothing to go on yet
    sim.set("digits-r1-t0", "Running", progress=reported(0.5, 0.6))
    sim.step()
    t = sim.trial("digits-r1-t0")
    assert (t.epoch, t.step, t.steps_per_epoch, t.images_per_second, t.eta_seconds) == (2, 45, 20, 812.5, 95.0)
    assert t.history == [0.5, 0.6]
    # Trial 0 is (2 + 5/20) of 10 epochs in, trial 1 not started: 2.25 / 10 / 2 trials = 11%.
    assert sim.status.percent_complete == 11
    first = sim.status.percent_complete
    sim.set("digits-r1-t0", "Running", progress=reported(0.5, 0.6, 0.7, 0.75))
    sim.step()
    assert sim.status.percent_complete > first
    # The progress could not be read this time: the status keeps what it had.
    sim.set("digits-r1-t0", "Running", progress=None)
    sim.step()
    assert sim.trial("digits-r1-t0").step == 85 and sim.trial("digits-r1-t0").history == [0.5, 0.6, 0.7, 0.75]
    sim.set("digits-r1-t0", "Succeeded", result=ok(0.8, trial="t0"))
    sim.step()
    done = sim.trial("digits-r1-t0")
    assert done.state == "Succeeded" and done.images_per_second is None and done.eta_seconds is None
    assert done.step == 85  # the last step seen stays
    assert sim.status.percent_complete == 50
    sim.set("digits-r1-t1", "Succeeded", result=ok(0.7, trial="t1"))
    sim.step()
    assert sim.status.phase == "Succeeded" and sim.status.percent_complete == 100 and sim.status.eta_seconds is None


def test_a_reported_history_of_another_metric_is_not_the_objective():
    sim = Sim(searching(maxTrials=1, objective={"metric": "val_loss", "direction": "minimize"}))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.9, metric="val_accuracy"))
    sim.step()
    t = sim.trial("digits-r1-t0")
    assert t.history == [] and t.objective is None and t.step == 25  # the rest still counts


def test_a_suspended_trial_shows_no_throughput():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.5))
    sim.step()
    assert sim.trial("digits-r1-t0").images_per_second == 812.5 and sim.status.eta_seconds == 95.0
    sim.set("digits-r1-t0", "Suspended")
    sim.step()
    t = sim.trial("digits-r1-t0")
    assert (t.images_per_second, t.eta_seconds, t.step) == (None, None, 25)


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def trial(
    state: str, *, minutes: float = 0, ran: float | None = None, eta: float | None = None, **kw: Any
) -> TrialStatus:
    """A trial started `minutes` ago that (Succeeded) ran `ran` minutes, or (Running) has `eta` s left."""
    start = NOW - timedelta(minutes=minutes)
    end = start + timedelta(minutes=ran) if ran is not None else None
    return TrialStatus(name="t", state=state, start_time=start, completion_time=end, eta_seconds=eta, **kw)


@pytest.mark.parametrize(
    ("trials", "budget", "parallelism", "expected"),
    [
        ([], 3, 1, None),  # nothing to estimate from
        ([trial("Running", minutes=1, eta=60)], 1, 1, 60),
        ([trial("Running", minutes=1, eta=60)], 3, 1, 60 + 2 * 120),  # the next two take 2 min each
        ([trial("Running", minutes=1, eta=60)], 3, 2, 60 + 120),  # one starts now, one after the first
        ([trial("Succeeded", minutes=20, ran=10), trial("Running", minutes=1, eta=60)], 4, 2, 600 + 60),
        ([trial("Succeeded", minutes=20, ran=10), trial("Pending")], 2, 1, 600),  # pending: a whole trial
        ([trial("Running", minutes=1)], 2, 1, None),  # no ETA from the trainer yet
        ([trial("Succeeded", ran=1), trial("Failed"), trial("Stopped")], 3, 1, 0),  # all done
    ],
    ids=["empty", "one", "serial", "parallel", "mean-of-succeeded", "pending", "no-eta", "done"],
)
def test_run_eta(trials, budget, parallelism, expected):
    status = TrainingRunStatus(trials=trials)
    assert rp.eta_seconds(status, budget, parallelism, NOW) == expected


@pytest.mark.parametrize(
    ("trials", "budget", "expected"),
    [
        ([], 4, 0),
        ([TrialStatus(name="a", state="Succeeded")], 4, 25),
        ([TrialStatus(name="a", state="Stopped"), TrialStatus(name="b", state="Failed")], 2, 100),
        ([TrialStatus(name="a", state="Running", epoch=1, epochs=4, step=15, steps_per_epoch=10)], 1, 37),
        ([TrialStatus(name="a", state="Running", epoch=1, epochs=4)], 1, 25),  # no steps known
        ([TrialStatus(name="a", state="Running", epoch=3, epochs=4, step=999, steps_per_epoch=10)], 1, 100),
        ([TrialStatus(name="a", state="Pending")], 2, 0),
        ([TrialStatus(name="a", state="Running", epoch=9, epochs=10, step=99, steps_per_epoch=10)], 1, 99),
    ],
    ids=["none", "one-of-four", "all-final", "mid-epoch", "epochs-only", "capped", "pending", "never-100-early"],
)
def test_percent_complete(trials, budget, expected):
    assert rp.percent_complete(TrainingRunStatus(trials=trials), budget) == expected
