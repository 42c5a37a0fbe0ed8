"""What this process may use, as its container's limits say (cgroup v2, else v1), not the node.

A pod's CPU limit is a CFS quota and its memory limit a cgroup cap: `os.cpu_count()` and
`sched_getaffinity` both report the node's cores, so a pool sized from them on a 64-core node
starts 64 workers in a container allowed 2 cores and 4 GiB, and the kernel kills it.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota(root: Path = ROOT) -> float | None:
    """This cgroup's CPU quota in cores (v2, else v1); None when it has none."""
    if (v2 := _read(root / "cpu.max")) is not None:
        q, _, p = v2.partition(" ")
        return None if q == "max" else int(q) / int(p or 100_000)
    if (q1 := _read(root / "cpu" / "cpu.cfs_quota_us")) is not None and int(q1) > 0:
        return int(q1) / int(_read(root / "cpu" / "cpu.cfs_period_us") or 100_000)
    return None


def cpu_limit(root: Path = ROOT) -> int:
    """Whole cores this process may use: the CFS quota rounded up, within the affinity mask."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    if (quota := cpu_quota(root)) is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


#: The settings by which a user chooses how OpenMP's idle threads wait; any of them set is kept.
OPENMP_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def openmp_wait_policy(environ: MutableMapping[str, str] = os.environ, root: Path = ROOT) -> str | None:
    """Make OpenMP's idle threads sleep (`OMP_WAIT_POLICY=PASSIVE`) when this container has no CPU
    quota: it may then share its cores with other pods that each size their thread pools to the whole
    node, and threads that spin between parallel regions take the CPU the others need. Must run
    before PyTorch is imported (libgomp reads it once, when it loads); the package's import does it.

    Measured on 2 cores, ResNet-18 on 16-pixel digits, one epoch each: three such trainers side by
    side took 77 s with spinning threads and 25 s with sleeping ones; one alone lost a quarter of its
    epoch rate at this size (352 → 265 img/s) and nothing measurable at 224 px. With a quota the
    process has its cores to itself (its threads are sized to it), so spinning is left on. A wait
    setting the user made is never changed. Returns the policy set, or None.
    """
    if cpu_quota(root) is not None or any(k in environ for k in OPENMP_WAIT_SETTINGS):
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


def memory_limit(root: Path = ROOT) -> int | None:
    """Bytes of memory this process's cgroup may use; None when unlimited (or not known)."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        raw = _read(path)
        if raw is None:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:  # v1 writes "unlimited" as ~2^63
            return None
        return int(raw)
    return None
