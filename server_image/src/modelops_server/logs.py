"""Logging: one JSON object per line in a pod, readable text on a terminal.

``--log-format auto`` (the default) writes JSON unless stderr is a terminal. Every record carries
``component`` (``frontend``, ``worker``, ``jobs``) and, in worker processes, ``worker``; extra
fields passed with ``log.info(..., extra={...})`` become JSON keys.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class _ContextFilter(logging.Filter):
    def __init__(self, component: str, worker: int | None) -> None:
        super().__init__()
        self.component = component
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        if self.worker is not None and not hasattr(record, "worker"):
            record.worker = self.worker
        return True


def configure_logging(
    fmt: str = "auto", level: str = "INFO", *, worker: int | None = None, component: str = ""
) -> None:
    """Send this process's logs to stderr as JSON (``json``), text (``text``) or by terminal (``auto``)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(component)s %(name)s: %(message)s"))
    handler.addFilter(_ContextFilter(component or ("worker" if worker is not None else "frontend"), worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is replaced by our own per-request record (see endpoints).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
