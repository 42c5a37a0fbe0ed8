"""The gRPC endpoints: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` (grpc.aio),
with server reflection (``grpc.reflection.v1alpha``, which grpcurl and Postman ask) describing both.

The same data plane as REST (``endpoints``): the same admission, batching, workers and errors. A
``ModelInfer`` message is not parsed here: its model name and version are read from the message's
top-level fields (``route``), and the serialized message goes to a worker untouched, which parses
it (``grpc_protocol``) and answers with the serialized response. Errors become the status code from
``errors.GRPC_STATUS`` with the same message REST sends; a 503's ``Retry-After`` becomes the
trailing metadata ``retry-after``. Metrics are REST's, with endpoint ``grpc_<method>`` and the HTTP
status the error maps to as ``code`` (canary analysis and alerts count gRPC errors too).

During an A/B experiment, ``ModelInfer`` is routed by the experiment's key read from the call's
metadata (``keyHeader`` in lower case), and the variant and request id come back as initial metadata
(``x-modelops-variant``, ``x-modelops-request-id``), as REST's response headers.

Message size: gRPC itself refuses a message above twice ``--max-body-bytes`` before reading it
whole (``RESOURCE_EXHAUSTED``, gRPC's words); one between the two limits is refused here with
``INVALID_ARGUMENT`` and REST's words. A message counts against ``--max-inflight-body-bytes`` until
it is answered, as a REST body does.

Health (``grpc.health.v1``): the service ``""`` is SERVING while the process runs (liveness);
``inference.GRPCInferenceService`` is SERVING while the server is ready (readiness), which
Kubernetes' ``grpc`` probes can ask with ``service``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelops_server import __version__, errors, repository
from modelops_server.config import Settings
from modelops_server.dataplane import DataPlane, ServedModel
from modelops_server.endpoints import EXTENSIONS, BodyBudget
from modelops_server.logs import REQUEST, request_context
from modelops_server.metrics import Metrics
from modelops_server.proto import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: The services server reflection describes (grpcurl's ``list``): the two this server implements and
#: reflection itself.
REFLECTED = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
HEALTH_SYNC_S = 0.25

Context = Any  # grpc.aio.ServicerContext: grpcio ships no type hints


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise errors.RequestError("malformed ModelInferRequest: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def route(payload: bytes) -> tuple[str, str]:
    """``(model_name, model_version)`` of a serialized ``ModelInferRequest``, reading only its
    top-level fields (the tensors' bytes are skipped, not copied)."""
    fields: dict[int, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end:
        key, pos = _varint(payload, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(payload, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(payload, pos)
            if number in (1, 2):
                fields[number] = payload[pos : pos + length]
            pos += length
        else:
            raise errors.RequestError(f"malformed ModelInferRequest: wire type {wire} at byte {pos}")
    if pos != end:
        raise errors.RequestError("malformed ModelInferRequest: a field runs past the end of the message")
    try:
        return fields.get(1, b"").decode(), fields.get(2, b"").decode()
    except UnicodeDecodeError as exc:
        raise errors.RequestError("malformed ModelInferRequest: model_name is not UTF-8") from exc


class _Labels:
    """The model a call was for, known once its name resolved (for the metrics' labels)."""

    model: ServedModel | None = None


class InferenceService:
    """The handlers; each maps :class:`ServerError` to a status and counts the call."""

    def __init__(self, settings: Settings, plane: DataPlane, metrics: Metrics, bodies: BodyBudget) -> None:
        self.settings, self.plane, self.metrics, self.bodies = settings, plane, metrics, bodies

    async def _call(
        self,
        method: str,
        context: Context,
        body: Callable[[], Awaitable[tuple[Any, ServedModel | None]]],
        labels: _Labels | None = None,
    ) -> Any:
        m = self.metrics
        started = time.monotonic()
        m.inflight.inc()
        labels = labels or _Labels()
        status, reason = 200, ""
        metadata = _metadata(context)
        token = REQUEST.set(request_context(metadata.get("x-request-id"), metadata.get("traceparent")))
        try:
            response, labels.model = await body()
            return response
        except errors.ServerError as exc:
            status, reason = errors.http_status(exc), exc.reason
            await self._abort(context, exc)
        except Exception as exc:
            log.exception("unexpected error in gRPC %s", method)
            status, reason = 500, "internal"
            await self._abort(context, errors.ServerError(f"internal error: {type(exc).__name__}"))
        finally:
            m.inflight.dec()
            model = labels.model
            name, version = (model.name, model.version) if model is not None else ("", "")
            if method not in ("ServerLive", "ServerReady", "ModelReady"):  # probes, as REST's are not counted
                endpoint = "grpc_" + method
                m.requests.labels(name, version, endpoint, str(status)).inc()
                m.request_duration.labels(name, version, endpoint).observe(time.monotonic() - started)
                if status >= 400:
                    m.errors.labels(name, reason).inc()
            if log.isEnabledFor(logging.DEBUG):  # the access log, as REST's: one line per call at DEBUG
                seconds = round(time.monotonic() - started, 6)
                extra = {"method": "gRPC", "path": f"/{SERVICE}/{method}", "status": status, "seconds": seconds}
                log.debug("request", extra={**extra, "model": name, "version": version})
            REQUEST.reset(token)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _abort(self, context: Context, exc: errors.ServerError) -> None:
        code = grpc.StatusCode[errors.grpc_status(exc)]
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            context.set_trailing_metadata((("retry-after", str(self.settings.retry_after_s)),))
        await context.abort(code, str(exc))

    def _model(self, name: str, version: str) -> ServedModel:
        return self.plane.resolve(name, version or None)

    # --- health and metadata ---------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        async def body() -> tuple[Any, None]:
            return pb.ServerLiveResponse(live=True), None

        result: pb.ServerLiveResponse = await self._call("ServerLive", context, body)
        return result

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        async def body() -> tuple[Any, None]:
            return pb.ServerReadyResponse(ready=self.plane.ready), None

        result: pb.ServerReadyResponse = await self._call("ServerReady", context, body)
        return result

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def body() -> tuple[Any, ServedModel | None]:
            ready = self.plane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready), self.plane.current

        result: pb.ModelReadyResponse = await self._call("ModelReady", context, body)
        return result

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        async def body() -> tuple[Any, None]:
            return pb.ServerMetadataResponse(name="modelops-server", version=__version__, extensions=EXTENSIONS), None

        result: pb.ServerMetadataResponse = await self._call("ServerMetadata", context, body)
        return result

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        async def body() -> tuple[Any, ServedModel]:
            model = self._model(request.name, request.version)
            meta = model.metadata
            tensor = pb.ModelMetadataResponse.TensorMetadata
            response = pb.ModelMetadataResponse(
                name=meta.name,
                versions=meta.versions,
                platform=meta.platform,
                inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
                outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
            )
            return response, model

        result: pb.ModelMetadataResponse = await self._call("ModelMetadata", context, body)
        return result

    # --- inference -----------------------------------------------------------------------------------

    async def model_infer(self, payload: bytes, context: Context) -> bytes:
        """``ModelInfer``: `payload` is the serialized request; the result the serialized response."""

        labels = _Labels()

        async def body() -> tuple[bytes, ServedModel | None]:
            limit = self.settings.max_body_bytes
            if len(payload) > limit:
                raise errors.BodyTooLarge(f"the request body of {len(payload)} bytes is above the limit of {limit}")
            name, version = route(payload)
            experiment = self.plane.experiment
            key = _metadata(context).get(experiment.metadata_key) if experiment is not None else None
            model, assignment = self.plane.route(name, version or None, key)
            labels.model = model
            if assignment is not None:
                await context.send_initial_metadata(tuple(assignment.headers.items()))
            # The message is held until it is answered: it counts against the bodies' budget as a
            # REST body does (gRPC has read it whole before this handler runs).
            self.bodies.reserve(len(payload))
            try:
                self.plane.admit()
                answer = await self.plane.submit(model, "grpc", payload, {})
            finally:
                self.bodies.free(len(payload))
            self.plane.answered(assignment)
            if answer.status != 200:
                raise errors.from_wire(answer.reason, answer.message)
            return answer.body, model

        result: bytes = await self._call("ModelInfer", context, body, labels)
        return result

    # --- model repository ------------------------------------------------------------------------

    def _authorize(self, context: Context) -> None:
        repository.authorize(
            self.settings.enable_model_control,
            self.settings.model_control_token or "",
            _metadata(context).get("authorization", ""),
        )

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        async def body() -> tuple[Any, None]:
            entries = repository.index(self.plane, ready_only=request.ready)
            index = pb.RepositoryIndexResponse.ModelIndex
            models = [index(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries]
            return pb.RepositoryIndexResponse(models=models), None

        result: pb.RepositoryIndexResponse = await self._call("RepositoryIndex", context, body)
        return result

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        async def body() -> tuple[Any, ServedModel]:
            self._authorize(context)
            params = _repository_parameters(request.parameters)
            model = await repository.load(self.plane, _model_name(request), params)
            return pb.RepositoryModelLoadResponse(), model

        result: pb.RepositoryModelLoadResponse = await self._call("RepositoryModelLoad", context, body)
        return result

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def body() -> tuple[Any, ServedModel]:
            self._authorize(context)
            model = await repository.unload(self.plane, _model_name(request))
            return pb.RepositoryModelUnloadResponse(), model

        result: pb.RepositoryModelUnloadResponse = await self._call("RepositoryModelUnload", context, body)
        return result

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method table; ``ModelInfer`` keeps its messages serialized."""

        def unary(fn: Any, message: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=message.FromString, response_serializer=lambda r: r.SerializeToString()
            )

        methods = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),  # bytes in, bytes out
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": unary(self.repository_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": unary(self.repository_unload, pb.RepositoryModelUnloadRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def _metadata(context: Context) -> dict[str, str]:
    """The call's metadata as text (keys are lower case in gRPC)."""
    return {
        k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in (context.invocation_metadata() or ())
    }


def _model_name(request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> str:
    # KServe's proto has the model name as field 1, which is Triton's repository_name: take it when
    # model_name is empty, so that both projects' clients can load and unload.
    return request.model_name or request.repository_name


def _repository_parameters(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        item = getattr(value, which) if which is not None else None
        out[key] = item.decode(errors="replace") if isinstance(item, bytes) else item
    return out


class _Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 whose readiness entry is brought up to date on every ``Check``; a loop
    (``GrpcServer._sync_health``) keeps it current for ``Watch`` streams."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        self.last: bool | None = None

    async def sync(self) -> None:
        ready = self.plane.ready
        if ready != self.last:
            self.last = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.set(SERVICE, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> Any:
        await self.sync()
        return await super().Check(request, context)


def grpc_address(host: str, port: int) -> str:
    """gRPC's address for `host`: ``[::]`` for every address (gRPC listens on both families there,
    and on IPv4 alone where the node has no IPv6), an IPv6 literal in brackets."""
    if not host:
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """The grpc.aio server on ``--grpc-port``, with the health service kept in step with readiness."""

    def __init__(self, settings: Settings, plane: DataPlane, metrics: Metrics, bodies: BodyBudget) -> None:
        self.settings, self.plane = settings, plane
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", min(2 * settings.max_body_bytes, 2**31 - 1)),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ]
        )
        self.server.add_generic_rpc_handlers((InferenceService(settings, plane, metrics, bodies).handler(),))
        self.health = _Health(plane)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(REFLECTED, self.server)
        self.port = 0
        self._sync: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start; returns the port (the one picked when ``--grpc-port 0``)."""
        try:
            self.port = self.server.add_insecure_port(grpc_address(self.settings.host, self.settings.grpc_port))
        except RuntimeError as exc:
            raise errors.ServerError(f"cannot listen for gRPC on port {self.settings.grpc_port}: {exc}") from exc
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._sync = asyncio.create_task(self._sync_health())
        return self.port

    async def _sync_health(self) -> None:
        while True:
            await self.health.sync()
            await asyncio.sleep(HEALTH_SYNC_S)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give admitted ones `grace` seconds, then close."""
        if self._sync is not None:
            self._sync.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
