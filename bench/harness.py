"""What the benchmarks share: the machine record every result file carries (`machine`,
`write_result`) and, for the cluster benchmarks (scale, faults, soak), the local cluster up with
the CRDs installed, an API client, and an operator process started as the tests start it but with
the production timers (resync 60 s, progress 3 s) and an admin kubeconfig. The cluster's modules
are imported only when used, so that a benchmark run outside this repository's venv (bench/gpu.sh
on a bare GPU machine) can record its machine without the Kubernetes client."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    import kubernetes

    from tests.support.cluster import OperatorProcess

#: Where each package's version is looked for: its distributions, the first installed wins.
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def cluster() -> kubernetes.client.ApiClient:
    """The local cluster (started by hack/cluster.py when it is not running), CRDs applied. A
    SIGTERM to the benchmark then unwinds it like Ctrl-C does, so its operator process and its
    namespaces are cleaned up rather than left running."""
    import kubernetes  # noqa: PLC0415 - only the cluster benchmarks need it

    from tests.support.cluster import KUBECONFIG, kubectl  # noqa: PLC0415

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


def start_operator(log_name: str, runner: Sequence[str] = (), **env: str | None) -> OperatorProcess:
    """A fresh operator process logging to .cluster/logs/<log_name>, healthy when returned; `env`
    as `OperatorProcess` takes it (None unsets a variable), `runner` the interpreter's arguments
    before `-m modelops_operator` (a profiler)."""
    from tests.support.cluster import KUBECONFIG, OperatorProcess  # noqa: PLC0415

    # The chart's timers unless `env` sets its own (a baseline of MODELOPS_PROGRESS_SECONDS=10).
    operator = OperatorProcess(KUBECONFIG, **{"MODELOPS_RESYNC_SECONDS": "60", "MODELOPS_PROGRESS_SECONDS": "3", **env})
    operator.log = operator.log.with_name(log_name)
    operator.runner = list(runner)
    operator.start()
    return operator


def git_commit() -> tuple[str, bool | None]:
    """HEAD and whether the working tree had changes; ("unknown", None) outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None


def package_version(name: str) -> str | None:
    """The version of `name`: its module's `__version__` when the benchmark imported it (torch's
    says which CUDA build it is, `2.15.0+cu132`, where the package metadata may not), else the
    installed distribution's (any of its `DISTRIBUTIONS`); None when it is not installed."""
    module = sys.modules.get(name.replace("-", "_"))
    if isinstance(getattr(module, "__version__", None), str):
        return str(module.__version__)  # type: ignore[union-attr]
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version if dist == name else f"{version} ({dist})"
    return None


def machine(*packages: str) -> dict[str, object]:
    """What a result was measured on, the same record in every result file: CPU model, its vector
    and matrix extensions (avx2, avx512*, amx*: they decide bf16's and ONNX Runtime's speed), cores
    (and those this process may use), kernel, Python, the versions of `packages` that the
    benchmark uses (torch, onnxruntime, ...; null when not installed), the git commit and whether
    the tree was dirty, and the date (UTC). bench/report.py reads it into the docs' tables."""
    from modelops_trainer.cpuinfo import CpuFeatures  # noqa: PLC0415 - trainer_image/src, torch-free

    cpu = CpuFeatures.read()
    commit, dirty = git_commit()
    return {
        "cpu": cpu.model,
        "cpuFlags": cpu.vector_flags(),
        "cores": os.cpu_count(),
        "usableCores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
        "commit": commit,
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def finite(value: object) -> object:
    """`value` with every NaN or infinity (a figure with no data, such as the p99 of no requests)
    as null: strict JSON has neither, and jq and browsers refuse a file that does."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_result(name: str, result: dict[str, object]) -> Path:
    """bench/results/<name>.json: the figures the docs quote come from these files."""
    path = REPO / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path.relative_to(REPO)}; bench/report.py puts its figures into the docs")
    return path
