"""What the run tells people and programs: logs, progress bars, per-epoch metrics, the summary.

- Logs: on a terminal, readable lines and tqdm progress bars; elsewhere (a pod), one JSON object
  per line (python-json-logger) with the extra fields of each record, for log collectors. Only
  rank 0 logs progress; other ranks log warnings and errors.
- Metrics: one JSON line per epoch in `<output>/metrics.jsonl` (rewritten whole from the
  history each epoch, so a resumed run never duplicates a line). In trial mode each epoch also
  prints `epoch=N <objective>=<value>` on stdout, the format Katib's StdOut collector parses.
- The termination message: a JSON summary under 4096 bytes at `terminationMessagePath`, which
  Kubernetes puts in the pod status where the operator reads it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pythonjsonlogger.json import JsonFormatter
from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from modelops_trainer import storage

log = logging.getLogger(__name__)
T = TypeVar("T")
TERMINATION_LIMIT = 4096
METRICS_FILE = "metrics.jsonl"


def setup_logging(fmt: Literal["auto", "json", "text"], *, rank: int) -> bool:
    """Configure the root logger; returns whether progress bars are shown (text on a terminal)."""
    use_text = fmt == "text" or (fmt == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_text:
        prefix = f"[rank {rank}] " if rank else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s%(extras)s", "%H:%M:%S"))
        handler.addFilter(_ExtrasFilter())
    else:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"rank": rank},
                timestamp=False,
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_modelops", False):
            root.removeHandler(old)
    handler._modelops = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logging.captureWarnings(True)
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return use_text and sys.stderr.isatty() and rank == 0


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "extras"}


class _ExtrasFilter(logging.Filter):
    """Appends a record's extra fields as ` key=value` to text log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        record.extras = "".join(f" {k}={_short(v)}" for k, v in extras.items())
        return True


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def progress(items: Iterable[T], *, enabled: bool, total: int, desc: str) -> Iterator[T]:
    """`items`, with a tqdm bar on the terminal when enabled."""
    if not enabled:
        yield from items
        return
    bar = tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    try:
        with logging_redirect_tqdm():  # log lines print above the bar instead of through it
            yield from bar
    finally:
        bar.close()


class MetricsWriter:
    """Writes the per-epoch history to `<output>/metrics.jsonl` (rank 0 only)."""

    def __init__(self, output_uri: str, *, trial_objective: str | None) -> None:
        self.uri = storage.join(output_uri, METRICS_FILE)
        self.trial_objective = trial_objective
        self.followers: list[Callable[[list[dict[str, Any]]], None]] = []
        """Called with the history after each write (the MLflow tracker); they must not raise."""

    def write(self, history: list[dict[str, Any]]) -> None:
        """Replace the file with `history` and announce the last epoch."""
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in history)
        storage.write_bytes_atomic(self.uri, lines.encode())
        last = history[-1]
        log.info("epoch finished", extra={"event": "epoch", **last})
        if self.trial_objective is not None and last.get(self.trial_objective) is not None:
            print(f"epoch={last['epoch']} {self.trial_objective}={last[self.trial_objective]:.6g}", flush=True)
        for follower in self.followers:
            follower(history)


def write_termination_message(path: str, summary: Mapping[str, Any]) -> None:
    """Write `summary` as JSON under 4096 bytes to `path`; shortened (message first) when too big.

    A missing or unwritable path (running outside Kubernetes) only logs at debug level.
    """
    if not path:
        return
    doc = dict(summary)
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    for key in ("precision", "parity", "message", "metrics"):
        if len(data) < TERMINATION_LIMIT:
            break
        if key == "message" and isinstance(doc.get("message"), str):
            doc["message"] = doc["message"][:400] + "…"
        else:
            doc.pop(key, None)
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    data = data[: TERMINATION_LIMIT - 1]
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        log.debug("no termination message written", extra={"path": path, "error": str(exc)})
