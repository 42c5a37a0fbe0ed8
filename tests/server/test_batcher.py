"""The worker's batcher in process: when a batch runs (``--batch-wait``), what it takes, what it leaves.

No worker process and no clock: the ready queue is a fake that records whether the batcher blocked
on it and for how long it would have, and hands out what the test put in it. Requests "arriving"
are the ones the worker is still decoding: each blocking get delivers the next one.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from modelops_server.config import Settings, load_settings
from modelops_server.runtime import RuntimeOptions
from modelops_server.worker import BatchingOptions, Worker, _Prepared

WINDOW_S = 3600.0  # far longer than any test: a batcher that waited it out would hang the test


@dataclass
class FakeReady:
    """``Worker.ready``: items now (``get_nowait``) and items that arrive while the batcher blocks
    (``get(timeout=…)``: each blocking call delivers the next of ``arriving``, one fewer being
    decoded, or raises Empty)."""

    now: list[_Prepared | None] = field(default_factory=list)
    arriving: list[_Prepared] = field(default_factory=list)
    blocked_for: list[float] = field(default_factory=list)
    put_back: list[_Prepared | None] = field(default_factory=list)
    owner: Worker | None = None

    def get_nowait(self) -> _Prepared | None:
        if not self.now:
            raise queue.Empty
        return self.now.pop(0)

    def get(self, timeout: float | None = None) -> _Prepared | None:
        assert timeout is not None, "the batcher must never block without a deadline"
        self.blocked_for.append(timeout)
        if not self.arriving:
            raise queue.Empty
        if self.owner is not None:
            self.owner._decoding -= 1
        return self.arriving.pop(0)

    def put(self, item: _Prepared | None) -> None:
        self.put_back.append(item)


def req(req_id: int, rows: int = 1, model: str = "m", enqueued_at: float | None = None) -> _Prepared:
    return _Prepared(
        req_id=req_id,
        model_key=model,
        kind="v2",
        enqueued_at=time.monotonic() if enqueued_at is None else enqueued_at,
        rows=np.zeros((rows, 1), dtype=np.float32),
    )


def worker(wait: str, ready: FakeReady, max_batch_size: int = 8) -> Worker:
    """A worker (no threads started) whose ready queue is ``ready``, decoding what is to arrive."""
    batching = BatchingOptions(max_batch_size=max_batch_size, max_batch_delay_s=WINDOW_S, wait=wait)  # type: ignore[arg-type]
    w = Worker(0, queue.Queue(), queue.Queue(), RuntimeOptions(), batching)  # type: ignore[arg-type]
    w.ready = ready  # type: ignore[assignment]
    w._decoding = len(ready.arriving)
    ready.owner = w
    return w


def ids(batch: list[_Prepared]) -> list[int]:
    return [item.req_id for item in batch]


@pytest.mark.parametrize(
    ("wait", "now", "arriving", "batch", "blocked"),
    [
        # A lone request: adaptive runs it at once, window waits for more (here: none come).
        ("adaptive", [], [], [1], 0),
        ("window", [], [], [1], 1),
        # Requests already decoded join the batch without any wait, in both modes.
        ("adaptive", [2, 3], [], [1, 2, 3], 0),
        # One is being decoded: adaptive waits for it (within the window), then for nothing more.
        ("adaptive", [], [2], [1, 2], 1),
        ("adaptive", [2], [3, 4], [1, 2, 3, 4], 2),
        # Window mode waits for whatever arrives until the window ends (the last wait finds none).
        ("window", [2], [3, 4], [1, 2, 3, 4], 3),
    ],
)
def test_when_a_batch_runs(wait: str, now: list[int], arriving: list[int], batch: list[int], blocked: int):
    ready = FakeReady(now=[req(i) for i in now], arriving=[req(i) for i in arriving])
    taken, carry = worker(wait, ready)._fill(req(1))
    assert ids(taken) == batch
    assert carry is None
    assert len(ready.blocked_for) == blocked
    assert all(0 < t <= WINDOW_S for t in ready.blocked_for)


@pytest.mark.parametrize("wait", ["adaptive", "window"])
def test_a_full_batch_or_another_model_ends_it_and_is_carried(wait: str):
    ready = FakeReady(now=[req(2, rows=3), req(3, rows=4), req(4, model="other")])
    taken, carry = worker(wait, ready, max_batch_size=8)._fill(req(1, rows=2))
    assert (ids(taken), carry.req_id if carry else None) == ([1, 2], 3)  # 2 + 3 + 4 rows > 8
    ready = FakeReady(now=[req(2), req(3, model="other"), req(4)])
    taken, carry = worker(wait, ready)._fill(req(1))
    assert (ids(taken), carry.req_id if carry else None) == ([1, 2], 3)
    assert ready.blocked_for == []


def test_a_batch_that_is_full_runs_without_waiting_in_either_mode():
    for wait in ("adaptive", "window"):
        ready = FakeReady(now=[req(2), req(3)], arriving=[req(4)])
        taken, _ = worker(wait, ready, max_batch_size=3)._fill(req(1))
        assert ids(taken) == [1, 2, 3]
        assert ready.blocked_for == []


def test_the_window_counts_from_when_the_first_request_was_queued():
    ready = FakeReady()
    w = worker("window", ready)
    taken, _ = w._fill(req(1, enqueued_at=time.monotonic() - WINDOW_S - 1))  # its window is over
    assert ids(taken) == [1]
    assert ready.blocked_for == []


def test_a_stop_seen_while_filling_ends_the_batch_and_is_put_back():
    ready = FakeReady(now=[req(2), None, req(3)])
    taken, carry = worker("adaptive", ready)._fill(req(1))
    assert (ids(taken), carry) == ([1, 2], None)
    assert ready.put_back == [None]


def test_errors_met_while_filling_are_answered_and_left_out():
    bad = req(2)
    bad.error = ValueError("broken")
    outbox: Any = queue.Queue()
    ready = FakeReady(now=[bad, req(3)])
    w = worker("adaptive", ready)
    w.outbox = outbox
    taken, _ = w._fill(req(1))
    assert ids(taken) == [1, 3]
    answer = outbox.get_nowait()
    assert (answer.req_id, answer.status) == (2, 500)


def test_batch_wait_setting():
    assert Settings(model_uri="x").batch_wait == "adaptive"
    assert load_settings(["--model-uri", "x"], environ={"MODELOPS_BATCH_WAIT": "window"}).batch_wait == "window"
    assert load_settings(["--model-uri", "x", "--batch-wait", "adaptive"], environ={}).batch_wait == "adaptive"
    with pytest.raises(SystemExit):
        load_settings(["--model-uri", "x", "--batch-wait", "never"], environ={})
