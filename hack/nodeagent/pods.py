"""One pod on the local node: its containers' lifecycle and the status the API server sees.

A `PodRunner` thread owns a pod from the moment it is bound to this node until it ends or is
deleted. It runs init containers in order, then the containers, restarts them per the pod's
restartPolicy (with a short crash-loop back-off: 1 s doubling to 20 s, where the kubelet uses
10 s to 5 min), runs their probes, and writes phase, conditions and container states to the
pod's status whenever they change.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from containers import Container, make_cgroups, now, oom_killed, remove_cgroups, run_probe
from network import netns_name
from podspec import Pod, SpecError, argv, check_mount_path, cpu_limit, environment, materialize_volume, memory_limit

if TYPE_CHECKING:
    from agent import Agent

log = logging.getLogger("nodeagent.pods")
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET_AFTER = 1.0, 20.0, 60.0


class PodRunner(threading.Thread):
    def __init__(self, agent: Agent, pod: Pod) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent, self.pod = agent, pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.state / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.ip: str | None = None
        self.stop_event = threading.Event()
        self.grace: float = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.finished = threading.Event()
        spec = pod["spec"]
        self.init = [Container(c, self.dir / "logs", self.dir / "run") for c in spec.get("initContainers") or []]
        self.main = [Container(c, self.dir / "logs", self.dir / "run") for c in spec.get("containers", [])]
        self.policy: str = spec.get("restartPolicy", "Always")
        self.host_network = bool(spec.get("hostNetwork"))
        self.init_index = 0
        self.setup_error: SpecError | None = None
        self.mounts: dict[str, Path] = {}
        self.prepared = False
        self.cgroups: dict[str, list[Path]] = {}
        self.transitions: dict[str, tuple[str, str]] = {}
        self.sent: dict[str, Any] | None = None
        self.started_at = now()

    # --- lifecycle -------------------------------------------------------------------------------

    def terminate(self, grace: float | None = None) -> None:
        """Stop the pod's containers (SIGTERM, then SIGKILL after `grace` seconds)."""
        if grace is not None:
            self.grace = grace
        self.stop_event.set()

    def run(self) -> None:
        try:
            self.ip = self.agent.host_ip if self.host_network else self.agent.network.allocate(self.uid)
            self.agent.network.pod_started(self)
            while not self.stop_event.is_set():
                if not self.prepared:
                    self._prepare()
                if self.prepared:
                    self._step()
                self._report()
                if self.phase() in ("Succeeded", "Failed"):
                    break
                self.stop_event.wait(0.3)
        except Exception:  # a bug here must not take the node down; the pod shows it
            log.exception("pod %s/%s: runner failed", self.ns, self.pod_name)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        threads = [threading.Thread(target=c.stop, args=(self.grace,)) for c in [*self.init, *self.main]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for groups in self.cgroups.values():
            remove_cgroups(groups)
        if not self.stop_event.is_set():
            self._report()  # the final state of a pod that ended by itself
        self.agent.network.pod_stopped(self)
        self.finished.set()

    # --- setup -----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            self.mounts = {
                v["name"]: materialize_volume(self.pod, v, self.dir, self.agent.pvc_dir, self.agent.resolver)
                for v in self.pod["spec"].get("volumes") or []
            }
            self.prepared, self.setup_error = True, None
        except SpecError as e:
            self.setup_error = e
            for c in [*self.init, *self.main]:
                c.state = {"waiting": {"reason": e.reason, "message": str(e)}}
            self.stop_event.wait(2)  # retried: the Secret or ConfigMap may appear

    def _start(self, c: Container) -> None:
        pod = {**self.pod, "status": {"podIP": self.ip, "hostIP": self.agent.host_ip, "podIPs": [{"ip": self.ip}]}}
        try:
            env = environment(pod, c.spec, self.agent.resolver, self.agent.base_env(self.ip or ""))
            command = argv(c.spec, env)
            mounts = []
            for m in c.spec.get("volumeMounts") or []:
                if m["name"] not in self.mounts:
                    raise SpecError("VolumeNotFound", f"volumeMount {m['name']!r} names no volume")
                check_mount_path(m["mountPath"], (self.agent.repo, self.agent.state))
                source = self.mounts[m["name"]] / m.get("subPath", "")
                mounts.append((source, m["mountPath"], bool(m.get("readOnly"))))
        except SpecError as e:
            c.state = {"waiting": {"reason": e.reason, "message": str(e)}}
            c.backoff_until = time.monotonic() + 2
            return
        key = f"{self.uid}/{c.name}"
        self.cgroups[c.name] = make_cgroups(key, memory_limit(c.spec), cpu_limit(c.spec))
        netns = None if self.host_network else netns_name(self.uid)
        c.start(command, env, mounts, self.agent.network.hosts_file(self), self.cgroups[c.name], netns, self.agent.repo)
        log.info("pod %s/%s: started %s (restart %d): %s", self.ns, self.pod_name, c.name, c.restart_count, command)

    # --- the control loop ------------------------------------------------------------------------

    def _step(self) -> None:
        at = time.monotonic()
        if self.init_index < len(self.init):
            c = self.init[self.init_index]
            ended = self._supervise(c, at, restart_on_success=False)
            if ended and c.state.get("terminated", {}).get("exitCode") == 0:
                self.init_index += 1
            return
        for c in self.main:
            self._supervise(c, at, restart_on_success=self.policy == "Always")

    def _supervise(self, c: Container, at: float, restart_on_success: bool) -> bool:
        """Advance one container; True when it has terminated for good."""
        if c.proc is None:
            terminated = c.state.get("terminated")
            if terminated is not None:
                code = terminated["exitCode"]
                again = (code == 0 and restart_on_success) or (code != 0 and self.policy != "Never")
                if not again:
                    return True
                if at < c.backoff_until:
                    return False
                c.last_state, c.restart_count = {"terminated": terminated}, c.restart_count + 1
            elif at < c.backoff_until:
                return False
            self._start(c)
            return False
        if c.proc.poll() is None:
            self._probe(c, at)
            return False
        ran = at - c.started_mono
        terminated = c.finish(oom_killed(self.cgroups.get(c.name, [])))
        c.state = {"terminated": terminated}
        delay = BACKOFF_START if ran > BACKOFF_RESET_AFTER else min(BACKOFF_MAX, BACKOFF_START * 2**c.restart_count)
        c.backoff_until = at + delay
        log.info("pod %s/%s: %s exited %s", self.ns, self.pod_name, c.name, terminated["exitCode"])
        return False

    def _probe(self, c: Container, at: float) -> None:
        ports = {p["name"]: int(p["containerPort"]) for p in c.spec.get("ports") or [] if p.get("name")}
        pid = c.proc.pid if c.proc else None
        startup = c.probes.get("startup")
        if startup is not None and not startup.passed:
            if startup.due(at):
                startup.record(run_probe(startup.spec, self.ip or "", ports, pid), at)
                if startup.failed:
                    self._kill_for(c, "startup probe failed")
            return
        for kind in ("readiness", "liveness"):
            probe = c.probes.get(kind)
            if probe is not None and probe.due(at):
                probe.record(run_probe(probe.spec, self.ip or "", ports, pid), at)
                if kind == "liveness" and probe.failed:
                    self._kill_for(c, "liveness probe failed")

    def _kill_for(self, c: Container, why: str) -> None:
        log.info("pod %s/%s: killing %s: %s", self.ns, self.pod_name, c.name, why)
        c.stop(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))

    # --- status ----------------------------------------------------------------------------------

    def phase(self) -> str:
        if self.init_index < len(self.init):
            t = self.init[self.init_index].state.get("terminated")
            return "Failed" if t and t["exitCode"] != 0 and self.policy == "Never" else "Pending"
        states = [c.state for c in self.main]
        if all("terminated" in s for s in states) and all(c.proc is None for c in self.main):
            codes = [s["terminated"]["exitCode"] for s in states]
            if self.policy == "Never" or (self.policy == "OnFailure" and all(x == 0 for x in codes)):
                return "Succeeded" if all(x == 0 for x in codes) else "Failed"
        if any("running" in s or "terminated" in s or c.restart_count for s, c in zip(states, self.main, strict=True)):
            return "Running"
        return "Pending"

    def _condition(self, type_: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        old = self.transitions.get(type_)
        if old is None or old[0] != status:
            self.transitions[type_] = (status, now())
        cond = {"type": type_, "status": status, "lastTransitionTime": self.transitions[type_][1]}
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def status(self) -> dict[str, Any]:
        initialized = self.init_index >= len(self.init)
        ready = initialized and all(c.ready() for c in self.main)
        phase = self.phase()
        terminal = phase in ("Succeeded", "Failed")
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": self.agent.host_ip,
            "hostIPs": [{"ip": self.agent.host_ip}],
            "startTime": self.started_at,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", ready and not terminal, "ContainersNotReady"),
                self._condition("Ready", ready and not terminal, "ContainersNotReady"),
            ],
            "containerStatuses": [c.status() for c in self.main],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        if self.ip:
            status["podIP"], status["podIPs"] = self.ip, [{"ip": self.ip}]
        return status

    def _report(self) -> None:
        status = self.status()
        if status == self.sent:
            return
        if self.agent.patch_pod_status(self.ns, self.pod_name, self.uid, status):
            self.sent = status

    def logs(self, container: str) -> Path | None:
        """The current log file of a container (for the kubelet logs endpoint)."""
        for c in [*self.main, *self.init]:
            if c.name == container:
                return c.log_file if c.log_file.exists() else None
        return None
