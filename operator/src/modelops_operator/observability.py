"""What the operator tells about itself: its Prometheus metrics and the filters on kopf's logs.

Every metric the operator exports is defined here (`hack/docgen.py` lists this module's metrics in
the metrics reference). The log filters are installed once, at start, by `install_log_filters`.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from collections.abc import Mapping

import prometheus_client

from modelops_operator import __version__
from modelops_operator.settings import OperatorSettings

#: Where the operator image puts its `GIT_COMMIT` build argument.
COMMIT_ENV = "MODELOPS_GIT_COMMIT"

WATCH_STARTS = prometheus_client.Counter(
    "modelops_watch_restarts",
    "Watch streams (re)started against the API server, by reason: start (one per watched kind when "
    "the operator starts), inactive (no event, bookmarks included, for kopf's inactivity timeout or "
    "MODELOPS_WATCH_CLIENT_TIMEOUT_SECONDS: a stalled or cut connection, replaced) and gone (the "
    "resource version expired: re-listed). A watch the server ends on time is renewed silently.",
    ["reason"],
)
WATCH_EVENTS = prometheus_client.Counter(
    "modelops_watch_events", "Watch events handled, by kind (list results at a (re)start included).", ["kind"]
)
ROLLOUT_ABORTED = prometheus_client.Gauge(
    "modelops_rollout_aborted",
    "1 while the canary of a ModelDeployment is rolled back (analysis failed or aborted), else 0; the "
    "series goes with the ModelDeployment.",
    ["namespace", "modeldeployment"],
)
RECONCILES = prometheus_client.Counter(
    "modelops_reconciles",
    "Reconciles by kind and result: success, invalid (the spec cannot be acted on), error (retried).",
    ["kind", "result"],
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "modelops_reconcile_duration_seconds",
    "Time one reconcile took, API calls included, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECTS = prometheus_client.Gauge(
    "modelops_objects", "Objects the operator reconciles, by kind and phase.", ["kind", "phase"]
)
_PHASES: dict[tuple[str, str, str], str] = {}


BUILD_INFO = prometheus_client.Info(
    "modelops_build",
    "The running operator's build in its labels: version, git_commit (unknown when the image build "
    "did not pass GIT_COMMIT) and python_version; always 1.",
)


def build_labels(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The build's labels, the commit read from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    return {
        "version": __version__,
        "git_commit": env.get(COMMIT_ENV, "").strip() or "unknown",
        "python_version": platform.python_version(),
    }


def publish_build_info(environ: Mapping[str, str] | None = None) -> None:
    """Set `modelops_build_info` (once at startup; setting it again replaces the labels)."""
    BUILD_INFO.info(build_labels(environ))


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted object's series: its phase count and, for a ModelDeployment, its rollout gauge."""
    count_phase(kind, namespace, name, None)
    if kind == "ModelDeployment":
        ROLLOUT_ABORTED.remove(namespace, name)


def count_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Keep `modelops_objects` in step with the last phase seen of each object (None: deleted)."""
    key = (kind, namespace, name)
    before = _PHASES.pop(key, None)
    if before is not None:
        OBJECTS.labels(kind, before).dec()
    if phase is not None:
        _PHASES[key] = phase
        OBJECTS.labels(kind, phase).inc()


class CountWatchStarts(logging.Filter):
    """kopf announces watch (re)starts only in DEBUG records: count them, and drop the DEBUG records
    unless the operator logs at DEBUG (the logger must let them through to be counted)."""

    #: (how kopf's message starts, how it ends, the reason counted)
    REASONS = (
        ("Starting the watch-stream", "", "start"),
        ("Watch-stream for", "reconnecting.", "inactive"),
        ("Restarting the watch-stream", "", "gone"),
    )

    def __init__(self, keep_debug: bool) -> None:
        super().__init__()
        self.keep_debug = keep_debug

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for prefix, suffix, reason in self.REASONS:
            if message.startswith(prefix) and message.endswith(suffix):
                WATCH_STARTS.labels(reason).inc()
        return record.levelno > logging.DEBUG or self.keep_debug


class DropRoutineSuccess(logging.Filter):
    """kopf logs every handler success at INFO: for the handlers that run on every event
    (waking) that is a line per object every few seconds. What changed is logged by the reconcile
    ("status updated: ..."); failures are still logged. (Resyncs and progress polls are not kopf
    timers: `controllers.schedule` runs them and logs only what they change or fail at.)"""

    ROUTINE = re.compile(r"^Handler 'wake[\w-]*' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or not self.ROUTINE.match(record.getMessage())


#: kopf's logger of watch streams, and of its handlers' outcomes.
WATCH_LOGGER, OBJECTS_LOGGER = "kopf._cogs.clients.watching", "kopf.objects"


def install_log_filters(settings: OperatorSettings) -> None:
    """Count watch (re)starts and drop routine successes from kopf's logs (once per process)."""
    watch = logging.getLogger(WATCH_LOGGER)
    if not any(isinstance(f, CountWatchStarts) for f in watch.filters):
        watch.addFilter(CountWatchStarts(keep_debug=settings.log_level == "DEBUG"))
    watch.setLevel(logging.DEBUG)
    objects = logging.getLogger(OBJECTS_LOGGER)
    if not any(isinstance(f, DropRoutineSuccess) for f in objects.filters):
        objects.addFilter(DropRoutineSuccess())
