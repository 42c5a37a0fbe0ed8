"""A real MLflow tracking server for the integration tests: `mlflow server` on loopback, SQLite
backend, artifacts served through its proxy (`mlflow-artifacts:`), optionally over TLS."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_LIMIT_S = 300.0
"""How long the server may take to answer /health: generous, for a loaded 2-core machine."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(uri: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(
    tmp: Path, *, tls: tuple[Path, Path] | None = None, context: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A fresh MLflow server (one worker, no job runner); `tls` = (certificate, key) serves https."""
    port = free_port()
    uri = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp}/mlflow.db",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if tls:
        command += ["--uvicorn-opts", f"--ssl-certfile {tls[0]} --ssl-keyfile {tls[1]}"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not health(uri, context):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up (exit {proc.poll()}):\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.25)
        yield uri
    finally:
        # The server runs uvicorn in a child process: stop the whole session it leads.
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
