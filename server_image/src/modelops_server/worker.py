"""A worker process: parse, decode and preprocess requests, batch them dynamically, run the model.

The front end sends each worker its own queue of messages (see ``dataplane``) and reads all answers
from one shared result queue. Inside a worker, three kinds of threads form a pipeline so that the
cores never wait on each other:

    intake thread ──► decode pool (N threads) ──► ready queue ──► batcher (this process's main thread)
    (bounded by a          parse the protocol,        in order of        groups rows of one model up to
     prefetch semaphore)   decode + preprocess        completion         max_batch_size or max_batch_delay,
                                                                         runs ONNX Runtime, answers

Pillow, numpy and ONNX Runtime all release the GIL, so decoding the next requests overlaps with
inference on the current batch. A control thread loads and unloads models beside the serving ones
(hot swap) and acknowledges each load only after warm-up.

Messages in (tuples, pickled by ``multiprocessing``):
    ("infer", req_id, model_key, kind, payload, meta, enqueued_at)  kind: "v2" | "classify"
    ("load", model_key, local_path, card_json, name, version)
    ("unload", model_key)
    ("stop",)
Messages out:
    ("result", req_id, status, body, headers, (batch_started_at,) or None, error_kind)
    ("batch", model_key, rows, inference_seconds)                     one per ONNX Runtime run
    ("loaded", worker_id, model_key, error_or_None, seconds, runner_facts)
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.queues import Queue as MPQueue
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelops_server import protocol
from modelops_server.errors import InvalidModelOutput, ServerError, Unavailable, http_status, to_wire
from modelops_server.modelcard import ModelCard
from modelops_server.runtime import ModelRunner, RuntimeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching and pipeline sizes for one worker."""

    max_batch_size: int = 16
    max_batch_delay_s: float = 0.005
    decode_threads: int = 2
    prefetch: int = 32
    max_rows_per_request: int = 64
    max_request_pixels: int = 128_000_000


@dataclass
class _Prepared:
    """A request after parsing and preprocessing, waiting for its batch."""

    req_id: int
    model_key: str
    kind: str
    enqueued_at: float
    rows: npt.NDArray[np.float32] | None = None
    parsed: protocol.ParsedRequest | None = None
    top_k: int = 5
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return 0 if self.rows is None else int(self.rows.shape[0])


class Worker:
    """The state of one worker process; :func:`worker_main` builds and runs it."""

    def __init__(
        self,
        worker_id: int,
        inbox: MPQueue[tuple[Any, ...]],
        outbox: MPQueue[tuple[Any, ...]],
        runtime: RuntimeOptions,
        batching: BatchingOptions,
    ) -> None:
        self.worker_id = worker_id
        self.inbox = inbox
        self.outbox = outbox
        self.runtime = runtime
        self.batching = batching
        self.models: dict[str, tuple[ModelRunner, str, str]] = {}  # key -> (runner, name, version)
        self.ready: queue.Queue[_Prepared | None] = queue.Queue()
        self.control: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.slots = threading.Semaphore(batching.prefetch)
        self.pool = ThreadPoolExecutor(batching.decode_threads, thread_name_prefix=f"decode-{worker_id}")
        self.stopping = threading.Event()

    # --- intake and control -------------------------------------------------------------------

    def intake(self) -> None:
        """Move messages from the front end's queue into the decode pool, at most ``prefetch`` at a time."""
        while True:
            self.slots.acquire()
            msg = self.inbox.get()
            if msg[0] == "infer":
                _, req_id, key, kind, payload, meta, enqueued_at = msg
                self.pool.submit(self._prepare, req_id, key, kind, payload, meta, enqueued_at)
                continue
            self.slots.release()
            if msg[0] == "stop":
                self.control.put(None)
                self.ready.put(None)
                return
            self.control.put(msg)

    def control_loop(self) -> None:
        """Load and unload models, beside the ones serving, and acknowledge each load."""
        while (msg := self.control.get()) is not None:
            if msg[0] == "load":
                _, key, path, card_json, name, version = msg
                started = time.monotonic()
                try:
                    runner = ModelRunner(path, ModelCard.model_validate_json(card_json), self.runtime)
                    runner.warm_up(tuple(sorted({1, self.batching.max_batch_size})))
                    self.models[key] = (runner, name, version)
                    self.outbox.put(
                        ("loaded", self.worker_id, key, None, time.monotonic() - started, runner.describe())
                    )
                except BaseException as exc:
                    self.outbox.put(("loaded", self.worker_id, key, to_wire(exc), time.monotonic() - started, {}))
            elif msg[0] == "unload":
                self.models.pop(msg[1], None)

    # --- decode pool ----------------------------------------------------------------------------

    def _prepare(self, req_id: int, key: str, kind: str, payload: bytes, meta: dict[str, Any], at: float) -> None:
        item = _Prepared(req_id=req_id, model_key=key, kind=kind, enqueued_at=at)
        try:
            loaded = self.models.get(key)
            if loaded is None:
                raise Unavailable(f"model {key} is not loaded in worker {self.worker_id}")
            runner = loaded[0]
            pre = runner.preprocessor
            if kind == "classify":
                item.top_k = int(meta.get("top_k", 5))
                item.rows = pre.image_row(payload)[None]
            else:
                parsed = protocol.parse_request(
                    payload,
                    meta.get("header_length"),
                    runner.card,
                    max_rows=self.batching.max_rows_per_request,
                    content_type=meta.get("content_type", ""),
                )
                item.parsed = parsed
                if parsed.kind == "tensor" and parsed.tensor is not None:
                    item.rows = np.ascontiguousarray(parsed.tensor, dtype=np.float32)
                elif parsed.kind == "pixels" and parsed.pixels is not None:
                    item.rows = np.stack([pre.pixels_row(p) for p in parsed.pixels])
                else:
                    pre.check_request_pixels(parsed.images, self.batching.max_request_pixels)
                    item.rows = np.stack([pre.image_row(b) for b in parsed.images])
        except BaseException as exc:
            item.error = exc
        self.ready.put(item)

    # --- batcher ---------------------------------------------------------------------------------

    def batch_loop(self) -> None:
        """Group ready requests into batches of one model and run them until told to stop."""
        carry: _Prepared | None = None
        limit = self.batching.max_batch_size
        while True:
            first = carry if carry is not None else self.ready.get()
            carry = None
            if first is None:
                return
            if first.error is not None:
                self._answer_error(first)
                continue
            batch = [first]
            rows = first.count
            deadline = first.enqueued_at + self.batching.max_batch_delay_s
            while rows < limit:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self.ready.get(timeout=remaining) if remaining > 0 else self.ready.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.ready.put(None)  # finish this batch, then stop
                    break
                if nxt.error is not None:
                    self._answer_error(nxt)
                    continue
                if nxt.model_key != first.model_key or rows + nxt.count > limit:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += nxt.count
            self._run(batch)

    def _run(self, batch: list[_Prepared]) -> None:
        key = batch[0].model_key
        loaded = self.models.get(key)
        if loaded is None:
            for item in batch:
                item.error = Unavailable(f"model {key} was unloaded before its batch ran")
                self._answer_error(item)
            return
        runner, name, version = loaded
        started = time.monotonic()
        arrays = [item.rows for item in batch if item.rows is not None]
        inputs = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            limit = self.batching.max_batch_size
            # A single request larger than the batch limit runs in chunks of at most the limit.
            chunks = []
            for i in range(0, inputs.shape[0], limit):
                chunk_started = time.monotonic()
                chunks.append(runner.run(inputs[i : i + limit]))
                rows = min(limit, inputs.shape[0] - i)
                self.outbox.put(("batch", key, rows, time.monotonic() - chunk_started))
            logits = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        except BaseException as exc:
            log.exception("inference failed", extra={"model": key, "rows": int(inputs.shape[0])})
            for item in batch:
                item.error = exc
                self._answer_error(item)
            return
        offset = 0
        timing = (started,)
        for item in batch:
            part = logits[offset : offset + item.count]
            offset += item.count
            try:
                if not np.isfinite(part).all():
                    raise InvalidModelOutput(f"model {name} version {version} produced non-finite scores")
                if item.kind == "classify":
                    doc = {
                        "model_name": name,
                        "model_version": version,
                        **protocol.encode_classification(part, runner.card, name, version, item.top_k)[0],
                    }
                    body, headers = orjson.dumps(doc), {"Content-Type": "application/json"}
                else:
                    assert item.parsed is not None
                    body, headers = protocol.encode_response(item.parsed, part, runner.card, name, version)
            except BaseException as exc:
                item.error = exc
                self._answer_error(item, timing)
                continue
            self.outbox.put(("result", item.req_id, 200, body, headers, timing, ""))
            self.slots.release()

    def _answer_error(self, item: _Prepared, timing: tuple[float] | None = None) -> None:
        exc = item.error
        assert exc is not None
        error = exc if isinstance(exc, ServerError) else ServerError(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, ServerError):
            log.error("unexpected error", exc_info=exc)
        body = orjson.dumps({"error": str(error)})
        kind, _ = to_wire(error)
        self.outbox.put(
            ("result", item.req_id, http_status(error), body, {"Content-Type": "application/json"}, timing, kind)
        )
        self.slots.release()


def worker_main(
    worker_id: int,
    inbox: MPQueue[tuple[Any, ...]],
    outbox: MPQueue[tuple[Any, ...]],
    runtime: RuntimeOptions,
    batching: BatchingOptions,
    log_format: str,
    log_level: str,
) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target)."""
    from modelops_server.logs import configure_logging  # noqa: PLC0415 - configured per process

    configure_logging(log_format, log_level, worker=worker_id)
    # The front end owns shutdown: it drains, then sends "stop". Ctrl-C and SIGTERM to the
    # process group must not kill workers while requests are still being answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = Worker(worker_id, inbox, outbox, runtime, batching)
    threading.Thread(target=worker.intake, name="intake", daemon=True).start()
    threading.Thread(target=worker.control_loop, name="control", daemon=True).start()
    log.info("worker started", extra={"worker": worker_id})
    worker.batch_loop()
    worker.pool.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped", extra={"worker": worker_id})
