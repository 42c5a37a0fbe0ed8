"""The HTTP endpoints (aiohttp): routing, admission, error mapping, metrics — no inference.

=====================================================  =============================================
route                                                  what
=====================================================  =============================================
``GET  /v2/health/live``, ``/v2/health/ready``         liveness; readiness (a model is loaded, not draining)
``GET  /v2``                                           server metadata
``GET  /v2/models/{name}[/versions/{v}]``              model metadata (inputs, outputs, classes, digest)
``GET  /v2/models/{name}[/versions/{v}]/ready``        model readiness
``POST /v2/models/{name}[/versions/{v}]/infer``        Open Inference Protocol inference (JSON or binary extension)
``POST /v2/repository/index``                          the model repository's index (OIP repository extension)
``POST /v2/repository/models/{name}/load|unload``      hot swap, unload, reload (only with ``--enable-model-control``)
``POST /v1/models/{name}:classify``                    an image (raw body or a multipart file) → top-k labels
``POST /v1/models/{name}:predict``                     KServe V1: ``{"instances": [...]}`` → top-k labels of each
``GET  /v1/models``, ``/v1/models/{name}``             KServe V1: the models; a model's readiness (503 when not ready)
``POST|PUT /predictions/{name}[/{v}]``                 TorchServe: an image (raw or multipart) → ``{label: score}``
``POST /invocations``, ``GET /ping``                   SageMaker's (and TorchServe's): as /predictions; health
``POST /v1/feedback``                                  an A/B experiment's outcome of a prediction, by request id
``POST /v1/jobs``, ``GET /v1/jobs/{id}``               asynchronous jobs (with ``--redis-url``; see ``jobs``)
``GET  /``                                             the web page (to a browser); KServe V1 liveness otherwise
``GET  /metrics``                                      Prometheus metrics
``GET  /openapi.json``                                 this table as OpenAPI 3.1 (``openapi``)
=====================================================  =============================================

While an A/B experiment runs (``experiment``), each inference request is answered by the variant
its key header is assigned to, and its answer carries ``x-modelops-variant`` and
``x-modelops-request-id`` (classify's JSON also ``variant`` and ``request_id``).

Every error is ``{"error": "<message>"}`` with the status from ``errors.HTTP_STATUS``; 503s carry
``Retry-After``. Handlers read bodies and pass them as bytes to the data plane; parsing and
decoding happen in the worker processes. Reading a body is bounded three ways, since any client
may open many connections: each body by ``--max-body-bytes`` (413), all bodies being received at
once by ``--max-inflight-body-bytes`` (``BodyBudget``: a body holds its Content-Length from its
first byte, so slow senders cannot pile up; 503 when full), and the time to send one by
``--body-timeout-s`` (408). A refused body's connection is closed, not drained.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import html
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelops_server import __version__, errors, openapi, repository
from modelops_server.dataplane import Answer, DataPlane, ServedModel
from modelops_server.experiment import Assignment, parse_feedback
from modelops_server.logs import REQUEST, request_context
from modelops_server.metrics import Metrics

log = logging.getLogger(__name__)

DATAPLANE = web.AppKey("dataplane", DataPlane)
METRICS = web.AppKey("metrics", Metrics)
SETTINGS_RETRY = web.AppKey("retry_after", int)
MODEL_CONTROL = web.AppKey("model_control", bool)
CONTROL_TOKEN = web.AppKey("model_control_token", str)
_MODEL_LABEL = "modelops_model"
_HELD = "modelops_body_bytes"


class BodyBudget:
    """The bytes of request bodies being received, all connections together, against a limit."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit, self.timeout_s, self.used = limit, timeout_s, 0

    def reserve(self, n: int) -> None:
        """Count `n` more bytes (give them back with `free`); Overloaded when they do not fit."""
        if self.used + n > self.limit:
            raise errors.Overloaded(
                f"the server is receiving {self.used} bytes of request bodies already (limit {self.limit}); retry"
            )
        self.used += n

    def free(self, n: int) -> None:
        self.used -= n

    def hold(self, request: web.Request, n: int) -> None:
        """Count `n` more bytes for `request` (given back when it is answered); Overloaded when full."""
        if n <= 0:
            return
        try:
            self.reserve(n)
        except errors.Overloaded:
            request[_HELD + "_refused"] = True
            raise
        request[_HELD] = request.get(_HELD, 0) + n

    def release(self, request: web.Request) -> None:
        self.free(request.pop(_HELD, 0))


BODIES = web.AppKey("bodies", BodyBudget)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IMAGE_TYPES = ("image/", "application/octet-stream", "application/x-image")  # the last: SageMaker's
#: A raw body also counts as the image with no Content-Type at all (Python's requests and httpx
#: with bytes) or with curl's default for --data-binary; the decoder tells an image from anything
#: else by its bytes (415 "cannot identify the image format").
UNTYPED_BODIES = ("", "application/x-www-form-urlencoded")
MAX_TOP_K = 100


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers)


def error_response(exc: errors.ServerError, retry_after: int) -> web.Response:
    """``{"error": message}`` with the mapped status; Retry-After on 503."""
    status = errors.http_status(exc)
    headers = {"Retry-After": str(retry_after)} if status == 503 else None
    return json_response({"error": str(exc)}, status=status, headers=headers)


def _aiohttp_error(exc: web.HTTPException) -> errors.ServerError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.BodyTooLarge(f"the request body is too large: {exc.text}")
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound("no such endpoint; see GET /v2 and the server's README")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return errors.RequestError(f"method {exc.method} is not allowed here; allowed: {sorted(exc.allowed_methods)}")
    return errors.RequestError(exc.reason)


#: Routes left out of the request metrics: the page, the metrics, and the health and readiness
#: probes, whose 503s while a model loads or the server drains are answers, not failed requests
#: (counted, they would raise the error rate that the alerts and the canary analysis read).
UNCOUNTED = frozenset(
    ("metrics", "openapi", "index", "live", "ready", "ping", "model_ready", "model_ready_version", "v1_model_ready")
)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to the protocol's format, and count and time every request."""
    app = request.app
    m = app[METRICS]
    retry_after = app[SETTINGS_RETRY]
    started = time.monotonic()
    m.inflight.inc()
    endpoint = request.match_info.route.name or "unknown"
    context = request_context(request.headers.get("X-Request-Id"), request.headers.get("traceparent"))
    token = REQUEST.set(context)
    try:
        try:
            response = await handler(request)
        except errors.ServerError as exc:
            response = error_response(exc, retry_after)
            request[_MODEL_LABEL + "_reason"] = exc.reason
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            mapped = _aiohttp_error(exc)
            response = error_response(mapped, retry_after)
            response.set_status(exc.status)
            request[_MODEL_LABEL + "_reason"] = mapped.reason
        except Exception as exc:
            log.exception("unexpected error in %s", endpoint)
            response = error_response(errors.ServerError(f"internal error: {type(exc).__name__}"), retry_after)
            request[_MODEL_LABEL + "_reason"] = "internal"
    finally:
        m.inflight.dec()
        app[BODIES].release(request)
        REQUEST.reset(token)
    response.headers["X-Request-Id"] = context["request_id"]
    if request.get(_HELD + "_refused") or (request.body_exists and not request.content.at_eof()):
        response.force_close()  # a body not read to its end is not drained from a slow or hostile client
    model: ServedModel | None = request.get(_MODEL_LABEL)
    name, version = (model.name, model.version) if model is not None else ("", "")
    if endpoint not in UNCOUNTED:
        m.requests.labels(name, version, endpoint, str(response.status)).inc()
        m.request_duration.labels(name, version, endpoint).observe(time.monotonic() - started)
        if response.status >= 400:
            reason = request.get(_MODEL_LABEL + "_reason", "bad_request" if response.status < 500 else "internal")
            m.errors.labels(name, reason).inc()
    if app[DATAPLANE].draining:
        response.headers["Connection"] = "close"
    if log.isEnabledFor(logging.DEBUG):  # the access log: off at INFO, one JSON line per request at DEBUG
        log.debug(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "seconds": round(time.monotonic() - started, 6),
                "model": name,
                "version": version,
                **context,
            },
        )
    return response


def _route(request: web.Request, name: str | None = None) -> tuple[ServedModel, Assignment | None]:
    """The model for an inference request (the URL's, or `name` for a URL that names none) and,
    during an experiment, the request's assignment."""
    plane = request.app[DATAPLANE]
    key = request.headers.get(plane.experiment.key_header) if plane.experiment is not None else None
    name = request.match_info["name"] if name is None else name
    model, assignment = plane.route(name, request.match_info.get("version"), key)
    request[_MODEL_LABEL] = model
    return model, assignment


def _reroute(
    request: web.Request, model: ServedModel, assignment: Assignment | None, name: str | None = None
) -> tuple[ServedModel, Assignment | None]:
    """The model routed before the body was read, or, when a hot swap retired it while the body was
    being read, the model serving now: the retired one may already be gone from the workers (it is
    dropped as soon as nothing admitted to it is in flight). An experiment's variants are never
    retired, so an assignment made before the body is kept."""
    return _route(request, name) if model.retired else (model, assignment)


def _model(request: web.Request) -> ServedModel:
    model = request.app[DATAPLANE].resolve(request.match_info["name"], request.match_info.get("version"))
    request[_MODEL_LABEL] = model
    return model


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the three bounds (see the module docstring)."""
    limit = request.app._client_max_size
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise errors.BodyTooLarge(f"the request body is above the limit of {limit} bytes")
            request.app[BODIES].hold(request, size - request.get(_HELD, 0))  # beyond what Content-Length said
            chunks.append(chunk)

    await receive_bounded(request, receive)
    return b"".join(chunks)


async def receive_bounded(request: web.Request, receive: Callable[[], Awaitable[None]]) -> None:
    """Run `receive` (which reads the body) once the body's Content-Length fits the size limit and
    the budget, and within the body timeout."""
    refusal = _refused_unread(request)
    if refusal is not None:
        raise refusal
    coding = _coding(request)
    budget = request.app[BODIES]
    budget.hold(request, request.content_length or 0)
    try:
        await asyncio.wait_for(receive(), budget.timeout_s)
    except TimeoutError as exc:
        raise errors.BodyTimeout(f"the request body did not arrive within {budget.timeout_s:g} s") from exc
    except RequestPayloadError as exc:  # aiohttp's: a body its coding or chunked framing cannot decode
        if coding not in ("", "identity"):
            raise errors.RequestError(
                f"the request body is not valid {coding} data, which its Content-Encoding header says it is"
            ) from exc
        detail = getattr(exc.__cause__, "message", None) or str(exc)
        raise errors.RequestError(f"the request body cannot be read: {detail}") from exc


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` (curl sends it for bodies over 1 MiB; Java's and .NET's clients can):
    the 100 that asks for the body is sent only when the body will be read. A body over the size
    limit or in an unknown coding, or any body while the server drains, gets its 413, 415 or 503
    at once from the handler, which reads nothing, instead of a 100 that makes the client send it
    all first. Otherwise as aiohttp's own: a 100, or 417 for another expectation."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
    if _refused_unread(request) is not None or request.app[DATAPLANE].draining:
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own size starts after the 100


def _coding(request: web.Request) -> str:
    return request.headers.get("Content-Encoding", "").strip().lower()


def _refused_unread(request: web.Request) -> errors.ServerError | None:
    """What refuses the body from its head alone, before a byte of it is read: a Content-Length
    over the size limit (413) or a coding aiohttp cannot decode (415); None when nothing does."""
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        return errors.BodyTooLarge(f"the request body of {request.content_length} bytes is above the limit of {limit}")
    if _coding(request) not in CONTENT_CODINGS:
        return errors.UnsupportedMediaType(
            f"Content-Encoding {request.headers['Content-Encoding']!r} is not accepted: send the body uncompressed, "
            "or encoded with one of gzip, deflate, br, zstd"
        )
    return None


#: The content codings a request body may have (aiohttp decodes the four, the size limit applying to
#: what they decode to); "" is none.
CONTENT_CODINGS = frozenset(("", "identity", "gzip", "deflate", "br", "zstd"))


def _to_response(answer: Answer, request: web.Request, assignment: Assignment | None = None) -> web.Response:
    if answer.status >= 400 and answer.reason:
        request[_MODEL_LABEL + "_reason"] = errors.from_wire(answer.reason, "").reason
    headers = dict(answer.headers)
    if assignment is not None:
        request.app[DATAPLANE].answered(assignment)
        headers.update(assignment.headers)
    if answer.status == 503:
        headers["Retry-After"] = str(request.app[SETTINGS_RETRY])
    return web.Response(body=answer.body, status=answer.status, headers=headers)


# --- health and metadata ----------------------------------------------------------------------------


async def live(request: web.Request) -> web.Response:
    """Liveness: the front end answers."""
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    """Readiness: a model is loaded in the workers and the server is not draining (503 otherwise)."""
    ok = request.app[DATAPLANE].ready
    return json_response({"ready": ok}, status=200 if ok else 503)


#: The protocol extensions this server implements (``model_repository``: the index always; load and
#: unload with ``--enable-model-control``).
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository")


async def server_metadata(request: web.Request) -> web.Response:
    """Server metadata (OIP)."""
    extensions = list(EXTENSIONS)
    return json_response({"name": "modelops-server", "version": __version__, "extensions": extensions})


async def model_metadata(request: web.Request) -> web.Response:
    """Model metadata (OIP): inputs, outputs, versions, digest and classes."""
    return json_response(_model(request).metadata.model_dump())


def _readiness(request: web.Request) -> tuple[str, str | None, bool]:
    """The URL's model name, the version serving it (the URL's where none is loaded), and whether it
    is ready; the request labelled with the serving model for the metrics."""
    plane = request.app[DATAPLANE]
    name, version = request.match_info["name"], request.match_info.get("version")
    ok = plane.model_ready(name, version)
    if plane.current is not None:
        request[_MODEL_LABEL] = plane.current
        version = plane.current.version
    return name, version, ok


async def model_ready(request: web.Request) -> web.Response:
    """Model readiness (OIP)."""
    name, version, ok = _readiness(request)
    return json_response({"name": name, "version": version, "ready": ok}, status=200 if ok else 503)


async def v1_models(request: web.Request) -> web.Response:
    """KServe V1: the names of the models this server answers for."""
    current = request.app[DATAPLANE].current
    return json_response({"models": [current.name] if current is not None else []})


async def ping(request: web.Request) -> web.Response:
    """TorchServe's (and SageMaker's) health check: ``{"status": "Healthy"}`` when a model is
    loaded and the server is not draining; ``"Unhealthy"`` with a 503 otherwise (TorchServe answers
    200 either way, which a probe cannot tell apart)."""
    ok = request.app[DATAPLANE].ready
    return json_response({"status": "Healthy" if ok else "Unhealthy"}, status=200 if ok else 503)


async def v1_model_ready(request: web.Request) -> web.Response:
    """KServe V1 model readiness: ``{"name", "ready"}``, 503 when not ready (as KServe answers)."""
    name, _, ok = _readiness(request)
    return json_response({"name": name, "ready": ok}, status=200 if ok else 503)


# --- inference --------------------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    """OIP inference: the body goes to a worker untouched; its answer comes back ready to send."""
    plane = request.app[DATAPLANE]
    model, assignment = _route(request)
    plane.admit()
    header = request.headers.get("Inference-Header-Content-Length")
    try:
        header_length = int(header) if header is not None else None
    except ValueError as exc:
        raise errors.RequestError(f"Inference-Header-Content-Length {header!r} is not an integer") from exc
    body = await read_body(request)
    if not body:
        raise errors.RequestError("the request body is empty; send an inference request")
    meta = {"header_length": header_length, "content_type": request.content_type if request.body_exists else ""}
    if request.headers.get("Content-Type") is None:
        meta["content_type"] = ""
    model, assignment = _reroute(request, model, assignment)
    answer = await plane.submit(model, "v2", body, meta)
    return _to_response(answer, request, assignment)


async def classify(request: web.Request) -> web.Response:
    """An image in (raw ``image/*`` body or a multipart file upload) → top-k labels with scores."""
    return await _one_image(request, "classify", "file")


async def predictions(request: web.Request) -> web.Response:
    """TorchServe's inference API, ``POST|PUT /predictions/{name}[/{version}]``: the image as the body
    (``curl -T cat.jpg``) or a multipart upload (field ``data``) → ``{label: probability}``, top-k."""
    return await _one_image(request, "torchserve", "data")


async def invocations(request: web.Request) -> web.Response:
    """``POST /invocations`` (SageMaker's serving contract, which TorchServe also answers): the
    served model answers as on ``/predictions/{name}``."""
    current = request.app[DATAPLANE].current
    if current is None:
        raise errors.Unavailable("no model is loaded yet")
    return await _one_image(request, "torchserve", "data", current.name)


async def _one_image(request: web.Request, kind: str, field: str, name: str | None = None) -> web.Response:
    """Route, admit and read one image (the raw body, or the multipart upload named `field`, else
    the only one), and have a worker answer it as `kind` answers."""
    plane = request.app[DATAPLANE]
    model, assignment = _route(request, name)
    plane.admit()
    top_k = _top_k(request)
    ctype = request.content_type if request.headers.get("Content-Type") else ""
    if ctype.startswith("multipart/form-data"):
        data = await _multipart_file(request, field)
    elif ctype.startswith(IMAGE_TYPES) or ctype in UNTYPED_BODIES:
        data = await read_body(request)
    else:
        raise errors.UnsupportedMediaType(
            f"content type {request.headers.get('Content-Type', '(none)')!r} is not accepted: send the image as "
            f"the body with Content-Type image/jpeg (png, webp, ...) or as a multipart/form-data file upload "
            f"(field {field!r})"
        )
    if not data:
        raise errors.RequestError("the request body is empty: send the image's bytes")
    meta: dict[str, Any] = {"top_k": top_k}
    model, assignment = _reroute(request, model, assignment, name)
    if assignment is not None:
        meta |= {"variant": assignment.variant.name, "request_id": assignment.request_id}
    answer = await plane.submit(model, kind, data, meta)
    return _to_response(answer, request, assignment)


def _top_k(request: web.Request) -> int:
    try:
        top_k = int(request.query.get("top_k", "5"))
    except ValueError as exc:
        raise errors.RequestError("top_k must be an integer") from exc
    if not 1 <= top_k <= MAX_TOP_K:
        raise errors.RequestError(f"top_k must be between 1 and {MAX_TOP_K}")
    return top_k


async def predict(request: web.Request) -> web.Response:
    """KServe V1 ``:predict``: the JSON body goes to a worker (``kserve_v1`` parses it there)."""
    plane = request.app[DATAPLANE]
    model, assignment = _route(request)
    plane.admit()
    top_k = _top_k(request)
    if request.headers.get("Content-Type") is not None and request.content_type != "application/json":
        raise errors.UnsupportedMediaType(
            f"content type {request.headers['Content-Type']!r} is not accepted: :predict takes "
            'application/json {"instances": [...]}'
        )
    body = await read_body(request)
    if not body:
        raise errors.RequestError('the request body is empty; send {"instances": [...]}')
    meta: dict[str, Any] = {"top_k": top_k}
    model, assignment = _reroute(request, model, assignment)
    answer = await plane.submit(model, "v1", body, meta)
    return _to_response(answer, request, assignment)


async def feedback(request: web.Request) -> web.Response:
    """An A/B experiment's outcome of a prediction, by its request id: 204, counted per variant."""
    if request.headers.get("Content-Type") is not None and request.content_type != "application/json":
        raise errors.UnsupportedMediaType("feedback is a JSON body: send Content-Type application/json")
    try:
        report = parse_feedback(await read_body(request))
    except ValueError as exc:
        raise errors.RequestError(str(exc)) from exc
    experiment = request.app[DATAPLANE].experiment
    if experiment is None:
        raise errors.NotFound("no A/B experiment runs on this server: feedback is taken only while one runs")
    if experiment.variant(report.variant) is None:
        names = ", ".join(repr(v.name) for v in experiment.variants)
        raise errors.NotFound(
            f"variant {report.variant!r} is not in the experiment {experiment.name!r} (its variants: {names}); "
            "the request id may come from an earlier experiment"
        )
    request.app[METRICS].experiment_outcomes.labels(experiment.name, report.variant, report.outcome).inc()
    return web.Response(status=204)


async def _multipart_file(request: web.Request, field: str) -> bytes:
    files = await multipart_files(request, field)
    if len(files) > 1:
        names = ", ".join(repr(name) for name, _ in files)
        if any(name == field for name, _ in files):
            raise errors.RequestError(f"the multipart body has {len(files)} files named {field!r}: send one image")
        raise errors.RequestError(
            f"the multipart body has {len(files)} files (fields {names}) and no field named {field!r}: "
            f"send one image, or name its field {field!r}"
        )
    return files[0][1]


async def multipart_files(request: web.Request, field: str = "file") -> list[tuple[str, bytes]]:
    """The images of a multipart body, as (field name, bytes): the fields named `field`, or where
    there is none, every part that is a file upload (has a filename, as ``curl -F image=@cat.jpg``
    and browsers' file inputs send), whatever its field's name. Plain form fields are skipped. A
    400 when there is no image at all; the whole body stays within the server's size limit."""
    limit = request.app._client_max_size
    named: list[tuple[str, bytes]] = []
    uploads: list[tuple[str, bytes]] = []
    fields: list[str] = []

    async def receive() -> None:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            if name != field and part.filename is None:
                fields.append(name)
                continue
            already = sum(len(data) for _, data in named + uploads)
            data = b"".join(await read_part(request, part, limit, already))
            (named if name == field else uploads).append((name, data))

    try:
        await receive_bounded(request, receive)
    except MULTIPART_ERRORS as exc:
        raise errors.RequestError(f"malformed multipart body: {type(exc).__name__}: {exc}") from exc
    if not named and not uploads:
        seen = f" (its fields: {', '.join(repr(f) for f in fields)})" if fields else ""
        raise errors.RequestError(
            f"the multipart body has no file{seen}: send the image as a file upload, "
            f"field {field!r} (curl -F {field}=@photo.jpg)"
        )
    return named or uploads


#: What aiohttp's multipart reader raises on a malformed body.
MULTIPART_ERRORS = (ValueError, AssertionError, RuntimeError, BadHttpMessage, KeyError, TypeError)


async def read_part(request: web.Request, part: BodyPartReader, limit: int, already: int = 0) -> list[bytes]:
    """The chunks of one multipart part; BodyTooLarge past `limit` bytes (counting `already`)."""
    chunks: list[bytes] = []
    size = already
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise errors.BodyTooLarge(f"the uploaded files are above the limit of {limit} bytes")
        request.app[BODIES].hold(request, size - request.get(_HELD, 0))
        chunks.append(chunk)
    return chunks


# --- model control ----------------------------------------------------------------------------------


def _control(request: web.Request) -> None:
    """Model control is on, the token is right, and the body (if any) is JSON."""
    repository.authorize(
        request.app[MODEL_CONTROL], request.app[CONTROL_TOKEN], request.headers.get("Authorization", "")
    )
    if request.headers.get("Content-Type") is not None and request.content_type != "application/json":
        # An HTML form on any site can post urlencoded, multipart or text/plain bodies here without a
        # CORS preflight; application/json cannot be sent cross-site without one. (A form always
        # sends a content type; tritonclient sends none.)
        raise errors.UnsupportedMediaType("a hot swap is a JSON body: send Content-Type application/json")


async def _parameters(request: web.Request) -> dict[str, Any]:
    """The body's ``parameters`` object ({} for an empty body)."""
    try:
        doc = orjson.loads(await read_body(request) or b"{}")
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise TypeError("parameters must be an object")
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise errors.RequestError(repository.LOAD_HELP) from exc
    return params


async def repository_index(request: web.Request) -> web.Response:
    """The repository index (OIP repository extension): ``[{name, version, state, reason}]``."""
    try:
        doc = orjson.loads(await read_body(request) or b"{}")
        ready_only = bool(doc.get("ready", False))
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise errors.RequestError('the index request is a JSON object such as {"ready": true}, or empty') from exc
    entries = repository.index(request.app[DATAPLANE], ready_only=ready_only)
    return json_response([dataclasses.asdict(e) for e in entries])


async def repository_load(request: web.Request) -> web.Response:
    """Load or hot-swap the model (``repository``: parameters uri, digest, version; or none to reload)."""
    _control(request)
    plane = request.app[DATAPLANE]
    served = await repository.load(plane, request.match_info["name"], await _parameters(request))
    request[_MODEL_LABEL] = served
    return json_response({"name": served.name, "version": served.version, "digest": served.artifact.digest})


async def repository_unload(request: web.Request) -> web.Response:
    """Unload the model: readiness false, requests refused, until the next load."""
    _control(request)
    await _parameters(request)  # tritonclient sends unload_dependents; nothing depends on a model here
    served = await repository.unload(request.app[DATAPLANE], request.match_info["name"])
    request[_MODEL_LABEL] = served
    return json_response({"name": served.name, "version": served.version, "state": "UNAVAILABLE"})


# --- page and metrics -------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """The web page: upload or drop an image, see the top-k labels and the version that answered.
    To a client that does not ask for HTML (a browser does), KServe V1's liveness answer instead:
    ``{"status": "alive"}``, what KServe's clients read from ``/``."""
    if "text/html" not in request.headers.get("Accept", ""):
        return json_response({"status": "alive"})
    page, headers = _page()
    current = request.app[DATAPLANE].current
    name = html.escape(current.name if current is not None else "")  # the card's name: another's text
    return web.Response(body=page.replace(b"__MODEL_NAME__", name.encode()), content_type="text/html", headers=headers)


@functools.cache
def _page() -> tuple[bytes, dict[str, str]]:
    """The page and its headers: a Content-Security-Policy that runs only the page's own script
    (by its hash), loads nothing from elsewhere and talks only to this server."""
    page = importlib.resources.files("modelops_server").joinpath("static/index.html").read_bytes()
    script = page.split(b"<script>", 1)[1].split(b"</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return page, {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


async def openapi_document(request: web.Request) -> web.Response:
    """The REST API as OpenAPI 3.1, for the routes this server has (``openapi``)."""
    return json_response(openapi.document(request.app))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    """Register every route; the names are the ``endpoint`` label of the metrics."""
    r = app.router
    post = functools.partial(r.add_post, expect_handler=expect_continue)  # every route with a body
    r.add_get("/v2/health/live", live, name="live")
    r.add_get("/v2/health/ready", ready, name="ready")
    r.add_get("/v2", server_metadata, name="server_metadata")
    for prefix, suffix in (("/v2/models/{name}", ""), ("/v2/models/{name}/versions/{version}", "_version")):
        r.add_get(prefix, model_metadata, name="metadata" + suffix)
        r.add_get(prefix + "/ready", model_ready, name="model_ready" + suffix)
        post(prefix + "/infer", infer, name="infer" + suffix)
    post("/v2/repository/index", repository_index, name="repository_index")
    post("/v2/repository/models/{name}/load", repository_load, name="repository_load")
    post("/v2/repository/models/{name}/unload", repository_unload, name="repository_unload")
    post("/v1/models/{name:[^/:]+}:classify", classify, name="classify")
    post("/v1/models/{name:[^/:]+}:predict", predict, name="predict")
    r.add_get("/v1/models", v1_models, name="v1_models")
    for suffix, path in (("", "/predictions/{name}"), ("_version", "/predictions/{name}/{version}")):
        resource = r.add_resource(path, name="predictions" + suffix)
        resource.add_route("POST", predictions, expect_handler=expect_continue)
        resource.add_route("PUT", predictions, expect_handler=expect_continue)  # curl -T, in TorchServe's docs
    post("/invocations", invocations, name="invocations")
    r.add_get("/ping", ping, name="ping")
    r.add_get("/v1/models/{name:[^/:]+}", v1_model_ready, name="v1_model_ready")
    post("/v1/feedback", feedback, name="feedback")
    r.add_get("/", index, name="index")
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get("/openapi.json", openapi_document, name="openapi")
