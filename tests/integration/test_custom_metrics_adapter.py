"""The custom metrics adapter (hack/gomod/custom-metrics-adapter) against real parts, without the
shared cluster: its own etcd and kube-apiserver (started with hack/cluster.py's flags, on free
ports), a real Prometheus scraping a small exposition of `modelops_inflight_requests` series
labelled as the cluster's scrape config labels a pod's, and the built adapter with the flags,
certificates and RBAC hack/cluster.py gives it. Requests go to the adapter directly, as the API
server's aggregation layer sends them (the front-proxy client certificate and user headers) or as a
client with a certificate of the cluster's CA.

The path through the aggregation layer and the HPA is tests/e2e/test_custom_metrics.py.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
METRIC = "modelops_inflight_requests"
# What the servers' pods export, as Prometheus labels it (namespace and pod from the pod's metadata).
# web-2 exists but has no series; pods of another namespace of the same names must not count.
EXPOSITION = f"""# TYPE {METRIC} gauge
{METRIC}{{namespace="{NAMESPACE}",pod="web-1"}} 3
{METRIC}{{namespace="{NAMESPACE}",pod="web-3"}} 1.5
{METRIC}{{namespace="elsewhere",pod="web-2"}} 7
""".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exposition(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(EXPOSITION)

    def log_message(self, *_: object) -> None:
        pass


@dataclass
class Adapter:
    url: str
    pki: Path

    def get(self, path: str, cert: str = "admin", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if cert:
            ctx.load_cert_chain(str(self.pki / f"{cert}.crt"), str(self.pki / f"{cert}.key"))
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait(what: str, check: Any, procs: list[subprocess.Popen[bytes]], logs: Path, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        if any(p.poll() is not None for p in procs):
            tails = {log.name: log.read_text()[-1500:] for log in logs.glob("*.log")}
            pytest.fail(f"a process exited while waiting for {what}: {tails}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    state = tmp_path_factory.mktemp("cluster")
    spec = importlib.util.spec_from_file_location("modelops_cluster_script_it", REPO / "hack" / "cluster.py")
    assert spec and spec.loader
    cluster: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cluster
    spec.loader.exec_module(cluster)
    cluster.STATE, cluster.NODE_IP = state, "127.0.0.1"
    cluster.API_PORT = free_port()
    cluster.PROMETHEUS_PORT, cluster.CUSTOM_METRICS_PORT = free_port(), free_port()
    argv = {c.name: c.argv for c in cluster.components()}
    needed = [argv["etcd"][0], argv["kube-apiserver"][0], argv["prometheus"][0], argv["custom-metrics-adapter"][0]]
    for binary in [*needed, str(cluster.BIN / "kubectl")]:
        if not Path(binary).exists():
            missing(binary, "run hack/build-binaries.sh kubernetes etcd prometheus custom-metrics-adapter")
    cluster.make_pki()
    for user in ("admin", "custom-metrics-adapter"):
        cluster.write_kubeconfig(state / f"{user}.kubeconfig", user)
    # etcd's peer port is its client port + 1 in hack/cluster.py: take both free.
    while True:
        cluster.ETCD_PORT = free_port()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", cluster.ETCD_PORT + 1)) != 0:
                break
    argv = {c.name: c.argv for c in cluster.components()}

    exposition = ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=exposition.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{exposition.server_address[1]}"
    (state / "prometheus.yaml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                # honor_labels: the exposition's namespace and pod labels stand for the ones
                # hack/cluster.py's scrape config sets from a pod's metadata.
                "scrape_configs": [
                    {"job_name": "pods", "honor_labels": True, "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    logs = state / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("etcd", "kube-apiserver", "prometheus"):
            procs.append(start(argv[name], logs / f"{name}.log"))
        wait("the API server", lambda: cluster.api_get("/readyz")[0] == 200, procs, logs)

        def kubectl(*args: str, stdin: str | None = None) -> None:
            kubeconfig = f"--kubeconfig={state / 'admin.kubeconfig'}"
            subprocess.run([str(cluster.BIN / "kubectl"), kubeconfig, *args], input=stdin, text=True, check=True)

        # The adapter's RBAC (its Service, EndpointSlice and APIServices are for the aggregation
        # layer, which these requests do not go through).
        manifest = json.loads(cluster.custom_metrics_adapter_manifest())
        manifest["items"] = [i for i in manifest["items"] if "rbac" in i["apiVersion"]]
        kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        kubectl("create", "namespace", NAMESPACE)
        kubectl("create", "namespace", "elsewhere")
        for ns in (NAMESPACE, "elsewhere"):
            kubectl("-n", ns, "create", "serviceaccount", "default")
        for ns, pod, app in ((NAMESPACE, "web-1", "web"), (NAMESPACE, "web-2", "web"), (NAMESPACE, "web-3", "web"),
                             (NAMESPACE, "db-0", "db"), ("elsewhere", "web-2", "web")):  # fmt: skip
            kubectl("-n", ns, "run", pod, "--image=none", f"--labels=app={app}", "--restart=Never")
        procs.append(start(argv["custom-metrics-adapter"], logs / "custom-metrics-adapter.log"))
        served = Adapter(f"https://127.0.0.1:{cluster.CUSTOM_METRICS_PORT}", state / "pki")

        def scraped() -> bool:
            try:
                code, _ = served.get(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/web-1/{METRIC}")
            except urllib.error.URLError:  # not listening yet
                return False
            return code == 200

        wait("the adapter to answer from Prometheus", scraped, procs, logs)
        yield served
    finally:
        for p in reversed(procs):  # the adapter first, etcd last
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        exposition.shutdown()
        sys.modules.pop(spec.name, None)


def values(body: dict[str, Any]) -> dict[str, str]:
    return {i["describedObject"]["name"]: i["value"] for i in body["items"]}


@pytest.mark.parametrize("version", ["v1beta2", "v1beta1"])
def test_pods_by_label_selector_get_their_prometheus_values(adapter, version):
    code, body = adapter.get(
        f"/apis/custom.metrics.k8s.io/{version}/namespaces/{NAMESPACE}/pods/*/{METRIC}?labelSelector=app%3Dweb"
    )
    assert code == 200, body
    # web-2 has no series here (only in another namespace): left out, as the HPA expects.
    assert values(body) == {"web-1": "3", "web-3": "1500m"}
    assert {i["describedObject"]["kind"] for i in body["items"]} == {"Pod"}
    assert {i["describedObject"]["namespace"] for i in body["items"]} == {NAMESPACE}
    code, body = adapter.get(
        f"/apis/custom.metrics.k8s.io/{version}/namespaces/{NAMESPACE}/pods/*/{METRIC}?labelSelector=app%3Ddb"
    )
    assert (code, body["items"]) == (200, [])


def test_by_name_a_pod_gets_its_value_or_not_found(adapter):
    code, body = adapter.get(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/web-1/{METRIC}")
    assert (code, values(body)) == (200, {"web-1": "3"})
    code, body = adapter.get(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/web-2/{METRIC}")
    assert (code, body["reason"]) == (404, "NotFound"), body
    assert "web-2" in body["message"] and METRIC in body["message"]


@pytest.mark.parametrize("name", ["not-a-metric", "up%7D%20or%20vector(1)", "1abc"])
def test_names_that_are_not_prometheus_metric_names_are_refused(adapter, name):
    code, body = adapter.get(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/{name}")
    assert (code, body["reason"]) == (400, "BadRequest"), body
    assert "is not a Prometheus metric name" in body["message"]


def test_only_pods_are_served(adapter):
    code, body = adapter.get(f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/services/*/{METRIC}")
    assert (code, body["reason"]) == (404, "NotFound"), body


def test_the_hpa_controller_may_read_through_the_aggregation_layer_and_others_may_not(adapter):
    """As the API server's aggregation layer calls it: the front-proxy client certificate and the
    user in headers, trusted through the extension-apiserver-authentication ConfigMap (the
    auth-reader binding), authorised by a SubjectAccessReview (the auth-delegator binding)."""
    path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/{METRIC}?labelSelector=app%3Dweb"
    hpa = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
    code, body = adapter.get(path, cert="front-proxy-client", headers=hpa)
    assert (code, values(body)) == (200, {"web-1": "3", "web-3": "1500m"}), body
    code, body = adapter.get(path, cert="front-proxy-client", headers={"X-Remote-User": "someone"})
    assert (code, body["reason"]) == (403, "Forbidden"), body
    code, body = adapter.get(path, cert="")
    assert code == 403 and "system:anonymous" in body["message"], body
