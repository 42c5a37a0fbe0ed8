"""The data plane: protocol-neutral admission, routing to worker processes, hot swap and drain.

The endpoints hand it opaque request bodies (``submit``) and get back finished answers; it never
parses or decodes a payload itself, so the event loop stays free for I/O. It owns:

- **Admission.** At most ``queue_capacity`` requests are admitted; the next one is refused at once
  with :class:`Overloaded` (503 + Retry-After) instead of growing a queue without bound.
- **Routing.** Each worker has a pipe for its requests and one for its answers; a request goes to
  the ready worker with the fewest unanswered requests, so that batches form where work already
  waits. The event loop writes the requests and reads the answers itself, with no helper thread
  (``pipes``), and resolves the caller's future. A worker that dies takes its pipes with it: a
  message it was writing when it was killed cannot garble another worker's answers.
- **Lifecycle.** ``load()`` fetches and verifies a model, has every worker open and warm it up
  *beside* the serving one, then switches ``current`` in one assignment: requests admitted before
  the switch finish on the old version, later ones use the new one, none fails. The old version
  is unloaded when its last request is answered. ``unload()`` retires the served version the same
  way and leaves none (readiness false) until the next ``load()``; ``index()`` lists the served and
  the unloaded versions (the repository extension). ``ready`` drives /v2/health/ready.
- **Experiments.** With ``--experiment`` (``experiment``), ``start()`` loads every variant instead
  (each verified by its digest; their cards must agree on classes and input, else none serves),
  ``current`` is the control, and ``route()`` picks each request's variant by its key. The variants
  are fixed for the process's life: ``load()`` and ``unload()`` are refused with :class:`Conflict`.
- **Failure.** A worker that dies is restarted; the requests it held are answered 503
  (:class:`WorkerCrashed`) rather than left to time out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

import orjson

from modelops_server import errors
from modelops_server.config import Settings
from modelops_server.experiment import Assignment, Experiment, card_difference, choose, new_assignment
from modelops_server.messages import (
    BatchRan,
    FromWorker,
    Infer,
    Load,
    Loaded,
    Result,
    Stop,
    Unload,
)
from modelops_server.metrics import Metrics
from modelops_server.modelcard import ModelArtifact, fetch_model
from modelops_server.pipes import Receiver, Sender
from modelops_server.protocol import ModelMetadata, model_metadata
from modelops_server.runtime import RuntimeOptions, cpu_count
from modelops_server.worker import BatchingOptions, worker_main

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Answer:
    """A finished answer: status, body and headers, ready to send; ``reason`` names an error's class
    (``errors.to_wire``) and ``message`` is its text (the gRPC front end's status details)."""

    status: int
    body: bytes
    headers: dict[str, str]
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class ModelSource:
    """Where a served version came from: what a load without parameters loads again."""

    uri: str
    digest: str
    version: str


@dataclass(frozen=True)
class IndexEntry:
    """A model version in the repository index: ``READY`` or ``UNAVAILABLE`` with a reason."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class ServedModel:
    """A model version held by the workers, with the requests it still has in flight."""

    artifact: ModelArtifact
    metadata: ModelMetadata
    load_seconds: float
    inflight: int = 0
    retired: bool = False

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def version(self) -> str:
        return self.artifact.version


@dataclass
class _Pending:
    future: asyncio.Future[Answer]
    model: ServedModel
    enqueued_at: float


@dataclass
class _WorkerHandle:
    worker_id: int
    process: SpawnProcess
    inbox: Sender
    answers: Receiver
    ready: bool = False
    outstanding: dict[int, _Pending] = field(default_factory=dict)

    def close(self) -> None:
        """Close its pipes: drop what still waits to be written to the worker, and any partial
        answer it left when it was killed."""
        self.inbox.close()
        self.answers.close()


class DataPlane:
    """Worker processes, their queues, the served model(s); see the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        cores = cpu_count()
        per_worker = max(1, cores // settings.workers)
        self.runtime = RuntimeOptions(
            device=settings.device,
            intra_op_threads=settings.intra_op_threads or per_worker,
            workers=settings.workers,
            spinning=settings.ort_spinning,
            max_image_pixels=settings.max_image_pixels,
            reduced_decode=settings.reduced_decode,
            max_batch_size=settings.max_batch_size,
            batch_shapes=settings.batch_shapes,
        )
        self.batching = BatchingOptions(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_s,
            wait=settings.batch_wait,
            decode_threads=settings.decode_threads or per_worker,
            prefetch=max(4, 2 * settings.max_batch_size),
            max_rows_per_request=settings.max_rows_per_request,
            max_request_pixels=settings.max_request_pixels,
        )
        self.current: ServedModel | None = None
        self.experiment: Experiment | None = settings.experiment
        self.variants: dict[str, ServedModel] = {}  # variant name -> its model, while an experiment serves
        self._reloading: dict[int, set[str]] = {}  # a restarted worker -> the model keys it still loads
        self.draining = False
        self.leaving = False  # SIGTERM seen: readiness false, requests still served (--shutdown-delay-s)
        self._workers: list[_WorkerHandle] = []
        self._pending: dict[int, _WorkerHandle] = {}
        self._ids = itertools.count(1)
        self._loads: dict[tuple[int, str], asyncio.Future[Loaded]] = {}
        self._served: dict[str, ServedModel] = {}
        self.sources: dict[str, ModelSource] = {}  # model name -> the last version loaded under it
        self.unloaded: IndexEntry | None = None  # the version unload() retired, until the next load
        self._swap_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        metrics.queue_capacity.set(settings.queue_capacity)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers, then load ``settings.model_uri``."""
        self._loop = asyncio.get_running_loop()
        for worker_id in range(self.settings.workers):
            self._workers.append(self._spawn(worker_id))
        self._monitor = asyncio.create_task(self._watch_workers())
        if self.experiment is not None:
            await self._load_experiment(self.experiment)
            return
        await self.load(
            self.settings.model_uri,
            digest=self.settings.model_digest,
            version=self.settings.model_version,
            name=self.settings.model_name,
        )

    @property
    def ready(self) -> bool:
        """A model is loaded in every worker and the server is not draining."""
        return (
            self.current is not None and not self.draining and not self.leaving and any(w.ready for w in self._workers)
        )

    @property
    def depth(self) -> int:
        """Requests admitted and not yet answered."""
        return len(self._pending)

    def _spawn(self, worker_id: int) -> _WorkerHandle:
        assert self._loop is not None
        worker_end, our_end = _CTX.Pipe(duplex=False)  # requests: the worker reads, we write
        answers, answer_end = _CTX.Pipe(duplex=False)  # answers: the worker writes, we read
        process = _CTX.Process(
            target=worker_main,
            args=(
                worker_id,
                worker_end,
                answer_end,
                self.runtime,
                self.batching,
                self.settings.log_format,
                self.settings.log_level,
            ),
            name=f"modelops-worker-{worker_id}",
            daemon=True,
        )
        process.start()
        # The worker has its own copies: once it exits, a write to it fails instead of filling a
        # pipe, and its answer pipe ends.
        worker_end.close()
        answer_end.close()
        return _WorkerHandle(
            worker_id=worker_id,
            process=process,
            inbox=Sender(our_end, self._loop),
            answers=Receiver(answers, self._loop, self._on_message),
        )

    async def load(
        self, uri: str, *, digest: str | None = None, version: str | None = None, name: str | None = None
    ) -> ServedModel:
        """Fetch, verify and warm up a model in every worker, then switch to it atomically."""
        self._no_experiment("load")
        async with self._swap_lock:
            started = time.monotonic()
            model_name = name or (self.current.name if self.current else None)
            try:
                artifact = await asyncio.to_thread(
                    fetch_model,
                    uri,
                    expected_digest=digest,
                    version=version,
                    name=model_name,
                    cache_dir=self.settings.cache_dir,
                )
                await self._load_everywhere(artifact)
            except errors.ServerError:
                self.metrics.model_loads.labels(model_name or "", "failure").inc()
                raise
            served = ServedModel(
                artifact=artifact,
                metadata=model_metadata(artifact.card, artifact.name, artifact.version, artifact.digest),
                load_seconds=time.monotonic() - started,
            )
            previous, self.current = self.current, served  # the switch: one assignment
            self._served[artifact.key] = served
            self.sources[served.name] = ModelSource(uri, artifact.digest, served.version)
            self.unloaded = None
            m = self.metrics
            m.model_loads.labels(served.name, "success").inc()
            m.model_load_duration.labels(served.name, served.version).set(served.load_seconds)
            m.model_info.labels(served.name, served.version, artifact.digest, artifact.card.architecture).set(1)
            m.declare_inference_series(served.name, served.version)
            log.info(
                "model serving",
                extra={
                    "model": served.name,
                    "version": served.version,
                    "digest": artifact.digest,
                    "load_seconds": round(served.load_seconds, 3),
                },
            )
            if previous is not None and previous.artifact.key != artifact.key:
                previous.retired = True
                self._maybe_unload(previous)
            return served

    async def unload(self, name: str) -> ServedModel:
        """Stop serving `name`: later requests get :class:`Unavailable` and readiness turns false;
        admitted ones finish on it, then the workers drop it. ``load()`` serves a model again."""
        self._no_experiment("unload")
        async with self._swap_lock:
            current = self.current
            if current is None or current.name != name:
                raise errors.NotFound(f"model {name!r} is not loaded")
            self.current = None
            self.unloaded = IndexEntry(current.name, current.version, "UNAVAILABLE", "unloaded")
            current.retired = True
            self._maybe_unload(current)
            log.info("model unloaded on request", extra={"model": current.name, "version": current.version})
            return current

    def _no_experiment(self, what: str) -> None:
        if self.experiment is not None:
            raise errors.Conflict(
                f"cannot {what} a model while the A/B experiment {self.experiment.name!r} runs: its variants are "
                "fixed when the server starts; restart it with another --experiment (or none) instead"
            )

    async def _load_experiment(self, experiment: Experiment) -> None:
        """Fetch and verify every variant, check that their cards agree, warm each up in every worker,
        then serve them all at once (readiness turns true only then)."""
        async with self._swap_lock:
            control = experiment.control
            if self.settings.model_uri != control.uri:
                log.warning(
                    "--model-uri is not the experiment's control; the experiment's variants are served",
                    extra={"model_uri": self.settings.model_uri, "control_uri": control.uri},
                )
            name = self.settings.model_name
            artifacts: list[ModelArtifact] = []
            for variant in experiment.variants:
                started = time.monotonic()
                try:
                    artifact = await asyncio.to_thread(
                        fetch_model,
                        variant.uri,
                        expected_digest=variant.digest,
                        version=variant.version,
                        name=name,
                        cache_dir=self.settings.cache_dir,
                    )
                except errors.ModelLoadError as exc:
                    self.metrics.model_loads.labels(name or "", "failure").inc()
                    raise type(exc)(f"experiment variant {variant.name!r}: {exc}") from exc
                name = artifact.name
                artifacts.append(artifact)
                seconds = round(time.monotonic() - started, 3)
                log.info("experiment variant fetched", extra={"variant": variant.name, "seconds": seconds})
            for variant, artifact in zip(experiment.variants[1:], artifacts[1:], strict=True):
                difference = card_difference((control.name, artifacts[0].card), (variant.name, artifact.card))
                if difference is not None:
                    raise errors.ModelLoadError(difference)
            versions = [v.version for v in experiment.variants]
            for variant, artifact in zip(experiment.variants, artifacts, strict=True):
                started = time.monotonic()
                try:
                    await self._load_everywhere(artifact)
                except errors.ServerError as exc:
                    self.metrics.model_loads.labels(artifact.name, "failure").inc()
                    raise errors.ModelLoadError(f"experiment variant {variant.name!r}: {exc}") from exc
                metadata = model_metadata(artifact.card, artifact.name, artifact.version, artifact.digest)
                served = ServedModel(
                    artifact=artifact,
                    metadata=metadata.model_copy(update={"versions": versions}),
                    load_seconds=time.monotonic() - started + artifact.fetch_seconds,
                )
                self.variants[variant.name] = served
                self._served[artifact.key] = served
                m = self.metrics
                m.model_loads.labels(served.name, "success").inc()
                m.model_load_duration.labels(served.name, served.version).set(served.load_seconds)
                m.model_info.labels(served.name, served.version, artifact.digest, artifact.card.architecture).set(1)
                m.declare_inference_series(served.name, served.version)
            self.current = self.variants[control.name]
            self.sources[self.current.name] = ModelSource(control.uri, artifacts[0].digest, control.version)
            log.info(
                "experiment serving",
                extra={
                    "experiment": experiment.name,
                    "model": self.current.name,
                    "variants": {v.name: {"version": v.version, "weight": v.weight} for v in experiment.variants},
                },
            )

    def index(self) -> list[IndexEntry]:
        """The repository index: the served version(s), or the one last unloaded."""
        if self.variants:
            state = "READY" if self.ready else "UNAVAILABLE"
            return [IndexEntry(m.name, m.version, state) for m in self.variants.values()]
        if self.current is not None:
            return [IndexEntry(self.current.name, self.current.version, "READY" if self.ready else "UNAVAILABLE")]
        return [self.unloaded] if self.unloaded is not None else []

    async def _load_everywhere(self, artifact: ModelArtifact) -> None:
        key = artifact.key
        card_json = artifact.card.model_dump_json(by_alias=True)
        waits = []
        for w in self._workers:
            fut: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
            self._loads[(w.worker_id, key)] = fut
            w.inbox.send(Load(key, artifact.local_path, card_json, artifact.name, artifact.version))
            waits.append(fut)
        try:
            acks = await asyncio.wait_for(asyncio.gather(*waits), timeout=600)
        except TimeoutError as exc:
            raise errors.ModelLoadError(f"workers did not load {key} within 600 s") from exc
        finally:
            for w in self._workers:
                self._loads.pop((w.worker_id, key), None)
        failures = [ack.error for ack in acks if ack.error is not None]
        if failures:
            for w in self._workers:
                w.inbox.send(Unload(key))
            raise errors.from_wire(*failures[0])
        for w in self._workers:
            w.ready = True

    def _maybe_unload(self, model: ServedModel) -> None:
        if model.retired and model.inflight == 0:
            key = model.artifact.key
            if self.current is not None and self.current.artifact.key == key:
                return  # the same file was loaded again (after an unload, or a swap back) and serves
            if any(v.artifact.key == key for v in self.variants.values()):
                return  # an experiment's variant: served for the process's life
            for w in self._workers:
                w.inbox.send(Unload(key))
            self._served.pop(key, None)
            self.metrics.model_info.remove(
                model.name, model.version, model.artifact.digest, model.artifact.card.architecture
            )
            log.info("model unloaded", extra={"model": model.name, "version": model.version})

    # --- requests ----------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ServedModel:
        """The served model for a URL's name (and version), or :class:`NotFound`/:class:`Unavailable`."""
        current = self.current
        if current is None and self.unloaded is not None and name == self.unloaded.name:
            raise errors.Unavailable(
                f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load serves it again"
            )
        if current is None:
            raise errors.Unavailable("no model is loaded yet")
        if name != current.name:
            raise errors.NotFound(f"model {name!r} is not served here; this server serves {current.name!r}")
        if version is not None and self.variants:
            for model in self.variants.values():
                if model.version == version:
                    return model
            served = ", ".join(repr(m.version) for m in self.variants.values())
            raise errors.NotFound(f"version {version!r} of {name!r} is not served; the experiment serves {served}")
        if version is not None and version != current.version:
            raise errors.NotFound(
                f"version {version!r} of {name!r} is not served; the served version is {current.version!r}"
            )
        return current

    def route(self, name: str, version: str | None, key: str | None) -> tuple[ServedModel, Assignment | None]:
        """The model that answers an inference request for `name` (and `version`) carrying `key`, and,
        while an experiment runs, its assignment: the variant of `key`, or of the `version` asked for."""
        model = self.resolve(name, version)
        experiment = self.experiment
        if experiment is None or not self.variants:
            return model, None
        if version is not None:  # a version asked for by name is served by that variant, not assigned
            variant = next(v for v in experiment.variants if v.version == model.version)
            return model, new_assignment(variant, bool(key))
        assignment = choose(experiment, key)
        return self.variants[assignment.variant.name], assignment

    def answered(self, assignment: Assignment | None) -> None:
        """Count an answered request of an experiment (``modelops_experiment_requests_total``)."""
        if assignment is not None and self.experiment is not None:
            keyed = "true" if assignment.keyed else "false"
            self.metrics.experiment_requests.labels(self.experiment.name, assignment.variant.name, keyed).inc()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether `name` (and `version`) can be served now: False for a model that is unloaded or
        still loading; :class:`NotFound` for a name or version this server does not serve."""
        if self.current is None and name in self.sources:
            return False
        self.resolve(name, version)
        return self.ready

    def admit(self) -> None:
        """Raise at once when a new request cannot be admitted (before its body is even read)."""
        if self.draining:
            raise errors.Unavailable("the server is shutting down; retry on another replica")
        if len(self._pending) >= self.settings.queue_capacity:
            raise errors.Overloaded(f"the queue is full ({self.settings.queue_capacity} requests); retry later")

    async def submit(self, model: ServedModel, kind: str, payload: bytes, meta: dict[str, Any]) -> Answer:
        """Queue a request for a worker and wait for its answer (bounded by ``request_timeout_s``)."""
        self.admit()
        candidates = [w for w in self._workers if w.ready]
        if not candidates:
            raise errors.Unavailable("no worker is ready")
        worker = min(candidates, key=lambda w: len(w.outstanding))
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        pending = _Pending(future=loop.create_future(), model=model, enqueued_at=time.monotonic())
        worker.outstanding[req_id] = pending
        self._pending[req_id] = worker
        model.inflight += 1
        self.metrics.queue_depth.set(len(self._pending))
        worker.inbox.send(Infer(req_id, model.artifact.key, kind, payload, meta, pending.enqueued_at))
        # One timer, not wait_for(shield(...)): the answer's future is left to `_finish` either way
        # (it sets a result only on a future still waiting).
        timeout = self.settings.request_timeout_s
        timer = loop.call_later(timeout, _expire, pending.future, timeout)
        try:
            return await pending.future
        finally:
            timer.cancel()

    def _on_message(self, msg: FromWorker) -> None:
        if isinstance(msg, Loaded):
            fut = self._loads.get((msg.worker_id, msg.model_key))
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif fut is None and msg.error is None:
                # A restarted worker finished loading a served model: once it holds all of them (the
                # current one, or every variant of an experiment) it can take requests again.
                waiting = self._reloading.get(msg.worker_id, set())
                waiting.discard(msg.model_key)
                if not waiting:
                    self._reloading.pop(msg.worker_id, None)
                    for w in self._workers:
                        if w.worker_id == msg.worker_id:
                            w.ready = True
            log.debug("worker loaded model", extra={"worker": msg.worker_id, "model_key": msg.model_key, **msg.facts})
            return
        if isinstance(msg, BatchRan):
            served = self._served.get(msg.model_key)
            if served is not None:
                self.metrics.inference_duration.labels(served.name, served.version).observe(msg.seconds)
                self.metrics.batch_size.labels(served.name, served.version).observe(msg.rows)
            return
        if not isinstance(msg, Result):
            return
        worker = self._pending.pop(msg.req_id, None)
        if worker is None:
            return
        pending = worker.outstanding.pop(msg.req_id)
        answer = Answer(msg.status, msg.body, msg.headers, msg.error_kind, msg.error_message)
        self._finish(pending, answer, msg.batch_started_at)

    def _finish(self, pending: _Pending, answer: Answer, batch_started_at: float | None) -> None:
        model = pending.model
        model.inflight -= 1
        m = self.metrics
        m.queue_depth.set(len(self._pending))
        if batch_started_at is not None:
            m.queue_wait.labels(model.name, model.version).observe(max(0.0, batch_started_at - pending.enqueued_at))
        if not pending.future.done():
            pending.future.set_result(answer)
        self._maybe_unload(model)

    async def _watch_workers(self) -> None:
        """Restart workers that died; answer the requests they held with 503."""
        while not self._stopping:
            await asyncio.sleep(0.2)
            for index, w in enumerate(self._workers):
                if w.process.is_alive() or self._stopping:
                    continue
                log.error("worker died; restarting it", extra={"worker": w.worker_id, "exitcode": w.process.exitcode})
                self.metrics.worker_restarts.inc()
                for req_id, pending in list(w.outstanding.items()):
                    self._pending.pop(req_id, None)
                    error = errors.WorkerCrashed(f"worker {w.worker_id} died while holding this request; retry it")
                    self._finish(pending, _error_answer(error), None)
                w.outstanding.clear()
                w.close()
                replacement = self._spawn(w.worker_id)
                self._workers[index] = replacement
                serving = list(self.variants.values()) or ([self.current] if self.current is not None else [])
                self._reloading[w.worker_id] = {m.artifact.key for m in serving}
                for model in serving:
                    a = model.artifact
                    card_json = a.card.model_dump_json(by_alias=True)
                    replacement.inbox.send(Load(a.key, a.local_path, card_json, a.name, a.version))

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for admitted ones; True when all were answered in time."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._pending

    async def stop(self) -> None:
        """Stop the workers and the reading of their answers (after :meth:`drain`)."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        for w in self._workers:
            w.inbox.send(Stop())
        for w in self._workers:
            await asyncio.to_thread(w.process.join, 10)
            if w.process.is_alive():
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
            w.close()

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (for tests and logs)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]


def _expire(future: asyncio.Future[Answer], seconds: float) -> None:
    if not future.done():
        future.set_exception(errors.InferenceTimeout(f"no answer within {seconds} s"))


def _error_answer(error: errors.ServerError) -> Answer:
    return Answer(
        errors.http_status(error),
        orjson.dumps({"error": str(error)}),
        {"Content-Type": "application/json"},
        type(error).__name__,
        str(error),
    )
