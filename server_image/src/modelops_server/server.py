"""The server's life: listen, load the model, serve, and on SIGTERM drain and exit.

Order matters for Kubernetes. The ports (HTTP, and gRPC unless ``--grpc-port -1``) open first, so
the liveness probe passes while the model loads; readiness turns true only when every worker has
loaded and warmed it up. On SIGTERM (or Ctrl-C): readiness turns false; requests are still served
for ``--shutdown-delay-s`` (time for endpoint lists and load balancers to drop the pod); then new
requests get 503 with ``Connection: close`` (gRPC: ``UNAVAILABLE``), the listening sockets close
(new connections are refused), admitted requests finish (up to ``--drain-timeout-s``), then the
workers stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from modelops_server import endpoints, errors
from modelops_server.config import Settings
from modelops_server.connections import GuardedSite
from modelops_server.dataplane import DataPlane
from modelops_server.grpc_server import GrpcServer
from modelops_server.metrics import Metrics

log = logging.getLogger(__name__)


def build_app(settings: Settings, plane: DataPlane, metrics: Metrics) -> web.Application:
    """The aiohttp application: routes, the error/metrics middleware and the shared objects."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[endpoints.observe])
    app[endpoints.DATAPLANE] = plane
    app[endpoints.METRICS] = metrics
    app[endpoints.SETTINGS_RETRY] = settings.retry_after_s
    app[endpoints.MODEL_CONTROL] = settings.enable_model_control
    app[endpoints.CONTROL_TOKEN] = settings.model_control_token or ""
    app[endpoints.BODIES] = endpoints.BodyBudget(settings.max_inflight_body_bytes, settings.body_timeout_s)
    endpoints.add_routes(app)
    if settings.redis_url:
        from modelops_server.jobs import JobService  # noqa: PLC0415 - redis is needed only with --redis-url

        JobService(settings, plane, metrics).attach(app)
    return app


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    metrics = Metrics()
    plane = DataPlane(settings, metrics)
    app = build_app(settings, plane, metrics)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=settings.header_timeout_s,
        max_headers=settings.max_header_fields,
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        settings.host or ("0.0.0.0" if settings.port == 0 else None),  # None: every address of both families
        settings.port,
        max_connections=settings.max_connections,
        on_refused=metrics.connections_refused.inc,
    )
    await site.start()
    log.info("listening", extra={"addresses": [list(a) if isinstance(a, tuple) else a for a in runner.addresses]})
    grpc_server: GrpcServer | None = None
    if settings.grpc_port >= 0:
        grpc_server = GrpcServer(settings, plane, metrics, app[endpoints.BODIES])
        try:
            grpc_port = await grpc_server.start()
        except errors.ServerError as failure:
            log.error("%s", failure, extra={"reason": failure.reason})
            await runner.cleanup()
            return 1
        log.info("listening for gRPC", extra={"host": settings.host, "grpc_port": grpc_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    starting = asyncio.create_task(plane.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if starting.done() and starting.exception() is not None:
        exc = starting.exception()
        log.error("cannot serve the model: %s", exc, extra={"reason": getattr(exc, "reason", "internal")})
        code = 1
    elif starting.done():
        log.info("ready", extra={"workers": settings.workers, "pids": plane.worker_pids()})
        await stopped
    else:
        starting.cancel()

    if settings.shutdown_delay_s and code == 0 and starting.done():
        log.info("shutting down: not ready, still serving", extra={"delay_s": settings.shutdown_delay_s})
        plane.leaving = True
        await asyncio.sleep(settings.shutdown_delay_s)
    log.info("shutting down: draining in-flight requests", extra={"in_flight": plane.depth})
    plane.draining = True
    await site.stop()
    grpc_stopped = asyncio.create_task(grpc_server.stop(settings.drain_timeout_s)) if grpc_server else None
    drained = await plane.drain(settings.drain_timeout_s)
    if not drained:
        log.warning("drain timeout: some requests were not answered", extra={"in_flight": plane.depth})
    await runner.cleanup()
    if grpc_stopped is not None:
        await grpc_stopped
    await plane.stop()
    log.info("stopped")
    return code


def run(settings: Settings) -> int:
    """Blocking entry point: uvloop when installed, else asyncio."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        return uvloop.run(serve(settings))
    except ImportError:
        return asyncio.run(serve(settings))
    except errors.ServerError as exc:
        log.error("fatal: %s", exc)
        return 1
