"""What the cluster benchmarks (scale, faults, soak) share: the local cluster up with the CRDs
installed, an API client, and an operator process started as the tests start it but with the
production timers (resync 60 s, progress 3 s) and an admin kubeconfig."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import kubernetes  # noqa: E402

from tests.support.cluster import KUBECONFIG, OperatorProcess, kubectl  # noqa: E402


def cluster() -> kubernetes.client.ApiClient:
    """The local cluster (started by hack/cluster.py when it is not running), CRDs applied. A
    SIGTERM to the benchmark then unwinds it like Ctrl-C does, so its operator process and its
    namespaces are cleaned up rather than left running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cli = [sys.executable, str(REPO / "hack" / "cluster.py")]
    if subprocess.run([*cli, "status"], capture_output=True, check=False).returncode != 0:
        subprocess.run([*cli, "up"], check=True, stdout=subprocess.DEVNULL)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    return kubernetes.config.new_client_from_config(config_file=str(KUBECONFIG))


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_operator(log_name: str, **env: str | None) -> OperatorProcess:
    """A fresh operator process logging to .cluster/logs/<log_name>, healthy when returned; `env`
    as `OperatorProcess` takes it (None unsets a variable)."""
    operator = OperatorProcess(KUBECONFIG, MODELOPS_RESYNC_SECONDS="60", MODELOPS_PROGRESS_SECONDS="3", **env)
    operator.log = operator.log.with_name(log_name)
    operator.start()
    return operator


def machine() -> dict[str, object]:
    """What a result was measured on: CPU model, cores, kernel, Python, and the commit."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False).stdout.strip()

    commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "commit": commit + ("-dirty" if dirty else ""),
    }


def write_result(name: str, result: dict[str, object]) -> Path:
    """bench/results/<name>.json: the figures the docs quote come from these files."""
    path = REPO / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path
