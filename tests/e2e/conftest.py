"""Fixtures for tests against the real local control plane (hack/cluster.py); the harness they use
(kubectl, the operator process, waiting) is in tests/support/cluster.py, shared with bench/.

The session starts the cluster when it is not running (and stops it afterwards unless
MODELOPS_KEEP_CLUSTER=1), installs the CRDs, and runs the operator as a separate process, as a
user would, authenticated as the Helm chart's ServiceAccount with the chart's RBAC. Each test
gets its own namespace. Every test under tests/e2e/ carries the `cluster` marker, and all of them
run in one pytest-xdist worker (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from modelops_operator import kube
from tests.support.cluster import (
    KUBE_VERSION,
    KUBECONFIG,
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    REPO,
    RESTRICTED,
    STATE,
    OperatorProcess,
    cluster_state,
    helm,
    kubectl,
)
from tests.support.workloads import ready_digits

E2E = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a `cluster` test (under pytest-xdist all of them run in one worker: the
    scheduler in tests/conftest.py)."""
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


#: The exceptions already explained (a module fixture's is raised again for each of its tests).
_explained: list[BaseException] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed cluster test's report ends with the cluster's state (tests/support/cluster.py's
    `cluster_state`): a test that times out waiting then says what the cluster was doing. Once per
    exception, so that a module fixture's error is not dumped again for each of its tests."""
    report = yield
    error = call.excinfo.value if call.excinfo else None
    if report.failed and error is not None and all(e is not error for e in _explained) and KUBECONFIG.exists():
        _explained.append(error)
        report.sections.append(("cluster state", cluster_state()))
    return report


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    # One pytest process at a time runs cluster tests on a cluster: two (xdist workers under another
    # --dist than loadgroup, or two runs) would each start an operator process, and the operators
    # would fight over the same objects. Held for the session; the kernel drops it with the process.
    STATE.mkdir(parents=True, exist_ok=True)
    lock = (STATE / "tests.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        pytest.fail(
            f"another pytest process runs cluster tests on this cluster ({STATE / 'tests.lock'} is locked): "
            "run them in one process at a time, under pytest-xdist in one worker (--dist loadgroup, as "
            "hack/test.sh does, or -n 0)"
        )
    cli = [sys.executable, str(REPO / "hack" / "cluster.py")]
    running = subprocess.run([*cli, "status"], capture_output=True, check=False).returncode == 0
    if not running:
        subprocess.run([*cli, "up"], check=True, stdout=subprocess.DEVNULL)
    yield KUBECONFIG
    if not running and os.environ.get("MODELOPS_KEEP_CLUSTER") != "1":
        subprocess.run([*cli, "down"], check=False)
    lock.close()


@pytest.fixture(scope="session")
def crds(cluster: Path) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelops-tests", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))


@pytest.fixture(scope="session")
def operator_kubeconfig(crds: None) -> Path:
    """A kubeconfig holding a token of the chart's ServiceAccount (cluster mode RBAC)."""
    rendered = helm(
        "template", OPERATOR_RELEASE, str(REPO / "charts" / "modelops"), "--namespace", OPERATOR_NAMESPACE,
        "--kube-version", KUBE_VERSION,
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


@pytest.fixture
def as_the_chart(operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's kube layer, in this process, logged in as the chart's ServiceAccount, as the
    operator runs."""
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    kube.login.cache_clear()
    yield
    kube.login.cache_clear()


@pytest.fixture(scope="session")
def api(cluster: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(cluster))


@pytest.fixture(scope="session")
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


@pytest.fixture(scope="session")
def operator(crds: None, operator_kubeconfig: Path) -> Iterator[OperatorProcess]:
    """The operator, running for the whole session as the chart's ServiceAccount."""
    proc = OperatorProcess(operator_kubeconfig)
    proc.start()
    yield proc
    code = proc.stop()
    assert code in (0, -15), f"operator ended with {code}; see {proc.log}"


@contextlib.contextmanager
def fresh_namespace(api: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace under the restricted Pod Security profile, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"modelops.dev/test": "true", **RESTRICTED}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(api: kubernetes.client.ApiClient) -> Iterator[str]:
    with fresh_namespace(api) as name:
        yield name


@pytest.fixture(scope="module")
def digits(api: kubernetes.client.ApiClient, custom: Any, operator: OperatorProcess) -> Iterator[str]:
    """A namespace with the quickstart's digits Dataset, prepared for real on the local node (once
    per module, whose tests name their TrainingRuns apart)."""
    with fresh_namespace(api) as name:
        ready_digits(custom, name)
        yield name
