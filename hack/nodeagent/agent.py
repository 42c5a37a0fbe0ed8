"""The node agent: registers a Node, keeps its Lease fresh, runs the pods bound to it, provisions
local PersistentVolumes, keeps names and Services current, and serves container logs.

It is a development tool that stands in for the kubelet on one node of the local cluster; it is
not part of the product.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from network import GATEWAY, Network
from pods import PodRunner
from podspec import Resolver

log = logging.getLogger("nodeagent")
STORAGE_CLASS = "local-dir"
PROVISIONER = "modelops.dev/local-dir"
NODE_LABELS = {"modelops.dev/pool": "local", "modelops.dev/executes-pods": "true"}
NODE_TAINT = {"key": "modelops.dev/local", "value": "true", "effect": "NoSchedule"}


def _micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Agent:
    def __init__(
        self,
        kubeconfig: str,
        node: str,
        state: Path,
        repo: Path,
        api_server: str,
        logs_port: int,
        tls: tuple[Path, Path] | None,
        forward: list[int] | None = None,
    ) -> None:
        self.client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.node = node
        self.state = state
        self.repo = repo
        self.api_server = api_server
        self.host_ip = GATEWAY
        self.logs_port = logs_port
        self.tls = tls
        api = api_server.removeprefix("https://").rsplit(":", 1)
        self.network = Network(state, (api[0], int(api[1])), forward or [])
        self.runners: dict[str, PodRunner] = {}
        self.resolver = Resolver(config_map=self._config_map, secret=self._secret, token=self._token)

    # --- what pods refer to ------------------------------------------------------------------------

    def _get(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _config_map(self, ns: str, name: str) -> Mapping[str, str] | None:
        cm = self._get(self.core.read_namespaced_config_map, name, ns)
        return None if cm is None else (cm.data or {})

    def _secret(self, ns: str, name: str) -> Mapping[str, str] | None:
        sec = self._get(self.core.read_namespaced_secret, name, ns)
        return None if sec is None else (sec.data or {})

    def _token(self, ns: str, sa: str, seconds: int, audience: str | None) -> str:
        spec: dict[str, Any] = {"expirationSeconds": max(seconds, 600)}
        if audience:
            spec["audiences"] = [audience]
        res = self.core.create_namespaced_service_account_token(sa, ns, {"spec": spec})
        return str(res.status.token)

    def pvc_dir(self, ns: str, claim: str) -> Path:
        return self.state / "volumes" / ns / claim

    def base_env(self, pod_ip: str) -> dict[str, str]:
        path = f"{self.repo / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        return {
            "PATH": path,
            "HOME": "/root",
            "KUBERNETES_SERVICE_HOST": GATEWAY,
            "KUBERNETES_SERVICE_PORT": "443",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "POD_IP": pod_ip,
        }

    # --- node --------------------------------------------------------------------------------------

    def node_object(self) -> dict[str, Any]:
        cpus = os.cpu_count() or 1
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        capacity = {
            "cpu": str(cpus),
            "memory": f"{mem_kib}Ki",
            "pods": "110",
            "ephemeral-storage": f"{shutil.disk_usage(self.state).total // 2**30}Gi",
        }
        gpus = gpu_count()
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **NODE_LABELS,
                },
            },
            "spec": {"taints": [NODE_TAINT]},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def register(self) -> None:
        body = self.node_object()
        try:
            self.core.create_node(body)
            log.info("registered node %s", self.node)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(self.node, {"metadata": body["metadata"], "spec": body["spec"]})
        self.heartbeat()

    def heartbeat(self) -> None:
        cpus = self.node_object()["status"]
        now = _now()
        conditions = [
            {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now, "lastTransitionTime": now}
            for t, s, r, m in (
                ("Ready", "True", "NodeAgentReady", "the modelops node agent runs pods as local processes"),
                ("MemoryPressure", "False", "NodeAgentHasSufficientMemory", "ok"),
                ("DiskPressure", "False", "NodeAgentHasNoDiskPressure", "ok"),
                ("PIDPressure", "False", "NodeAgentHasSufficientPID", "ok"),
            )
        ]
        status = {
            **cpus,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.host_ip}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs_port}},
            "nodeInfo": {
                "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "v1.34.4",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "modelops-nodeagent://0.1.0",
                "osImage": platform.platform(),
                "kernelVersion": platform.release(),
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(self.node, {"status": status})

    def renew_lease(self) -> None:
        coord = kubernetes.client.CoordinationV1Api(self.client)
        body = {
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": _micro()},
        }
        try:
            coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as e:
            if e.status != 404:
                raise
            coord.create_namespaced_lease("kube-node-lease", body)

    def _forever(self, name: str, fn: Any, every: float) -> None:
        def loop() -> None:
            while True:
                try:
                    fn()
                except Exception as e:  # the API server may be restarting: try again next round
                    log.warning("%s: %s", name, e)
                time.sleep(every)

        threading.Thread(target=loop, name=name, daemon=True).start()

    # --- pods --------------------------------------------------------------------------------------

    def patch_pod_status(self, ns: str, name: str, uid: str, status: dict[str, Any]) -> bool:
        try:
            self.core.patch_namespaced_pod_status(name, ns, {"metadata": {"uid": uid}, "status": status})
            return True
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: status not written: %s %s", ns, name, e.status, e.reason)
            return False
        except Exception as e:
            log.warning("pod %s/%s: status not written: %s", ns, name, e)
            return False

    def sync_pods(self) -> None:
        """Start runners for new pods, stop those of deleted pods (level-based: from a full list)."""
        pods = self.client.sanitize_for_serialization(
            self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        )
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            runner = self.runners.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if runner is not None and not runner.stop_event.is_set():
                    runner.terminate(float(pod["metadata"].get("deletionGracePeriodSeconds") or 0))
                    threading.Thread(target=self._finish_delete, args=(runner,), daemon=True).start()
                elif runner is None:
                    self._delete_now(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
                continue
            if runner is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                runner = PodRunner(self, pod)
                self.runners[uid] = runner
                runner.start()
        for uid in set(self.runners) - seen:
            self.runners.pop(uid).terminate(0)  # the object is gone (force-deleted)
        # A runner whose pod ended by itself stays in self.runners, so it is not started again.

    def _finish_delete(self, runner: PodRunner) -> None:
        runner.finished.wait()
        self._delete_now(runner.ns, runner.pod_name, runner.uid)
        self.runners.pop(runner.uid, None)

    def _delete_now(self, ns: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, ns, grace_period_seconds=0, body={"preconditions": {"uid": uid}, "gracePeriodSeconds": 0}
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def sync_network(self) -> None:
        # Raw JSON, not the client's models: an EndpointSlice of a Service that selects no pod has
        # `endpoints: null`, which the generated model refuses (and one bad item would stop every
        # Service from being seen).
        raw = self.core.list_service_for_all_namespaces(_preload_content=False)
        services = json.loads(raw.data)["items"]
        discovery = kubernetes.client.DiscoveryV1Api(self.client)
        raw = discovery.list_endpoint_slice_for_all_namespaces(_preload_content=False)
        slices = json.loads(raw.data)["items"]
        self.network.update(services, slices)

    # --- storage -----------------------------------------------------------------------------------

    def ensure_storage_class(self) -> None:
        storage = kubernetes.client.StorageV1Api(self.client)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            storage.create_storage_class(body)
        except ApiException as e:
            if e.status != 409:
                raise

    def provision(self) -> None:
        """A directory-backed PersistentVolume for each pending claim of our class; cleanup of released ones."""
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if pvc.status.phase != "Pending" or pvc.spec.volume_name or pvc.spec.storage_class_name != STORAGE_CLASS:
                continue
            ns, name = pvc.metadata.namespace, pvc.metadata.name
            path = self.pvc_dir(ns, name)
            path.mkdir(parents=True, exist_ok=True)
            size = (pvc.spec.resources.requests or {}).get("storage", "1Gi")
            pv: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": f"pvc-{pvc.metadata.uid}",
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                },
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": pvc.spec.access_modes,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": ns, "name": name, "uid": pvc.metadata.uid},
                },
            }
            try:
                self.core.create_persistent_volume(pv)
                log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], ns, name, path)
            except ApiException as e:
                if e.status != 409:
                    raise
        for volume in self.core.list_persistent_volume().items:
            if volume.spec.storage_class_name == STORAGE_CLASS and volume.status.phase in ("Released", "Failed"):
                ref = volume.spec.claim_ref
                if ref is not None:
                    shutil.rmtree(self.pvc_dir(ref.namespace, ref.name), ignore_errors=True)
                self._get(self.core.delete_persistent_volume, volume.metadata.name)

    # --- logs --------------------------------------------------------------------------------------

    def serve_logs(self) -> None:
        """The kubelet's `/containerLogs/{ns}/{pod}/{container}` endpoint, so `kubectl logs` works."""
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                _, ns, name, container = parts
                runner = next((r for r in agent.runners.values() if (r.ns, r.pod_name) == (ns, name)), None)
                path = runner.logs(container) if runner else None
                if path is None:
                    self.send_error(404, f"no logs for {ns}/{name}/{container} on this node")
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        server = ThreadingHTTPServer((self.host_ip, self.logs_port), Handler)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()

    # --- main --------------------------------------------------------------------------------------

    def shutdown(self, *_: Any) -> None:
        """On SIGTERM (hack/cluster.py down): stop every pod's processes, then exit."""
        log.info("stopping %d pods", len(self.runners))
        for runner in self.runners.values():
            runner.terminate(0)
        for runner in self.runners.values():
            runner.finished.wait(timeout=10)
        self.network.teardown()
        os._exit(0)

    def kill_leftovers(self) -> None:
        """Processes of a previous agent run (their pods are started afresh)."""
        for pidfile in self.state.glob("pods/*/run/*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            pidfile.unlink(missing_ok=True)

    def run(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.kill_leftovers()
        self.network.setup()
        self.register()
        self.ensure_storage_class()
        self.serve_logs()
        self._forever("lease", self.renew_lease, 10)
        self._forever("node-status", self.heartbeat, 20)
        self._forever("network", self.sync_network, 1)
        self._forever("provisioner", self.provision, 1)
        signal.signal(signal.SIGTERM, self.shutdown)
        log.info("node %s ready; state in %s", self.node, self.state)
        while True:
            try:
                self.sync_pods()
            except Exception as e:
                log.warning("pods: %s", e)
            time.sleep(0.5)


@functools.cache
def gpu_count() -> int:
    """NVIDIA GPUs on this machine (0 where there is no driver)."""
    return len(list(Path("/dev").glob("nvidia[0-9]*")))
