"""Asynchronous jobs: a batch of images in, a job id out; results in Redis, consumed from a stream.

For large or slow work a caller should not hold a connection open. ``POST /v1/jobs`` stores the
images in Redis, appends the job id to a Redis stream and answers 202 with the id; job consumer
processes (``--job-workers``) read the stream through a consumer group, classify the images in
batches, write each image's result to Redis as soon as it exists, acknowledge the stream entry when
the job is complete and then POST the job to its ``callbackUrl``, if one was given. Callers poll
``GET /v1/jobs/{id}`` or wait for the callback.

Callbacks are what a client makes the server do to a third party, so they are bounded: only hosts
in ``--job-callback-hosts`` (none by default), no redirects, sent from a small pool beside the
consumer (an unreachable callback never holds up the next job) with at most ``MAX_CALLBACKS``
waiting; beyond that a callback is dropped and the job says so (``callback: dropped``). The stream
does not grow: an entry is deleted once acknowledged, and a submission finds it full at
``--job-queue-capacity`` entries (503).

Why it survives a crash: a stream entry stays *pending* until it is acknowledged. A consumer that
restarts under the same name (one name per slot) first re-reads its own pending entries; entries
of a consumer that never comes back (another pod) are taken over with ``XAUTOCLAIM`` after
``--job-claim-idle-s``. Results already written are kept and those images are not recomputed.

Redis keys (all expire after ``--job-ttl-s``): ``modelops:job:{id}`` (hash: status, total, top_k,
callback, model, version, runs, error), ``modelops:job:{id}:images`` (hash: index → bytes),
``modelops:job:{id}:results`` (hash: index → JSON).

A batch job (``batch.py``: a folder or Dataset version in, JSONL out) has ``kind: batch`` and its
source and output in the job's hash, and ``modelops:job:{id}:items`` (hash: index → JSON of one
file, or of one Dataset shard covering a range of indices) instead of images; its results are the
JSONL lines, written out by the consumer that completes it.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout, web

from modelops_server import batch, endpoints, errors, protocol
from modelops_server.config import Settings
from modelops_server.dataplane import DataPlane
from modelops_server.metrics import Metrics
from modelops_server.modelcard import ModelCard
from modelops_server.runtime import ModelRunner, RuntimeOptions

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")
GROUP = "modelops-consumers"
MAX_JOB_IMAGES = 10_000
MAX_RUNS = 5
#: Callbacks waiting to be sent by one consumer; more are dropped (and the job says so).
MAX_CALLBACKS = 64
CALLBACK_ATTEMPTS, CALLBACK_TIMEOUT_S = 3, 10.0


def check_callback(url: object, hosts: frozenset[str]) -> str | None:
    """`url` when it is an http(s) URL to one of `hosts`; RequestError otherwise (None: no callback)."""
    if url is None:
        return None
    if not isinstance(url, str):
        raise errors.RequestError("callbackUrl must be a string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.RequestError("callbackUrl must be an http(s) URL")
    host = parts.hostname.lower()
    where = f"{host}:{parts.port}" if parts.port else host
    if host not in hosts and where not in hosts:
        allowed = ", ".join(sorted(hosts)) or "none: this server sends no callbacks"
        raise errors.RequestError(f"callbackUrl host {where!r} is not allowed (--job-callback-hosts: {allowed})")
    return url


def job_key(job_id: str) -> str:
    """The job's hash."""
    return f"modelops:job:{job_id}"


@dataclass(frozen=True)
class ConsumerConfig:
    """What a job consumer process needs (picklable)."""

    redis_url: str
    stream: str
    name: str
    claim_idle_ms: int
    ttl_s: int
    batch_size: int
    model: tuple[str, str, str, str, str]  # key, local path, card JSON, name, version
    runtime: RuntimeOptions
    log_format: str
    log_level: str
    max_image_bytes: int = 32 << 20


class JobService:
    """The /v1/jobs endpoints and the supervisor of the job consumer processes."""

    def __init__(self, settings: Settings, plane: DataPlane, metrics: Metrics) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.plane = plane
        self.metrics = metrics
        # redis-py types replies as unions of bytes and str (decode_responses); we read bytes, so: Any.
        self.redis: Any = aioredis.Redis.from_url(settings.redis_url)
        self.batch_roots = batch.parse_roots(settings.batch_roots)
        self.consumers: dict[int, tuple[SpawnProcess, str]] = {}  # slot -> (process, model key)
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    def attach(self, app: web.Application) -> None:
        """Register the routes and start/stop the consumers with the application."""
        app[JOB_SERVICE] = self
        app.router.add_post("/v1/jobs", self.submit, name="jobs_submit", expect_handler=endpoints.expect_continue)
        app.router.add_get("/v1/jobs/{job_id}", self.get, name="jobs_get")
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_startup(self, app: web.Application) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: the group exists already
            await self.redis.xgroup_create(self.settings.job_stream, GROUP, id="0", mkstream=True)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _on_cleanup(self, app: web.Application) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for process, _ in self.consumers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process, _ in self.consumers.values():
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        await self.redis.aclose()

    def _config(self, slot: int) -> ConsumerConfig:
        current = self.plane.current
        assert current is not None
        a = current.artifact
        return ConsumerConfig(
            redis_url=self.settings.redis_url or "",
            stream=self.settings.job_stream,
            name=f"{socket.gethostname()}-{slot}",
            claim_idle_ms=int(self.settings.job_claim_idle_s * 1000),
            ttl_s=self.settings.job_ttl_s,
            batch_size=self.settings.max_batch_size,
            model=(a.key, a.local_path, a.card.model_dump_json(by_alias=True), a.name, a.version),
            runtime=RuntimeOptions(
                device=self.plane.runtime.device,
                intra_op_threads=1,
                workers=1,
                max_image_pixels=self.settings.max_image_pixels,
                reduced_decode=self.settings.reduced_decode,
                max_batch_size=self.settings.max_batch_size,
                batch_shapes=self.settings.batch_shapes,
            ),
            log_format=self.settings.log_format,
            log_level=self.settings.log_level,
            max_image_bytes=self.settings.max_body_bytes,
        )

    async def _supervise(self) -> None:
        """Keep one consumer per slot alive, on the current model; restart the dead, renew the stale."""
        while not self._stopping:
            current = self.plane.current
            if current is not None:
                for slot in range(self.settings.job_workers):
                    entry = self.consumers.get(slot)
                    if entry is not None and entry[0].is_alive():
                        if entry[1] != current.artifact.key and entry[0].pid is not None:
                            os.kill(entry[0].pid, signal.SIGTERM)  # finishes its job, then exits
                        continue
                    if entry is not None:
                        log.warning("job consumer exited; starting it again", extra={"slot": slot})
                    config = self._config(slot)
                    process = _CTX.Process(
                        target=consumer_main, args=(config,), name=f"modelops-jobs-{slot}", daemon=True
                    )
                    process.start()
                    self.consumers[slot] = (process, config.model[0])
                    log.info("job consumer started", extra={"slot": slot, "pid": process.pid, "consumer": config.name})
            await asyncio.sleep(0.2)

    # --- endpoints ---------------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /v1/jobs``: JSON ``{"images": [base64...], "topK": 5, "callbackUrl": ...}`` or multipart files,
        or a batch job: JSON ``{"source": "<URI>", "output": "<folder URI>", "split": ..., "topK": ...}``."""
        current = self.plane.current
        if current is None or self.plane.draining:
            raise errors.Unavailable("the server is not ready")
        images, raw_top_k, raw_callback, batch_doc = await self._read_job(request)
        if batch_doc is None and not images:
            raise errors.RequestError("a job needs at least one image")
        if len(images) > MAX_JOB_IMAGES:
            raise errors.RequestError(f"a job takes at most {MAX_JOB_IMAGES} images")
        if isinstance(raw_top_k, bool) or not isinstance(raw_top_k, (int, str)) or not str(raw_top_k).isdigit():
            raise errors.RequestError("topK must be an integer between 1 and 100")
        top_k = int(raw_top_k)
        if not 1 <= top_k <= 100:
            raise errors.RequestError("topK must be between 1 and 100")
        callback = check_callback(raw_callback, self.settings.callback_hosts)
        if await self.redis.xlen(self.settings.job_stream) >= self.settings.job_queue_capacity:
            raise errors.Overloaded(f"{self.settings.job_queue_capacity} jobs are waiting already; retry later")
        job_id = uuid.uuid4().hex
        key = job_key(job_id)
        ttl = self.settings.job_ttl_s
        doc: dict[str, str | int | float] = {
            "status": "queued",
            "total": len(images),
            "top_k": top_k,
            "created": time.time(),
            "runs": 0,
        }
        if callback:
            doc["callback"] = callback
        answer: dict[str, Any] = {}
        if batch_doc is not None:
            fields, items = await self._plan_batch(batch_doc, job_id)
            doc.update(fields)
            answer = {"source": doc["source"], "output": doc["output"]}
            data_key, data = f"{key}:items", items
        else:
            data_key, data = f"{key}:images", images
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(data_key, mapping={str(i): item for i, item in enumerate(data)})
            pipe.hset(key, mapping=doc)
            pipe.expire(key, ttl)
            pipe.expire(data_key, ttl)
            pipe.xadd(self.settings.job_stream, {"job": job_id})
            await pipe.execute()
        self.metrics.jobs.labels("submitted").inc()
        return web.json_response(
            {"id": job_id, "status": "queued", "total": doc["total"], "url": f"/v1/jobs/{job_id}", **answer},
            status=202,
        )

    async def _plan_batch(self, body: dict[str, Any], job_id: str) -> tuple[dict[str, str | int], list[bytes]]:
        """Check a batch job's source and output against --batch-roots and list its images."""
        unknown = sorted(set(body) - batch.BATCH_FIELDS)
        if unknown:
            raise errors.RequestError(
                f"a batch job takes the fields {', '.join(sorted(batch.BATCH_FIELDS))}; unknown: {', '.join(unknown)}"
            )
        source = batch.confine(batch.parse_location(body["source"], "source"), self.batch_roots, "source")
        raw_output = body.get("output")
        output = batch.default_output(source) if raw_output is None else batch.parse_location(raw_output, "output")
        output = batch.confine(output, self.batch_roots, "output")
        split = body.get("split")
        if split is not None and not isinstance(split, str):
            raise errors.RequestError("split must be a string: train, val or test")
        planned = await asyncio.to_thread(batch.plan, source, split, self.settings.batch_max_images)
        doc: dict[str, str | int] = {
            "kind": "batch",
            "source_kind": planned.kind,
            "source": source.uri,
            "output_folder": output.uri,
            "output": output.child(f"{job_id}.jsonl").uri,
            "total": planned.total,
        }
        if source.scheme == "file":
            doc["confine"] = os.path.realpath(source.path)
        return doc, planned.items

    async def _read_job(self, request: web.Request) -> tuple[list[bytes], object, object, dict[str, Any] | None]:
        """(images, topK, callbackUrl, batch job body or None) as sent; the body read within the server's bounds."""
        if request.content_type.startswith("multipart/form-data"):
            images = [data for _, data in await endpoints.multipart_files(request)]
            return images, request.query.get("top_k", "5"), request.query.get("callback_url"), None
        if request.content_type != "application/json":
            raise errors.UnsupportedMediaType(
                "send application/json or multipart/form-data with the images as file uploads"
            )
        body = await endpoints.read_body(request)
        try:
            doc = orjson.loads(body)
            if isinstance(doc, dict) and "source" in doc:
                if "images" in doc:
                    raise errors.RequestError("send either images or a batch source, not both")
                return [], doc.get("topK", 5), doc.get("callbackUrl"), doc
            images = [protocol.decode_base64(s) for s in doc["images"]]
            return images, doc.get("topK", 5), doc.get("callbackUrl"), None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise errors.RequestError(
                f'send {{"images": ["<base64>", ...], "topK": 5, "callbackUrl": "..."}} '
                f'or {{"source": "<URI>", "output": "<folder URI>", ...}}: {exc}'
            ) from exc

    async def get(self, request: web.Request) -> web.Response:
        """``GET /v1/jobs/{id}``: status, progress and, with ``?results=true`` (default), the results."""
        job_id = request.match_info["job_id"]
        asked = request.query.get("results")
        doc = await job_document(self.redis, job_id, with_results=None if asked is None else asked != "false")
        if doc is None:
            raise errors.NotFound(f"no job {job_id!r} (unknown or expired)")
        return web.json_response(doc)


async def job_document(client: Any, job_id: str, *, with_results: bool | None = None) -> dict[str, Any] | None:
    """The job as the API shows it, or None when it does not exist.

    ``with_results`` None: the results for an image job, not for a batch job (they are in its output).
    """
    key = job_key(job_id)
    raw = await client.hgetall(key)
    if not raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    doc: dict[str, Any] = {
        "id": job_id,
        "status": fields.get("status", "queued"),
        "total": int(fields.get("total", 0)),
        "done": int(await client.hlen(f"{key}:results")),
        "model_name": fields.get("model"),
        "model_version": fields.get("version"),
        "runs": int(fields.get("runs", 0)),
    }
    if "error" in fields:
        doc["error"] = fields["error"]
    if fields.get("kind") == "batch":
        doc.update(kind="batch", source=fields.get("source"), output=fields.get("output"))
        if with_results is None:
            with_results = False
    if with_results is not False:
        results = await client.hgetall(f"{key}:results")
        doc["results"] = [
            {"index": int(i), **orjson.loads(v)} for i, v in sorted(results.items(), key=lambda kv: int(kv[0]))
        ]
    return doc


# --- the consumer process --------------------------------------------------------------------------


class _Consumer:
    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.redis: Any = redis.Redis.from_url(config.redis_url)
        _, path, card_json, self.model_name, self.model_version = config.model
        self.runner = ModelRunner(path, ModelCard.model_validate_json(card_json), config.runtime)
        self.runner.warm_up()
        self.stop = False
        self.callbacks = ThreadPoolExecutor(2, thread_name_prefix="callback")
        self.readers = ThreadPoolExecutor(8, thread_name_prefix="batch-read")
        self.callback_slots = threading.BoundedSemaphore(MAX_CALLBACKS)

    def run(self) -> None:
        c = self.config
        own_pending = True  # first re-read what this consumer name held when it died
        while not self.stop:
            if own_pending:
                reply = self.redis.xreadgroup(GROUP, c.name, {c.stream: "0"}, count=10)
                entries = reply[0][1] if reply else []
                own_pending = bool(entries)
            else:
                _, claimed, _ = self.redis.xautoclaim(c.stream, GROUP, c.name, c.claim_idle_ms, "0-0", count=1)
                entries = claimed
                if not entries:
                    reply = self.redis.xreadgroup(GROUP, c.name, {c.stream: ">"}, count=1, block=500)
                    entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                if fields:  # an entry trimmed from the stream has no fields: just acknowledge it
                    self.process(fields[b"job"].decode())
                self.redis.xack(c.stream, GROUP, entry_id)
                self.redis.xdel(c.stream, entry_id)  # done: the stream holds only work to do

    def process(self, job_id: str) -> None:
        key = job_key(job_id)
        meta = self.redis.hgetall(key)
        if not meta:
            return  # expired
        total = int(meta[b"total"])
        top_k = int(meta.get(b"top_k", b"5"))
        self.redis.hset(key, mapping={"status": "running", "model": self.model_name, "version": self.model_version})
        if self.redis.hincrby(key, "runs", 1) > MAX_RUNS:
            # Every consumer that took this job died on it: stop retrying a job that kills workers.
            self.redis.hset(key, mapping={"status": "failed", "error": f"given up after {MAX_RUNS} attempts"})
            return
        done = {int(i) for i in self.redis.hkeys(f"{key}:results")}
        todo = [i for i in range(total) if i not in done]
        if meta.get(b"kind") == b"batch":
            status = self._run_batch(job_id, key, meta, todo, top_k)
        else:
            for start in range(0, len(todo), self.config.batch_size):
                self._run_chunk(key, todo[start : start + self.config.batch_size], top_k)
            status = "completed"
        self.redis.hset(key, "status", status)
        self.redis.expire(f"{key}:results", self.config.ttl_s)
        self.redis.delete(f"{key}:images", f"{key}:items")
        callback = meta.get(b"callback")
        if callback:
            if self.callback_slots.acquire(blocking=False):
                self.callbacks.submit(self._callback, job_id, callback.decode())
            else:
                log.warning("callback dropped: too many waiting", extra={"job": job_id})
                self.redis.hset(key, "callback", "dropped")

    def _run_chunk(self, key: str, indices: list[int], top_k: int) -> None:
        images = self.redis.hmget(f"{key}:images", [str(i) for i in indices])
        results: dict[str, bytes] = {}
        rows, ok = [], []
        for index, data in zip(indices, images, strict=True):
            try:
                if data is None:
                    raise errors.RequestError("the image is missing (the job expired?)")
                rows.append(self.runner.preprocessor.image_row(data))
                ok.append(index)
            except errors.ServerError as exc:
                results[str(index)] = orjson.dumps({"error": str(exc), "reason": exc.reason})
        if rows:
            logits = self.runner.run(np.stack(rows))
            for index, doc in zip(
                ok, protocol.encode_classification(logits, self.runner.card, "", "", top_k), strict=True
            ):
                results[str(index)] = orjson.dumps(doc)
        self.redis.hset(f"{key}:results", mapping=results)

    def _run_batch(self, job_id: str, key: str, meta: dict[bytes, bytes], todo: list[int], top_k: int) -> str:
        """Classify the batch job's images not done yet, then write its JSONL; the job's final status."""
        size = self.config.batch_size
        confined_to = meta[b"confine"].decode() if b"confine" in meta else None
        try:
            if meta.get(b"source_kind") == b"dataset":
                wanted = set(todo)
                shards = [orjson.loads(v) for v in self.redis.hvals(f"{key}:items")]
                for shard in sorted(shards, key=lambda s: int(s["first"])):
                    mine = {i for i in range(shard["first"], shard["first"] + shard["count"]) if i in wanted}
                    if not mine:
                        continue  # done before a takeover: not read again
                    chunk: list[batch.Sample] = []
                    for sample in batch.iter_shard(shard, mine, self.config.max_image_bytes):
                        chunk.append(sample)
                        if len(chunk) >= size:
                            self._classify_samples(key, chunk, top_k)
                            chunk = []
                    if chunk:
                        self._classify_samples(key, chunk, top_k)
            else:
                for start in range(0, len(todo), size):
                    indices = todo[start : start + size]
                    raw = self.redis.hmget(f"{key}:items", [str(i) for i in indices])
                    samples = list(
                        self.readers.map(
                            lambda pair: self._folder_sample(pair[0], pair[1], confined_to),
                            zip(indices, raw, strict=True),
                        )
                    )
                    self._classify_samples(key, samples, top_k)
            total = int(meta[b"total"])
            batch.write_output(meta[b"output_folder"].decode(), job_id, self._lines(key, total))
        except (OSError, ValueError, errors.ServerError) as exc:  # storage failed: the job says why
            log.warning("batch job failed", extra={"job": job_id, "error": str(exc)})
            self.redis.hset(key, "error", f"batch output or source failed: {type(exc).__name__}: {exc}")
            return "failed"
        return "completed"

    def _folder_sample(self, index: int, raw: bytes | None, confined_to: str | None) -> batch.Sample:
        if raw is None:
            return batch.Sample(index, {}, error=errors.RequestError("the item is missing (the job expired?)"))
        return batch.read_folder_image(orjson.loads(raw), index, confined_to, self.config.max_image_bytes)

    def _classify_samples(self, key: str, samples: list[batch.Sample], top_k: int) -> None:
        """One batch through the model; each sample's JSON line into the results hash."""
        results: dict[str, bytes] = {}
        rows, ok = [], []
        for sample in samples:
            try:
                if sample.error is not None:
                    raise sample.error
                rows.append(self.runner.preprocessor.image_row(sample.data or b""))
                ok.append(sample)
            except errors.ServerError as exc:
                results[str(sample.index)] = orjson.dumps({**sample.fields, "error": str(exc), "reason": exc.reason})
        if rows:
            logits = self.runner.run(np.stack(rows))
            encoded = protocol.encode_classification(logits, self.runner.card, "", "", top_k)
            for sample, doc in zip(ok, encoded, strict=True):
                results[str(sample.index)] = orjson.dumps({**sample.fields, **doc})
        if results:
            self.redis.hset(f"{key}:results", mapping=results)

    def _lines(self, key: str, total: int) -> Iterator[bytes]:
        """The JSON lines of a batch job in index order, read from the results hash in slices."""
        for start in range(0, total, 1000):
            indices = range(start, min(start + 1000, total))
            for index, line in zip(indices, self.redis.hmget(f"{key}:results", [str(i) for i in indices]), strict=True):
                yield line if line is not None else orjson.dumps({"index": index, "error": "no result was recorded"})

    def _callback(self, job_id: str, url: str) -> None:
        """POST the job to `url` (in the callback pool): a few attempts, no redirects."""

        async def post() -> None:
            client: Any = aioredis.Redis.from_url(self.config.redis_url)
            try:
                doc = await job_document(client, job_id)
            finally:
                await client.aclose()
            async with ClientSession(timeout=ClientTimeout(total=CALLBACK_TIMEOUT_S)) as session:
                for attempt in range(CALLBACK_ATTEMPTS):
                    try:
                        async with session.post(url, json=doc, allow_redirects=False) as r:
                            if r.status < 500:
                                return
                    except (OSError, TimeoutError) as exc:
                        log.warning("callback failed", extra={"job": job_id, "attempt": attempt, "error": str(exc)})
                    await asyncio.sleep(0.5 * (attempt + 1))

        try:
            asyncio.run(post())
        except Exception:  # a callback never takes the consumer down
            log.exception("callback failed", extra={"job": job_id})
        finally:
            self.callback_slots.release()


JOB_SERVICE = web.AppKey("jobs", JobService)


def consumer_main(config: ConsumerConfig) -> None:
    """Entry point of a job consumer process: SIGTERM finishes the current job, then exits."""
    from modelops_server.logs import configure_logging  # noqa: PLC0415

    configure_logging(config.log_format, config.log_level, component="jobs")
    consumer = _Consumer(config)

    def _stop(*_: object) -> None:
        consumer.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("job consumer ready", extra={"consumer": config.name, "pid": os.getpid(), "model": config.model[0]})
    consumer.run()
