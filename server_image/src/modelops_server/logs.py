"""Logging: one JSON object per line in a pod, readable text on a terminal.

``--log-format auto`` (the default) writes JSON unless stderr is a terminal. Every record carries
``component`` (``frontend``, ``worker``, ``jobs``) and, in worker processes, ``worker``; extra
fields passed with ``log.info(..., extra={...})`` become JSON keys. A record written while the
front end handles a request also carries that request's ``request_id`` and, when the client sent
a W3C ``traceparent``, its ``trace_id`` (``request_context``), so that a request's log lines can
be found from its answer's ``X-Request-Id`` or from a trace.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

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
        for key, value in (REQUEST.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


#: The request being handled in this task: ``request_id`` and, where given, ``trace_id``.
REQUEST: ContextVar[dict[str, str] | None] = ContextVar("modelops_request", default=None)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def request_context(request_id: str | None, traceparent: str | None) -> dict[str, str]:
    """A request's log context: the client's (or a proxy's) ``X-Request-Id`` when it is a plain
    token of at most 128 characters, else a new one; and the trace id of a valid ``traceparent``."""
    rid = request_id.strip() if request_id else ""
    context = {"request_id": rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex}
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    if match and match.group(1) != "0" * 32:
        context["trace_id"] = match.group(1)
    return context


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
