"""The harness for tests and benchmarks against the real local control plane (hack/cluster.py):
where its state is, kubectl and helm bound to its kubeconfig, polling, and the operator as its own
process. The pytest fixtures built on these are in tests/e2e/conftest.py; bench/ imports this
module directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MODELOPS_CLUSTER_DIR", REPO / ".cluster"))
BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
KUBECONFIG = STATE / "kubeconfig"
#: The node's address: the pod bridge's gateway, where Prometheus listens for the host and the pods.
NODE_IP = "10.250.0.1"
PROMETHEUS = f"http://{NODE_IP}:{os.environ.get('MODELOPS_PROMETHEUS_PORT', '19090')}"
#: The local cluster's Gateway (Traefik; hack/cluster.py): its HTTP listener, Traefik's API (its
#: runtime configuration) on loopback one port above it, and a parentRef to the Gateway.
GATEWAY_PORT = int(os.environ.get("MODELOPS_GATEWAY_PORT", "19300"))
GATEWAY = f"http://{NODE_IP}:{GATEWAY_PORT}"
TRAEFIK_API = f"http://127.0.0.1:{GATEWAY_PORT + 1}/api"
GATEWAY_REF = {
    "group": "gateway.networking.k8s.io",
    "kind": "Gateway",
    "namespace": "modelops-gateway",
    "name": "local",
}
#: containerd's socket on the real node (hack/cluster.py's RUN_DIR).
CONTAINERD_SOCK = Path(os.environ.get("MODELOPS_RUN_DIR", "/run/modelops")) / "containerd" / "containerd.sock"
#: Where the local volume provisioner (hack/provisioner.py) keeps each claim's files.
VOLUMES = STATE / "volumes"
#: The PVC every test namespace that runs data preparation or training gets (the operator's setting).
ARTIFACT_PVC = "modelops-artifacts"
ARTIFACTS = "/var/lib/modelops/artifacts"
#: What a pod needs to run on the real node (local-0: kubelet, containerd) instead of a kwok node.
ON_LOCAL_NODE = {
    "nodeSelector": {"modelops.dev/pool": "local"},
    "tolerations": [{"key": "modelops.dev/local", "operator": "Exists", "effect": "NoSchedule"}],
}

#: The namespaces the tests make enforce Pod Security's restricted profile, as the API server's
#: admission checks it: every pod the operator creates must be admissible there.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def images() -> dict[str, str]:
    """The project's images in the local registry, by digest (hack/images.py, run by `cluster.py up`)."""
    cache = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
    return dict(json.loads((cache / "images" / "refs.json").read_text()))


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; a liveness bound, not a speed assertion."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def kubectl(
    *args: str, check: bool = True, stdin: str | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True,
        text=True,
        check=check,
        input=stdin,
        timeout=timeout,
    )


def cluster_state() -> str:
    """What the cluster looked like, for a failed cluster test's report: the nodes' taints and
    the conditions that are True (Ready, or a pressure), the pods of every namespace that are neither
    Running nor Succeeded (with why they wait), claims not Bound, and the last Warning events.
    Short, so that the report's end (all CI keeps) holds it; never raises."""
    node_state = (
        "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key,"
        'CONDITIONS:.status.conditions[?(@.status=="True")].type'
    )
    pod_state = (
        "custom-columns=NAMESPACE:.metadata.namespace,POD:.metadata.name,PHASE:.status.phase,"
        "WAITING:.status.containerStatuses[*].state.waiting.reason,"
        'UNSCHEDULABLE:.status.conditions[?(@.reason=="Unschedulable")].message'
    )
    asks = (
        ("node", ["get", "nodes", "-o", node_state]),
        ("pods not running", ["get", "pods", "-A", "--field-selector=status.phase!=Running,status.phase!=Succeeded",
                              "-o", pod_state]),
        ("claims not bound", ["get", "pvc", "-A"]),
        ("warnings", ["get", "events", "-A", "--field-selector=type=Warning", "--sort-by=.lastTimestamp"]),
    )  # fmt: skip
    out = []
    for title, args in asks:
        try:
            done = kubectl("--request-timeout=10s", *args, check=False, timeout=20)
            lines = (done.stdout or done.stderr).strip().splitlines()
        except (OSError, subprocess.TimeoutExpired) as e:
            lines = [repr(e)]
        if title == "claims not bound":
            lines = [line for line in lines if " Bound " not in line]
        out.append(f"--- {title}")
        out.extend(lines[:1] + lines[1:][-12:] if len(lines) > 13 else lines)
    return "\n".join(out)


#: The operator in the cluster tests runs as the Helm chart's ServiceAccount, with exactly the chart's
#: RBAC (rendered by `helm template`): every cluster test is then also a proof that the chart
#: grants what the operator needs; a forbidden call fails the test that makes it.
OPERATOR_NAMESPACE = "modelops-test"
OPERATOR_RELEASE = "modelops-test"
#: The cluster's Kubernetes version, for `helm template` (the chart's kubeVersion is checked
#: against it; a helm built without helm's ldflags would assume 1.20).
KUBE_VERSION = next(
    line.split("=", 1)[1]
    for line in (REPO / "hack" / "versions.env").read_text().splitlines()
    if line.startswith("KUBERNETES_VERSION=")
)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "helm"), f"--kubeconfig={KUBECONFIG}", *args], capture_output=True, text=True, check=check
    )


#: Where the operator's ports are chosen: below the kernel's ephemeral range (32768 and up), from
#: which every outgoing connection takes its local port, and below the NodePort range (30000).
PORTS = range(20000, 30000)


def _free_port(*taken: int) -> int:
    """A port free on every address, as the operator binds its probes and metrics (0.0.0.0). Not a
    port the kernel hands out (bind to 0): released again at once, such a port is the kernel's to
    give the next outgoing connection, which then holds it when the operator binds (EADDRINUSE:
    seen in a run of bench/faults.py, whose operator restarts 50 times). None of `taken`."""
    for port in random.sample([p for p in PORTS if p not in taken], 100):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


class OperatorProcess:
    """The operator as its console script; a test may kill it (SIGKILL, as a node failure would)
    and start it again. The periodic resync is effectively off (an hour), so the tests show that
    every change is acted on through watch events and the progress timer, never by waiting for a
    resync; the progress timer is short so that tests do not wait on it."""

    def __init__(self, kubeconfig: Path, **extra_env: str | None) -> None:
        """`extra_env` adds to or overrides the environment below; None removes a variable."""
        self.kubeconfig = kubeconfig
        self.extra_env = extra_env
        #: Put between the interpreter and `-m modelops_operator`: a profiler's own arguments
        #: (`-m memray run -o FILE`, bench/scale.py --memory-profile).
        self.runner: list[str] = []
        self.log = STATE / "logs" / "operator-tests.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.metrics_port = 0
        #: Where its endpoints answer: on IPv6 when told its pod's IP is IPv6 (MODELOPS_POD_IP).
        self.host = "[::1]" if ":" in (extra_env.get("MODELOPS_POD_IP") or "") else "127.0.0.1"

    def start(self) -> None:
        self.port = _free_port()
        self.metrics_port = _free_port(self.port)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELOPS_RESYNC_SECONDS": "3600",
            "MODELOPS_PROGRESS_SECONDS": "1",
            "MODELOPS_ARTIFACT_PVC": ARTIFACT_PVC,
            "MODELOPS_HEALTH_PORT": str(self.port),
            "MODELOPS_METRICS_PORT": str(self.metrics_port),
            "MODELOPS_PROMETHEUS_URL": PROMETHEUS,
            "MODELOPS_LOG_FORMAT": "json",
            "MODELOPS_TRAINER_IMAGE": images()["trainer"],
            "MODELOPS_SERVER_IMAGE": images()["server"],
            **self.extra_env,
        }
        env = {k: v for k, v in env.items() if v is not None}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.runner, "-m", "modelops_operator"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until("the operator's /healthz", self.healthy, timeout=60)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the operator's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}; see {self.log}")
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, and SIGKILL after `timeout` seconds (a profiler writes its file at exit: give
        it longer)."""
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.returncode


def apply(namespace: str, *objects: dict[str, Any]) -> None:
    """`kubectl apply` of plain Kubernetes objects into `namespace`."""
    kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def get(namespace: str, kind: str, name: str) -> dict[str, Any]:
    """One object, as `kubectl get -o json` returns it; raises when kubectl fails (not found included)."""
    return dict(json.loads(kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout))


def event_messages(namespace: str, name: str, reason: str, kind: str = "ModelDeployment") -> list[str]:
    """The messages of one object's Events of one reason (the object by kind and name)."""
    out = kubectl(
        "-n", namespace, "get", "events", "-o", "json",
        "--field-selector", f"involvedObject.name={name},involvedObject.kind={kind},reason={reason}",
    ).stdout  # fmt: skip
    return [e["message"] for e in json.loads(out)["items"]]


def status(custom: Any, namespace: str, plural: str, name: str, *, absent_ok: bool = False) -> dict[str, Any]:
    """The status of one of our objects (`plural`: datasets, trainingruns, modeldeployments); {} while
    it has none. An object that cannot be read raises, unless `absent_ok`: then gone (404) or an API
    server too busy to answer reads as {} too (for observers that poll while objects come and go)."""
    try:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except Exception:
        if absent_ok:
            return {}
        raise
    return dict(obj.get("status") or {})


def create(custom: Any, namespace: str, builder: Any) -> dict[str, Any]:
    """Create the object a tests.support.objects builder holds."""
    obj = builder.obj()
    plural = obj["kind"].lower() + "s"
    return dict(custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, obj))


def ready_reason(custom: Any, namespace: str, plural: str, name: str, generation: int = 1) -> tuple[str, str] | None:
    """The Ready condition's (status, reason) once the operator has seen `generation`, else None."""
    st = status(custom, namespace, plural, name)
    if st.get("observedGeneration") != generation:
        return None
    cond = next((x for x in st.get("conditions", []) if x["type"] == c.READY), None)
    return (cond["status"], cond["reason"]) if cond else None


def endpoint_addresses(namespace: str, service: str, *, ready_only: bool = True) -> list[str]:
    """The addresses in every EndpointSlice of `service` (only ready endpoints unless told
    otherwise). A Service may have several slices, some empty; kubectl failing raises."""
    out = kubectl("-n", namespace, "get", "endpointslices", "-l", f"kubernetes.io/service-name={service}", "-o", "json")
    return [
        address
        for piece in json.loads(out.stdout)["items"]
        for endpoint in piece.get("endpoints") or []
        if not ready_only or (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    ]


def pod_cgroup_procs(uid: str) -> list[Path]:
    """The `cgroup.procs` files of a pod's cgroups on the real node (pids hierarchy, cgroupfs
    driver: `kubepods[/<qos>]/pod<uid>/<container>`). Other pods' cgroups are not entered, and one
    that goes while walking (its pod or container ended) is skipped, not an error."""
    found = []
    for top in Path("/sys/fs/cgroup/pids").glob("kubepods*"):
        for path, dirs, files in os.walk(top):  # os.walk skips a directory that vanished
            inside = f"pod{uid}" in Path(path).parts
            dirs[:] = [d for d in dirs if inside or not d.startswith("pod") or d == f"pod{uid}"]
            if inside and "cgroup.procs" in files:
                found.append(Path(path) / "cgroup.procs")
    return found


def kill_pod(namespace: str, name: str) -> int:
    """A pod dies as on a node failure: every process of it SIGKILLed at once (found through its
    cgroups on the real node, cgroupfs driver), and its object force-deleted so that its controller
    replaces it under a new name. Returns how many processes were killed."""
    uid = json.loads(kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)["metadata"]["uid"]
    killed = 0
    for procs in pod_cgroup_procs(uid):
        try:
            pids = procs.read_text().split()
        except FileNotFoundError:  # the container ended meanwhile
            continue
        for pid in pids:
            try:
                os.kill(int(pid), 9)
                killed += 1
            except ProcessLookupError:
                pass
    kubectl("-n", namespace, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false", check=False)
    return killed


_REQUESTS = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def api_counts(client: kubernetes.client.ApiClient) -> Counter[tuple[str, str]]:
    """The API server's `apiserver_request_total`, summed by (group, verb) and by
    ("<group>/<resource>/<subresource>", verb). A server-side apply counts as verb APPLY."""
    resp = client.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)[0]
    out: Counter[tuple[str, str]] = Counter()
    for m in _REQUESTS.finditer(resp.data.decode()):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        group, verb, value = labels.get("group", ""), labels.get("verb", ""), int(float(m.group("value")))
        out[(group, verb)] += value
        out[(f"{group}/{labels.get('resource', '')}/{labels.get('subresource', '')}", verb)] += value
    return out


def connections(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to remote `port` (the API server's), read from
    /proc: the sockets among its file descriptors, matched in its network namespace's tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # remote address as HEX_IP:HEX_PORT, state 01 is ESTABLISHED, the inode is field 9
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                count += 1
    return count


def api_server_port() -> int:
    """The local API server's port, from the kubeconfig."""
    (cluster,) = yaml.safe_load(KUBECONFIG.read_text())["clusters"]
    return int(cluster["cluster"]["server"].rsplit(":", 1)[1])
