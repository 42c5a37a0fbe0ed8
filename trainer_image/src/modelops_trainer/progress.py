"""Training progress over HTTP, served by rank 0 while it trains (the operator and Prometheus read it).

- `GET /progress`: JSON `{epoch, epochs, step, stepInEpoch, stepsPerEpoch, imagesPerSecond,
  etaSeconds, metric, history, startedAt, updatedAt}`; `history` is the objective metric after each
  finished epoch (index 0 is epoch 1), the values `metrics.jsonl` holds for that metric.
- `GET /metrics`: the same as Prometheus gauges (`modelops_train_*`), in the text format.

The port is `MODELOPS_PROGRESS_PORT` (default 9400; `0` picks a free one, `off` serves nothing).
The training loop only updates a small board under a lock (a few assignments per optimizer step);
the server runs in a daemon thread and builds its answers from a copy. Nothing here may slow or
stop training: a server that cannot start, or a request that fails, is logged once and ignored.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

PORT_ENV = "MODELOPS_PROGRESS_PORT"
DEFAULT_PORT = 9400
WINDOW_SECONDS = 30.0
"""imagesPerSecond is measured over the optimizer steps of about the last this many seconds."""
WINDOW_STEPS = 512


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressBoard:
    """Where the run stands; written by the training loop, read by the server thread."""

    def __init__(self, *, metric: str, epochs: int, steps_per_epoch: int, images_per_step: int) -> None:
        self._lock = threading.Lock()
        self.metric = metric
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.images_per_step = images_per_step
        self.epoch = 0
        self.step = 0
        self.step_in_epoch = 0
        self.history: list[float | None] = []
        self.started_at = _now()
        self.updated_at = self.started_at
        self.done = False
        self._window: deque[tuple[float, int]] = deque(maxlen=WINDOW_STEPS)
        """(monotonic time, optimizer steps so far) of recent steps."""

    def resumed(self, *, epoch: int, step: int, step_in_epoch: int, history: list[dict[str, Any]]) -> None:
        """Where a resumed run starts: the checkpoint's epochs, steps and history (the history
        `metrics.jsonl` is rewritten from, so the curve is complete after a resume)."""
        with self._lock:
            self.epoch, self.step, self.step_in_epoch = epoch, step, step_in_epoch
            self.history = [_finite(r.get(self.metric)) for r in history]
            self.updated_at = _now()

    def stepped(self, step: int, step_in_epoch: int) -> None:
        """An optimizer step was taken (the epoch's `step_in_epoch`-th)."""
        with self._lock:
            self.step, self.step_in_epoch = step, step_in_epoch
            self._window.append((time.monotonic(), step))
            self.updated_at = _now()

    def epoch_finished(self, history: list[dict[str, Any]]) -> None:
        """An epoch ended; `history` is the run's per-epoch records (what `metrics.jsonl` holds)."""
        with self._lock:
            self.epoch = len(history)
            self.step_in_epoch = 0
            self.history = [_finite(r.get(self.metric)) for r in history]
            self.updated_at = _now()

    def finished(self) -> None:
        """Training is over (the last epoch, or stopped early): nothing is left to wait for."""
        with self._lock:
            self.done = True
            self.updated_at = _now()

    def snapshot(self) -> dict[str, Any]:
        """The `/progress` document."""
        with self._lock:
            window = list(self._window)
            doc: dict[str, Any] = {
                "epoch": self.epoch,
                "epochs": self.epochs,
                "step": self.step,
                "stepInEpoch": self.step_in_epoch,
                "stepsPerEpoch": self.steps_per_epoch,
                "metric": self.metric,
                "history": list(self.history),
                "startedAt": self.started_at,
                "updatedAt": self.updated_at,
            }
            done = self.done
        now = time.monotonic()
        recent = [w for w in window if now - w[0] <= WINDOW_SECONDS] or window[-2:]
        rate = None
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            steps_per_second = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
            rate = steps_per_second * self.images_per_step
        doc["imagesPerSecond"] = round(rate, 2) if rate is not None else None
        remaining = max(0, (self.epochs - doc["epoch"]) * self.steps_per_epoch - doc["stepInEpoch"])
        if remaining == 0 or done:
            doc["etaSeconds"] = 0.0
        elif rate:
            doc["etaSeconds"] = round(remaining * self.images_per_step / rate, 1)
        else:
            doc["etaSeconds"] = None
        return doc


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


GAUGES = (
    ("modelops_train_epoch", "Completed epochs.", "epoch"),
    ("modelops_train_epochs", "Epochs the run is set to train.", "epochs"),
    ("modelops_train_step", "Optimizer steps taken.", "step"),
    ("modelops_train_steps_per_epoch", "Optimizer steps per epoch.", "stepsPerEpoch"),
    ("modelops_train_images_per_second", "Training images per second over the last 30 seconds.", "imagesPerSecond"),
    ("modelops_train_eta_seconds", "Estimated seconds until the last epoch ends.", "etaSeconds"),
)


def exposition(doc: Mapping[str, Any]) -> str:
    """`doc` (a `/progress` document) as Prometheus text exposition; unknown values are left out."""
    lines: list[str] = []

    def gauge(name: str, help_: str, value: Any, labels: str = "") -> None:
        if value is None:
            return
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name}{labels} {float(value)!r}"])

    for name, help_, key in GAUGES:
        gauge(name, help_, doc.get(key))
    epochs, spe = doc.get("epochs") or 0, doc.get("stepsPerEpoch") or 0
    if epochs and spe:
        done = (doc["epoch"] + doc["stepInEpoch"] / spe) / epochs
        gauge("modelops_train_progress_ratio", "Fraction of the run's epochs done (0 to 1).", min(1.0, done))
    history = [v for v in doc.get("history") or [] if v is not None]
    metric = str(doc.get("metric") or "").replace("\\", "\\\\").replace('"', '\\"')
    if history:
        labels = f'{{metric="{metric}"}}'
        gauge("modelops_train_objective", "The objective metric after the last epoch.", history[-1], labels)
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    board: ProgressBoard

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            doc = self.board.snapshot()
            if path == "/progress":
                self._send(200, "application/json", json.dumps(doc, allow_nan=False).encode())
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", exposition(doc).encode())
            else:
                self._send(404, "text/plain", b"not found: GET /progress or /metrics\n")
        except Exception:
            _once("a progress request failed")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: Prometheus and the operator ask every few seconds."""


_warned: set[str] = set()


def _once(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(what, exc_info=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        _once("a progress request failed")


class ProgressServer:
    """The HTTP server in its daemon thread."""

    def __init__(self, board: ProgressBoard, port: int, host: str = "") -> None:
        handler = type("Handler", (_Handler,), {"board": board})
        self._server = _Server((host, port), handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="progress", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def port_from_env(env: Mapping[str, str]) -> int | None:
    """The port to serve on (None: `off`); a value that is no port is logged and the default used."""
    raw = (env.get(PORT_ENV) or "").strip()
    if raw.lower() == "off":
        return None
    if not raw:
        return DEFAULT_PORT
    if raw.isdigit() and int(raw) < 65536:
        return int(raw)
    log.warning("%s=%r is not a port; serving progress on %d", PORT_ENV, raw, DEFAULT_PORT)
    return DEFAULT_PORT


def serve(board: ProgressBoard, env: Mapping[str, str]) -> ProgressServer | None:
    """Serve `board` on the port `env` names; None (logged) when off or the port cannot be bound."""
    port = port_from_env(env)
    if port is None:
        return None
    try:
        server = ProgressServer(board, port)
    except OSError as exc:
        log.warning("progress is not served: %s", exc, extra={"port": port})
        return None
    log.info("progress served", extra={"port": server.port, "paths": ["/progress", "/metrics"]})
    return server
