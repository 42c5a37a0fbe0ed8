"""One container as a local process: started in a private mount namespace, probed, restarted.

Each container runs as `unshare --mount --uts sh -c PROLOGUE sh ARGV...`: the prologue sets the
hostname to the pod's, bind-mounts the pod's volumes at their mountPaths, the pod's hosts,
resolv.conf and nsswitch.conf over those in /etc (so Service and pod names resolve through the
agent's DNS server) and a per-container file over the termination-message path, joins the
container's memory and CPU cgroups where the host allows, changes to the working directory, and
execs the command.
Nothing of that is visible outside the namespace. The process runs in its pod's network namespace
(see network.py), entered with nsenter first.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_TERMINATION_MESSAGE = 4096


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Probe:
    """A readiness, liveness or startup probe's schedule and its running tally."""

    spec: dict[str, Any]
    started: float
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    passed: bool = False

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds", 0))

    def due(self, at: float) -> bool:
        return at >= self.next_at

    def record(self, ok: bool, at: float) -> None:
        self.next_at = at + float(self.spec.get("periodSeconds", 10))
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.passed = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.passed = False

    @property
    def failed(self) -> bool:
        return self.failures >= int(self.spec.get("failureThreshold", 3))


def run_probe(spec: dict[str, Any], ip: str, ports: dict[str, int], pid: int | None) -> bool:
    """One probe attempt: httpGet (2xx/3xx), tcpSocket (connects) or exec (exit 0)."""
    timeout = float(spec.get("timeoutSeconds", 1))

    def port_of(p: Any) -> int:
        return int(p) if str(p).isdigit() else ports[str(p)]

    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            scheme = h.get("scheme", "HTTP").lower()
            url = f"{scheme}://{h.get('host') or ip}:{port_of(h['port'])}{h.get('path', '/')}"
            req = urllib.request.Request(url, headers={x["name"]: x["value"] for x in h.get("httpHeaders", [])})
            ctx = ssl._create_unverified_context() if scheme == "https" else None  # the kubelet skips verification too
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return bool(200 <= r.status < 400)
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            with socket.create_connection((t.get("host") or ip, port_of(t["port"])), timeout=timeout):
                return True
        if "exec" in spec:
            cmd = spec["exec"]["command"]
            if pid is not None:  # run inside the container's mount namespace
                cmd = ["nsenter", f"--target={pid}", "--mount", "--net", "--", *cmd]
            return subprocess.run(cmd, timeout=timeout, capture_output=True, check=False).returncode == 0
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return False
    return False


@dataclass
class Container:
    """The state of one container across its restarts."""

    spec: dict[str, Any]
    log_dir: Path
    run_dir: Path
    restart_count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    backoff_until: float = 0.0
    probes: dict[str, Probe] = field(default_factory=dict)
    stopping: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def term_file(self) -> Path:
        return self.run_dir / f"{self.name}.termination-log"

    @property
    def log_file(self) -> Path:
        return self.log_dir / self.name / f"{self.restart_count}.log"

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        if "startup" in self.probes and not self.probes["startup"].passed:
            return False
        return self.probes["readiness"].passed if "readiness" in self.probes else True

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        mounts: list[tuple[Path, str, bool]],
        hosts: Path,
        cgroups: list[Path],
        netns: str | None,
        repo: Path,
    ) -> None:
        """Start the process in the pod's network namespace (None: the host's); `mounts` are
        (source, mountPath, readOnly)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.term_file.parent.mkdir(parents=True, exist_ok=True)
        self.term_file.write_bytes(b"")
        term_path = self.spec.get("terminationMessagePath") or "/dev/termination-log"
        resolv = shlex.quote(str(hosts.parent / "resolv.conf"))
        lines = [
            f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
            f"mount --bind {resolv} /etc/resolv.conf",
            f"mount --bind {shlex.quote(str(hosts.parent / 'nsswitch.conf'))} /etc/nsswitch.conf",
            'hostname "$HOSTNAME"',
        ]
        lines.append(f"mkdir -p {shlex.quote(str(Path(term_path).parent))}; touch {shlex.quote(term_path)}")
        lines.append(f"mount --bind {shlex.quote(str(self.term_file))} {shlex.quote(term_path)}")
        # A volume over an ancestor of the repository (an emptyDir at /tmp with the checkout in
        # /tmp/...) would hide the programs and the other volumes' sources: the repository is bound
        # aside first and put back inside the volume after such a mount.
        keep = shlex.quote(str(repo))
        aside = "/.modelops-nodeagent-repo"
        shadowing = [t for _, t, _ in mounts if Path(t) in repo.parents]
        if shadowing:
            lines += [f"mkdir -p {aside}", f"mount --bind {keep} {aside}"]
        for source, target, read_only in mounts:
            q = shlex.quote(target)
            lines.append(f"mkdir -p {q}" if source.is_dir() else f"mkdir -p $(dirname {q}); touch {q}")
            lines.append(f"mount --bind {shlex.quote(str(source))} {q}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {q}")
            if target in shadowing:
                lines += [f"mkdir -p {keep}", f"mount --bind {aside} {keep}"]
        lines += [f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}" for cg in cgroups]
        workdir = self.spec.get("workingDir")
        if workdir:
            lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        prologue = "set -e\n" + "\n".join(lines)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []),
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    prologue,
                    "sh",
                    *argv,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.run_dir / f"{self.name}.pid").write_text(str(self.proc.pid))
        self.started_at, self.started_mono, self.stopping = now(), time.monotonic(), False
        self.state = {"running": {"startedAt": self.started_at}}
        self.probes = {
            kind: Probe(self.spec[f"{kind}Probe"], self.started_mono)
            for kind in ("startup", "readiness", "liveness")
            if self.spec.get(f"{kind}Probe")
        }

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns when the process is gone."""
        if self.proc is None:
            return
        self.stopping = True
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.signal(signal.SIGKILL)  # anything the process group left behind

    def finish(self, oom_killed: bool) -> dict[str, Any]:
        """Record the exit of the process that just ended; returns its `terminated` state."""
        assert self.proc is not None
        code = self.proc.returncode
        exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as runtimes report
        message = self.term_file.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if not message and exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = self.log_file.read_bytes()[-2048:].decode(errors="replace").splitlines()[-80:]
            message = "\n".join(tail)
        reason = "OOMKilled" if oom_killed else ("Completed" if exit_code == 0 else "Error")
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": self.started_at,
            "finishedAt": now(),
            "containerID": self.container_id(),
        }
        if code < 0:
            terminated["signal"] = -code
        if message:
            terminated["message"] = message
        self.proc = None
        return terminated

    def container_id(self) -> str:
        return f"local://{self.run_dir.parent.name}/{self.name}/{self.restart_count}"

    def status(self) -> dict[str, Any]:
        image = self.spec.get("image", "")
        out: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"local://{image}",
            "ready": self.ready(),
            "restartCount": self.restart_count,
            "state": self.state,
            "started": self.proc is not None and self.proc.poll() is None,
        }
        if "terminated" not in self.state and "waiting" not in self.state:
            out["containerID"] = self.container_id()
        if self.last_state:
            out["lastState"] = self.last_state
        return out


def make_cgroups(key: str, memory: int | None, cpus: float | None) -> list[Path]:
    """cgroup (v1) directories that limit a container's memory and CPU, where the host allows it."""
    made = []
    for controller, files in (
        ("memory", {"memory.limit_in_bytes": memory}),
        (
            "cpu",
            {"cpu.cfs_period_us": 100_000 if cpus else None, "cpu.cfs_quota_us": int(cpus * 100_000) if cpus else None},
        ),
    ):
        values = {k: v for k, v in files.items() if v is not None}
        if not values or not (CGROUP_ROOT / controller).is_dir():
            continue
        path = CGROUP_ROOT / controller / "modelops-nodeagent" / key
        try:
            path.mkdir(parents=True, exist_ok=True)
            for name, value in values.items():
                (path / name).write_text(str(value))
            made.append(path)
        except OSError:
            continue
    return made


def oom_killed(cgroups: list[Path]) -> bool:
    """Whether the kernel's OOM killer struck inside one of these cgroups."""
    for cg in cgroups:
        with contextlib.suppress(OSError, ValueError):
            for line in (cg / "memory.oom_control").read_text().splitlines():
                key, value = line.split()
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def remove_cgroups(cgroups: list[Path]) -> None:
    for cg in cgroups:
        with contextlib.suppress(OSError):
            cg.rmdir()
