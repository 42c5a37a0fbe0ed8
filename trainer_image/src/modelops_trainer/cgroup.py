"""What this process may use, as its container's limits say (cgroup v2, else v1), not the node.

A pod's CPU limit is a CFS quota and its memory limit a cgroup cap: `os.cpu_count()` and
`sched_getaffinity` both report the node's cores, so a pool sized from them on a 64-core node
starts 64 workers in a container allowed 2 cores and 4 GiB, and the kernel kills it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_limit(root: Path = ROOT) -> int:
    """Whole cores this process may use: the CFS quota rounded up, within the affinity mask."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = period = None
    if (v2 := _read(root / "cpu.max")) is not None:
        q, _, p = v2.partition(" ")
        if q != "max":
            quota, period = int(q), int(p or 100_000)
    elif (q1 := _read(root / "cpu" / "cpu.cfs_quota_us")) is not None and int(q1) > 0:
        quota, period = int(q1), int(_read(root / "cpu" / "cpu.cfs_period_us") or 100_000)
    if quota is not None and period:
        cores = min(cores, math.ceil(quota / period))
    return max(1, cores)


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
