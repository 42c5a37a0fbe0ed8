"""When each object is next reconciled without a watch event: its resync (every `resync_seconds`)
and, while work is under way (a Job or trial running, a rollout step), its progress poll (every
`progress_seconds`).

One schedule for all objects, holding a due time per object and nothing else. kopf's timers did
this before: two tasks per object, and, for every object with a timer, kopf keeps the object's
latest body from the watch (`live_fresh_body`), about 40 KB of Python objects for a
ModelDeployment, half of it `managedFields`. At 1,000 objects that was the largest share of the
operator's heap. A scheduled reconcile reads the object when it is due instead.

Thread-safe: the reconciles report to it from kopf's thread pool, the event loop reads it.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Mapping
from typing import Any

from modelops_operator.api.kinds import Kind
from modelops_operator.reconcile import dependencies as dep
from modelops_operator.settings import OperatorSettings

Key = tuple[str, str, str]
"""(kind, namespace, name)."""

#: A change due at a time of day is reconciled this much after it: conditions keep whole seconds.
CLOCK_MARGIN_SECONDS = 1.5


def key_of(kind: Kind, body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (kind.kind, meta.get("namespace") or "", meta["name"])


class Schedule:
    """Due times by object; `due(now)` hands out (and forgets) those that came."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.resync = settings.resync_seconds
        self.progress = settings.progress_seconds
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._due)

    def _set(self, key: Key, at: float) -> None:
        self._due[key] = at
        heapq.heappush(self._heap, (at, key))

    def _interval(self, kind: Kind, status: Mapping[str, Any], wall: float | None) -> float:
        """Seconds to the next reconcile: a progress poll or a resync away, or sooner where the
        status changes by the clock alone at a known time (a grace period's end)."""
        doc = dict(status)
        interval = self.progress if dep.needs_progress(kind.kind, doc) else self.resync
        if (changes := dep.changes_at(kind.kind, doc)) is not None:
            later = changes.timestamp() + CLOCK_MARGIN_SECONDS - (time.time() if wall is None else wall)
            if later > 0:
                interval = min(interval, later)
        return interval

    def seen(self, kind: Kind, body: Mapping[str, Any], now: float, wall: float | None = None) -> None:
        """A watch event showed the object: a new one is scheduled (a resync away, or a progress
        poll when its status shows work under way); one that now shows work under way is polled
        within `progress_seconds`; one being deleted is no longer scheduled."""
        key = key_of(kind, body)
        with self._lock:
            if body["metadata"].get("deletionTimestamp"):
                self._due.pop(key, None)
                return
            at = now + self._interval(kind, body.get("status") or {}, wall)
            if key not in self._due or at < self._due[key]:
                self._set(key, at)

    def reconciled(
        self, kind: Kind, body: Mapping[str, Any], status: Mapping[str, Any], now: float, wall: float | None = None
    ) -> None:
        """The object was just reconciled (by any path) and has `status`: next time from now
        (`now` on the monotonic clock; `wall`, the time of day, defaults to the system's)."""
        key = key_of(kind, body)
        with self._lock:
            if not body["metadata"].get("deletionTimestamp"):
                self._set(key, now + self._interval(kind, status, wall))

    def retry(self, key: Key, at: float) -> None:
        """A scheduled reconcile failed: try again at `at` (unless something rescheduled it)."""
        with self._lock:
            if key not in self._due:
                self._set(key, at)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._due.pop(key, None)

    def due(self, now: float) -> list[Key]:
        """The objects due at `now`, taken off the schedule (a reconcile puts each back)."""
        out: list[Key] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                at, key = heapq.heappop(self._heap)
                if self._due.get(key) == at:  # else superseded by a later `_set`, or forgotten
                    del self._due[key]
                    out.append(key)
        return out

    def next_at(self) -> float | None:
        """When the next object is due (None: nothing scheduled)."""
        with self._lock:
            while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None
