"""Reading a trainer's progress endpoint (`GET http://<master pod IP>:<port>/progress`).

Standard library only, like the Prometheus client. Short and bounded: a connect or read that takes
longer than `TIMEOUT_SECONDS`, or a body over `MAX_BYTES`, is no answer. The caller treats any
ProgressUnavailable as "not read this time": the trial's status keeps its previous values.

An address that did not answer at all (timed out, or no route: kwok's simulated pods, whose IPs
lead nowhere) is not asked again for `Backoff.seconds`, so that such pods do not add a timeout to
every reconcile. A refused connection (a trainer not listening yet) is asked again next time.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from modelops_operator.api.names import PROGRESS_PORT, PROGRESS_PORT_NAME

TIMEOUT_SECONDS = 1.0
MAX_BYTES = 256 * 1024


class ProgressUnavailable(Exception):
    """The endpoint could not be read; str() says why. `unreachable`: nothing answered at all."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Backoff:
    """The endpoints not to ask again yet: those that did not answer, for `seconds` after."""

    def __init__(self, seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def waiting(self, url: str) -> bool:
        """Whether `url` did not answer less than `seconds` ago."""
        with self._lock:
            return self._until.get(url, 0.0) > self._clock()

    def record(self, url: str, answered: bool) -> None:
        """The outcome of asking `url` (expired entries are dropped: pods come and go)."""
        with self._lock:
            now = self._clock()
            self._until = {u: t for u, t in self._until.items() if t > now and u != url}
            if not answered:
                self._until[url] = now + self.seconds


def endpoint(pod: dict[str, Any]) -> str | None:
    """The `/progress` URL of a Running pod with an IP (its container port named `progress`, else
    the trainer's default); None for a pod that is not Running or has no IP yet."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return None
    port = PROGRESS_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == PROGRESS_PORT_NAME and p.get("containerPort"):
                port = int(p["containerPort"])
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/progress"


def fetch(url: str, timeout: float = TIMEOUT_SECONDS, limit: int = MAX_BYTES) -> bytes:
    """The body of a GET of `url`; ProgressUnavailable when unreachable, slower than `timeout` in
    all (a body trickling in included), not 200, or over `limit` bytes."""
    deadline = time.monotonic() + timeout
    body = b""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while len(body) <= limit:
                chunk: bytes = response.read(min(16384, limit + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if time.monotonic() > deadline:
                    raise ProgressUnavailable(f"{url} took longer than {timeout:g} s")
    except urllib.error.HTTPError as e:
        raise ProgressUnavailable(f"{url} answered {e.code}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        # Refused is answered at once (a trainer still starting): asking again next time costs
        # nothing, so only silence (a timeout, an address that leads nowhere) backs off.
        refused = isinstance(getattr(e, "reason", e), ConnectionRefusedError)
        raise ProgressUnavailable(f"{url} unreachable: {e}", unreachable=not body and not refused) from e
    if len(body) > limit:
        raise ProgressUnavailable(f"{url} answered more than {limit} bytes")
    return body
