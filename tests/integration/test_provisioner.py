"""The local cluster's volume provisioner (hack/provisioner.py) outlives the API server being away:
the fault tests stop the API server for 30 s, and a pass that meets a refused connection (urllib3's
`MaxRetryError`, not an `OSError`) used to end the process, so no claim made afterwards was bound
unless something restarted it. Here it runs against an address nobody listens on."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: connections are refused


def test_the_provisioner_waits_through_refused_connections(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    server = f"https://127.0.0.1:{_closed_port()}"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    log = tmp_path / "provisioner.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "hack" / "provisioner.py"), "--kubeconfig", str(kubeconfig),
             "--volumes", str(tmp_path / "volumes")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # a liveness bound: three refused passes take about 3 s
        while log.read_text().count("waiting for the API server") < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert log.read_text().count("waiting for the API server") >= 3, log.read_text()
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
