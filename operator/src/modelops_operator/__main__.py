"""`modelops-operator` (or `python -m modelops_operator`): run the operator.

Out of cluster it uses $KUBECONFIG; in a pod, its ServiceAccount. Settings come from MODELOPS_*
environment variables (listed by --help).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import os
import socket
import sys
import threading
from collections.abc import Iterator

from modelops_operator.kube import credentials

# kopf imports the Kubernetes client library when it is installed (for its own optional use of
# it), about 60 MiB of generated models the operator does not use: kept out unless logging in
# needs it (`kube.credentials`). A process that imported it already keeps it.
if not credentials.needs_client():
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import kopf
import prometheus_client

from modelops_operator import __version__, handlers, kube, observability
from modelops_operator.settings import OperatorSettings

_FORMATS = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}


@contextlib.contextmanager
def _standby_health(host: str, port: int) -> Iterator[None]:
    """Answer the liveness probe on `host`:`port` until kopf serves it (after the lease is acquired)."""
    if not port:
        yield
        return

    class Alive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"standby: waiting for the leader lease\n")

        def log_message(self, *_: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Alive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelops-operator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the modelops operator: it reconciles Dataset, TrainingRun and ModelDeployment objects\n"
            "(group modelops.dev) and reports what it did in their status.\n\n"
            "In a pod it logs in with its ServiceAccount; elsewhere with the current context of\n"
            "$KUBECONFIG (or ~/.kube/config)."
        ),
        epilog="settings (environment variables):\n" + OperatorSettings.describe(),
    )
    parser.add_argument("--version", action="version", version=f"modelops-operator {__version__}")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level, kopf's internals included")
    args = parser.parse_args(argv)

    settings = OperatorSettings.from_env()
    kopf.configure(
        verbose=args.verbose or settings.log_level == "DEBUG",
        quiet=settings.log_level in ("WARNING", "ERROR"),
        log_format=_FORMATS[settings.log_format],
        log_refkey="object",
    )
    # After kopf.configure: the log filters go on the loggers it set up.
    observability.install_log_filters(settings)
    kube.configure(settings)
    handlers.register(settings)

    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.listen_host)

    election = None
    if settings.leader_election_namespace:
        from modelops_operator.kube.leader import LeaderElection  # noqa: PLC0415

        identity = f"{socket.gethostname()}-{os.getpid()}"
        election = LeaderElection(settings.leader_election_namespace, settings.leader_election_id, identity)
        with _standby_health(settings.listen_host, settings.health_port):  # a waiting standby is alive, and says so
            election.acquire()
    loop_factory = None  # asyncio's own
    if settings.event_loop == "uvloop":
        import uvloop  # noqa: PLC0415 - loaded only when chosen

        loop_factory = uvloop.new_event_loop
    host = settings.listen_host
    liveness = f"http://{f'[{host}]' if ':' in host else host}:{settings.health_port}/healthz"
    try:
        # kopf.run() with the loop chosen above (asyncio.run() would always make asyncio's own).
        with asyncio.Runner(loop_factory=loop_factory) as runner, contextlib.suppress(asyncio.CancelledError):
            runner.run(
                kopf.operator(
                    standalone=True,
                    clusterwide=not settings.namespaces,
                    namespaces=settings.namespaces,
                    liveness_endpoint=liveness if settings.health_port else None,
                )
            )
    finally:
        if election is not None:
            election.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
