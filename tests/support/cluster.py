"""Fixtures for tests against the real local control plane (hack/cluster.py).

The session starts the cluster when it is not running (and stops it afterwards unless
MODELOPS_KEEP_CLUSTER=1), installs the CRDs, and runs the operator as a separate process, as a
user would, authenticated as the Helm chart's ServiceAccount with the chart's RBAC. Each test
gets its own namespace.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MODELOPS_CLUSTER_DIR", REPO / ".cluster"))
BIN = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops")) / "bin"
KUBECONFIG = STATE / "kubeconfig"
#: The node's address: the pod bridge's gateway, where Prometheus listens for the host and the pods.
NODE_IP = "10.250.0.1"
PROMETHEUS = f"http://{NODE_IP}:{os.environ.get('MODELOPS_PROMETHEUS_PORT', '19090')}"
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

pytestmark = pytest.mark.cluster


def images() -> dict[str, str]:
    """The project's images in the local registry, by digest (hack/images.py, run by `cluster.py up`)."""
    cache = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
    return dict(json.loads((cache / "images" / "refs.json").read_text()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


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


def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True,
        text=True,
        check=check,
        input=stdin,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    cli = [sys.executable, str(REPO / "hack" / "cluster.py")]
    running = subprocess.run([*cli, "status"], capture_output=True, check=False).returncode == 0
    if not running:
        subprocess.run([*cli, "up"], check=True, stdout=subprocess.DEVNULL)
    yield KUBECONFIG
    if not running and os.environ.get("MODELOPS_KEEP_CLUSTER") != "1":
        subprocess.run([*cli, "down"], check=False)


@pytest.fixture(scope="session")
def crds(cluster: Path) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelops-tests", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))


#: The operator in these tests runs as the Helm chart's ServiceAccount, with exactly the chart's
#: RBAC (rendered by `helm template`): every cluster test is then also a proof that the chart
#: grants what the operator needs; a forbidden call fails the test that makes it.
OPERATOR_NAMESPACE = "modelops-test"
OPERATOR_RELEASE = "modelops-test"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "helm"), f"--kubeconfig={KUBECONFIG}", *args], capture_output=True, text=True, check=check
    )


@pytest.fixture(scope="session")
def operator_kubeconfig(crds: None) -> Path:
    """A kubeconfig holding a token of the chart's ServiceAccount (cluster mode RBAC)."""
    rendered = helm(
        "template", OPERATOR_RELEASE, str(REPO / "charts" / "modelops"), "--namespace", OPERATOR_NAMESPACE,
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
    ).stdout  # fmt: skip
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelops-tests", "-f", "-", stdin=rendered)
    token = kubectl("-n", OPERATOR_NAMESPACE, "create", "token", OPERATOR_RELEASE, "--duration=24h").stdout.strip()
    admin = yaml.safe_load(KUBECONFIG.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }
    path = STATE / "operator-sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def api(cluster: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(cluster))


@pytest.fixture(scope="session")
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """The operator as its console script; a test may kill it (SIGKILL, as a node failure would)
    and start it again. The periodic resync is effectively off (an hour), so the tests show that
    every change is acted on through watch events and the progress timer, never by waiting for a
    resync; the progress timer is short so that tests do not wait on it."""

    def __init__(self, kubeconfig: Path, **extra_env: str | None) -> None:
        """`extra_env` adds to or overrides the environment below; None removes a variable."""
        self.kubeconfig = kubeconfig
        self.extra_env = extra_env
        self.log = STATE / "logs" / "operator-tests.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.metrics_port = 0

    def start(self) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
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
                [sys.executable, "-m", "modelops_operator"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until("the operator's /healthz", self.healthy, timeout=60)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the operator's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}; see {self.log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.returncode


@pytest.fixture(scope="session")
def operator(crds: None, operator_kubeconfig: Path) -> Iterator[OperatorProcess]:
    """The operator, running for the whole session as the chart's ServiceAccount."""
    proc = OperatorProcess(operator_kubeconfig)
    proc.start()
    yield proc
    code = proc.stop()
    assert code in (0, -15), f"operator ended with {code}; see {proc.log}"


@pytest.fixture
def namespace(api: kubernetes.client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"modelops.dev/test": "true", **RESTRICTED}}})
    yield name
    core.delete_namespace(name)
