"""A worker process: parse, decode and preprocess requests, batch them dynamically, run the model.

The front end sends each worker its own pipe of messages and reads its answers from another (see
``dataplane`` and ``pipes``). Inside a worker, three kinds of threads form a pipeline so that the
cores never wait on each other:

    intake thread ──► decode pool (N threads) ──► ready queue ──► batcher (this process's main thread)
    (bounded by a          parse the protocol,        in order of        groups rows of one model up to
     prefetch semaphore)   decode + preprocess        completion         max_batch_size or max_batch_delay,
                                                                         runs ONNX Runtime, answers

Pillow, numpy and ONNX Runtime all release the GIL, so decoding the next requests overlaps with
inference on the current batch. A control thread loads and unloads models beside the serving ones
(hot swap) and acknowledges each load only after warm-up.

How long the batcher waits for a batch to fill is ``BatchingOptions.wait``. ``window`` waits until
``max_batch_delay`` after the first request was queued, whatever else is coming. ``adaptive`` (the
default) waits only for requests that are already in this worker (being parsed and decoded) and
only within that window; when nothing else is, the batch runs at once. A lone client therefore
pays no batching delay, while under concurrency batches still form from the requests that arrive
while the previous batch runs.

Messages in and out are the typed tuples of ``messages``: ``Infer``, ``Load``, ``Unload``, ``Stop``
in; ``Result`` (one per request), ``BatchRan`` (one per ONNX Runtime run), ``Loaded`` out (a
batch's answers and runs in one write). An ``Infer`` payload is an OIP REST body (``v2``), an
image (``classify``) or a serialized gRPC ``ModelInferRequest`` (``grpc``); its answer is encoded
in the same form.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from modelops_server import grpc_protocol, kserve_v1, protocol
from modelops_server.errors import InvalidModelOutput, ServerError, Unavailable, http_status, to_wire
from modelops_server.messages import BatchRan, FromWorker, Infer, Load, Loaded, Result, Stop, ToWorker, Unload
from modelops_server.modelcard import ModelCard
from modelops_server.pipes import Inbox, Outbox
from modelops_server.runtime import ModelRunner, RuntimeOptions

log = logging.getLogger(__name__)


class _Source(Protocol):
    def get(self) -> ToWorker: ...


class _Sink(Protocol):
    def put(self, msg: FromWorker) -> None: ...

    def put_all(self, msgs: list[FromWorker]) -> None: ...


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching and pipeline sizes for one worker."""

    max_batch_size: int = 16
    max_batch_delay_s: float = 0.005
    wait: Literal["adaptive", "window"] = "adaptive"  # see the module docstring
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
        inbox: _Source,
        outbox: _Sink,
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
        self.control: queue.Queue[Load | Unload | None] = queue.Queue()
        self.slots = threading.Semaphore(batching.prefetch)
        self._decoding = 0  # Infer messages taken from the inbox and not yet in ``ready``
        self._decoding_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(batching.decode_threads, thread_name_prefix=f"decode-{worker_id}")
        self.stopping = threading.Event()

    # --- intake and control -------------------------------------------------------------------

    def intake(self) -> None:
        """Move messages from the front end's queue into the decode pool, at most ``prefetch`` at a time."""
        while True:
            self.slots.acquire()
            try:
                msg = self.inbox.get()
            except (EOFError, OSError):  # the front end is gone: nobody is left to answer
                msg = Stop()
            if isinstance(msg, Infer):
                with self._decoding_lock:
                    self._decoding += 1
                self.pool.submit(self._prepare, msg)
                continue
            self.slots.release()
            if isinstance(msg, Stop):
                self.control.put(None)
                self.ready.put(None)
                return
            self.control.put(msg)

    def control_loop(self) -> None:
        """Load and unload models, beside the ones serving, and acknowledge each load."""
        while (msg := self.control.get()) is not None:
            if isinstance(msg, Load):
                key = msg.model_key
                started = time.monotonic()
                try:
                    runner = ModelRunner(msg.local_path, ModelCard.model_validate_json(msg.card_json), self.runtime)
                    runner.warm_up()
                    self.models[key] = (runner, msg.name, msg.version)
                    self.outbox.put(Loaded(self.worker_id, key, None, time.monotonic() - started, runner.describe()))
                except BaseException as exc:
                    self.outbox.put(Loaded(self.worker_id, key, to_wire(exc), time.monotonic() - started, {}))
            else:
                self.models.pop(msg.model_key, None)

    # --- decode pool ----------------------------------------------------------------------------

    def _prepare(self, msg: Infer) -> None:
        key, kind, payload, meta = msg.model_key, msg.kind, msg.payload, msg.meta
        item = _Prepared(req_id=msg.req_id, model_key=key, kind=kind, enqueued_at=msg.enqueued_at)
        try:
            loaded = self.models.get(key)
            if loaded is None:
                raise Unavailable(f"model {key} is not loaded in worker {self.worker_id}")
            runner = loaded[0]
            pre = runner.preprocessor
            item.top_k = int(meta.get("top_k", 5))  # the answer's labels, where it gives labels
            if kind in ("classify", "torchserve"):
                item.extra = {k: meta[k] for k in ("variant", "request_id") if k in meta}  # an experiment's
                item.rows = pre.image_row(payload)[None]
            elif kind == "v1":
                v1 = kserve_v1.parse_request(payload, runner.card, max_rows=self.batching.max_rows_per_request)
                pre.check_request_pixels(v1.images, self.batching.max_request_pixels)
                item.rows = np.stack([pre.image_row(x) if isinstance(x, bytes) else x for x in v1.instances])
            else:
                if kind == "grpc":
                    parsed = grpc_protocol.parse_request(
                        payload, runner.card, max_rows=self.batching.max_rows_per_request
                    )
                else:
                    parsed = protocol.parse_request(
                        payload,
                        meta.get("header_length"),
                        runner.card,
                        max_rows=self.batching.max_rows_per_request,
                        content_type=meta.get("content_type", ""),
                    )
                protocol.check_model_name(parsed, loaded[1])
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
        with self._decoding_lock:  # after the put: "none decoding and ready empty" means none coming
            self._decoding -= 1

    # --- batcher ---------------------------------------------------------------------------------

    def batch_loop(self) -> None:
        """Group ready requests into batches of one model and run them until told to stop."""
        carry: _Prepared | None = None
        while True:
            first = carry if carry is not None else self.ready.get()
            carry = None
            if first is None:
                return
            if first.error is not None:
                self._answer_error(first)
                continue
            batch, carry = self._fill(first)
            self._run(batch)

    def _fill(self, first: _Prepared) -> tuple[list[_Prepared], _Prepared | None]:
        """The batch that starts with ``first``, and a request that belongs to the next one (another
        model, or too many rows), if one was taken. Errors met on the way are answered at once."""
        limit = self.batching.max_batch_size
        adaptive = self.batching.wait == "adaptive"
        batch = [first]
        rows = first.count
        deadline = first.enqueued_at + self.batching.max_batch_delay_s
        while rows < limit:
            try:
                nxt = self.ready.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (adaptive and not self._decoding):
                    break  # the window is over, or (adaptive) nothing else is on its way
                try:
                    nxt = self.ready.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is None:
                self.ready.put(None)  # finish this batch, then stop
                break
            if nxt.error is not None:
                self._answer_error(nxt)
                continue
            if nxt.model_key != first.model_key or rows + nxt.count > limit:
                return batch, nxt
            batch.append(nxt)
            rows += nxt.count
        return batch, None

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
        answers: list[FromWorker] = []  # sent together once the batch is encoded
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
                answers.append(BatchRan(key, rows, time.monotonic() - chunk_started))
            logits = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        except BaseException as exc:
            log.exception("inference failed", extra={"model": key, "rows": int(inputs.shape[0])})
            self.outbox.put_all(answers)
            for item in batch:
                item.error = exc
                self._answer_error(item)
            return
        offset = 0
        for item in batch:
            part = logits[offset : offset + item.count]
            offset += item.count
            try:
                if not np.isfinite(part).all():
                    raise InvalidModelOutput(f"model {name} version {version} produced non-finite scores")
                body, headers = _encode(item, part, runner, name, version)
            except BaseException as exc:
                item.error = exc
                self._answer_error(item, started)
                continue
            answers.append(Result(item.req_id, 200, body, headers, started))
            self.slots.release()
        self.outbox.put_all(answers)

    def _answer_error(self, item: _Prepared, batch_started_at: float | None = None) -> None:
        exc = item.error
        assert exc is not None
        error = exc if isinstance(exc, ServerError) else ServerError(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, ServerError):
            log.error("unexpected error", exc_info=exc)
        body = orjson.dumps({"error": str(error)})
        kind, message = to_wire(error)
        headers = {"Content-Type": "application/json"}
        self.outbox.put(Result(item.req_id, http_status(error), body, headers, batch_started_at, kind, message))
        self.slots.release()


def _encode(
    item: _Prepared, part: npt.NDArray[np.float32], runner: ModelRunner, name: str, version: str
) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers for one request's rows of logits, in its protocol's form."""
    json_type = {"Content-Type": "application/json"}
    if item.kind == "classify":
        doc = {
            "model_name": name,
            "model_version": version,
            **item.extra,
            **protocol.encode_classification(part, runner.card, name, version, item.top_k)[0],
        }
        return orjson.dumps(doc), json_type
    if item.kind == "torchserve":
        return protocol.encode_label_scores(part, runner.card, item.top_k), json_type
    if item.kind == "v1":
        return kserve_v1.encode_response(part, runner.card, name, version, item.top_k), json_type
    assert item.parsed is not None
    if item.kind == "grpc":
        return grpc_protocol.encode_response(item.parsed, part, runner.card, name, version), {}
    return protocol.encode_response(item.parsed, part, runner.card, name, version)


def worker_main(
    worker_id: int,
    inbox: Connection,
    outbox: Connection,
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
    worker = Worker(worker_id, Inbox(inbox), Outbox(outbox), runtime, batching)
    threading.Thread(target=worker.intake, name="intake", daemon=True).start()
    threading.Thread(target=worker.control_loop, name="control", daemon=True).start()
    log.info("worker started", extra={"worker": worker_id})
    worker.batch_loop()
    worker.pool.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped", extra={"worker": worker_id})
