#!/usr/bin/env python3
"""The local Kubernetes control plane for development, tests and the quickstart.

Real parts, run as local processes: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler (built from the Kubernetes Go modules by hack/build-binaries.sh); one real node,
`local-0`, where a kubelet runs the project's container images with containerd and runc, CNI's
bridge networking, kube-proxy (iptables) and CoreDNS; and kwok, which simulates more nodes (CPU
and GPU nodes) for scheduling and scale. The images are built from the project's Dockerfiles by
hack/images.py and served by a registry on loopback (Debian's docker-registry). Add-ons that stay
host processes: the Kubeflow training operator, Prometheus, CoreDNS, kube-proxy, Traefik, the local
volume provisioner (hack/provisioner.py), metrics-server (the resource metrics API,
`metrics.k8s.io`, that CPU and memory HorizontalPodAutoscalers and `kubectl top` read), and a
custom metrics adapter (`custom.metrics.k8s.io` for pods, answered from Prometheus: HPAs on a
per-pod metric; hack/gomod/custom-metrics-adapter), both registered with the API server's
aggregation layer. Kueue (job queueing: admission by quota, preemption by
priority) runs too; the API server reaches its webhooks and CRD conversion through a selector-less
Service. So do JobSet and Kubeflow Trainer v2 (TrainJob, TrainingRuntime, ClusterTrainingRuntime:
a TrainJob runs as a JobSet), each with its webhooks behind a selector-less Service; Trainer's stock
runtimes are not installed (their images are not in the local registry).
The Gateway API's standard CRDs are installed (HTTPRoute, Gateway, ...), and Traefik implements
them: a GatewayClass `modelops-local` and a Gateway `local` (namespace `modelops-gateway`) whose HTTP
listener takes routes from every namespace, served by Traefik on the node's address. Traefik
balances over the backends' pod addresses (EndpointSlices), which the host reaches on the bridge.

    hack/cluster.py up       build what is missing, start everything, write the kubeconfig
    hack/cluster.py down     stop everything and remove the cluster's state
    hack/cluster.py status   show what runs
    hack/cluster.py operator start the modelops operator from .venv in the background (stopped by down)
    hack/cluster.py env      print `export KUBECONFIG=... PATH=...` for a shell: eval "$(hack/cluster.py env)"

State (certificates, etcd data, containerd's images and containers, volumes, logs, kubeconfig)
lives in $MODELOPS_CLUSTER_DIR (default .cluster/ in the repository). Ports: $MODELOPS_API_PORT
(16443), $MODELOPS_ETCD_PORT (12379), $MODELOPS_REGISTRY_PORT (15000), $MODELOPS_METRICS_SERVER_PORT
(19100, metrics-server on the node's address), $MODELOPS_CUSTOM_METRICS_PORT (19101, the custom
metrics adapter on the node's address), $MODELOPS_KUEUE_PORT (19200), $MODELOPS_JOBSET_PORT (19210)
and $MODELOPS_TRAINER_PORT (19220): each the webhook server on the node's address, +1 and +2 its
metrics and health on loopback; $MODELOPS_GATEWAY_PORT (19300): the Gateway's HTTP listener on the
node's address, +1 Traefik's ping on loopback. Network: the node's bridge mo-br0 is
10.250.0.1/16 (pod addresses), Services are 10.96.0.0/16 (routed to the bridge, so that nothing
addressed to them leaves this machine), kwok's simulated pod addresses 10.244.0.0/16 are
blackholed. Needs root (network, mounts, cgroups).
Only the standard library is used, so this runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
STATE = Path(os.environ.get("MODELOPS_CLUSTER_DIR", REPO / ".cluster"))
CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
BIN = CACHE / "bin"
API_PORT = int(os.environ.get("MODELOPS_API_PORT", "16443"))
ETCD_PORT = int(os.environ.get("MODELOPS_ETCD_PORT", "12379"))
KWOK_PORT = int(os.environ.get("MODELOPS_KWOK_PORT", "10247"))
KUBELET_PORT = int(os.environ.get("MODELOPS_KUBELET_PORT", "10250"))
REGISTRY_PORT = int(os.environ.get("MODELOPS_REGISTRY_PORT", "15000"))
REGISTRY = f"127.0.0.1:{REGISTRY_PORT}"
SERVICE_CIDR = "10.96.0.0/16"
#: The real node: its name, its address (the pod bridge's gateway), the pods' range on the bridge.
NODE_NAME = "local-0"
NODE_IP = "10.250.0.1"
BRIDGE = "mo-br0"
POD_CIDR = "10.250.0.0/16"
#: The real node's taint: only pods that ask for it run there for real.
LOCAL_NODE_TAINT = {"key": "modelops.dev/local", "value": "true", "effect": "NoSchedule"}
#: kwok's simulated pods get addresses here; nothing answers them, so they are blackholed.
KWOK_POD_CIDR = "10.244.0.0/16"
#: containerd's sockets and state: a short path (UNIX socket paths are limited to 108 bytes).
RUN_DIR = Path(os.environ.get("MODELOPS_RUN_DIR", "/run/modelops"))
CONTAINERD_SOCK = RUN_DIR / "containerd" / "containerd.sock"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
EGRESS_CHAIN = "MODELOPS-POD-EGRESS"
PROMETHEUS_PORT = int(os.environ.get("MODELOPS_PROMETHEUS_PORT", "19090"))
METRICS_SERVER_PORT = int(os.environ.get("MODELOPS_METRICS_SERVER_PORT", "19100"))
#: How long metrics-server and the custom metrics adapter keep an allowed SubjectAccessReview. Every
#: read of their APIs is authorized by one, and since Kubernetes 1.32 its cache key holds the
#: request's label selector, which is each HorizontalPodAutoscaler's own: with the default 10 s,
#: shorter than the autoscaler's 15 s sync period, every HPA read costs a SubjectAccessReview (500
#: HPAs: about 35 a second). 60 s (kube-apiserver's own webhook cache keeps 5 minutes) answers three
#: reads of four from the cache; docs/operations.md gives the same advice for a real cluster.
AUTHORIZED_TTL = "--authorization-webhook-cache-authorized-ttl=60s"
#: The APIService that metrics-server serves through the API server's aggregation layer.
METRICS_APISERVICE = "v1beta1.metrics.k8s.io"
CUSTOM_METRICS_PORT = int(os.environ.get("MODELOPS_CUSTOM_METRICS_PORT", "19101"))
#: The APIServices of the custom metrics adapter, the preferred version first (the HPA controller
#: asks v1beta2; v1beta1 is served by the same library for older clients).
CUSTOM_METRICS_APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")
TRAINING_OPERATOR_PORTS = int(os.environ.get("MODELOPS_TRAINING_OPERATOR_PORT", "19443"))  # +1, +2: metrics, health
KUEUE_PORTS = int(
    os.environ.get("MODELOPS_KUEUE_PORT", "19200")
)  # webhooks on the node's address; +1, +2: metrics, health
KUEUE_NAMESPACE = "kueue-system"
#: Kueue's integrations here: the training operator's PyTorchJobs only (jobs without a queue name
#: are left alone). Only their webhooks and those of Kueue's own kinds are registered. Not
#: `trainer.kubeflow.org/trainjob`: Kueue v0.17's is built against Trainer v2.2 and writes an
#: admission's placement into a TrainJob's `spec.runtimePatches`, a field Trainer v2.0.0's CRD has not.
KUEUE_FRAMEWORKS = ("kubeflow.org/pytorchjob",)
KUEUE_WEBHOOK_KINDS = frozenset({"pytorchjob", "clusterqueue", "cohort", "localqueue", "resourceflavor", "workload"})
JOBSET_PORTS = int(
    os.environ.get("MODELOPS_JOBSET_PORT", "19210")
)  # webhooks on the node's address; +1, +2: metrics, health
#: JobSet's namespace: the one its certificate rotator uses outside a pod (pkg/util/cert).
JOBSET_NAMESPACE = "jobset-system"
TRAINER_PORTS = int(
    os.environ.get("MODELOPS_TRAINER_PORT", "19220")
)  # webhooks on every address (Trainer has no flag for it); +1, +2: metrics, health
#: Kubeflow Trainer v2's namespace: the one its certificate rotator uses outside a pod (pkg/util/cert).
TRAINER_NAMESPACE = "kubeflow-system"
#: The Gateway's HTTP listener (on the node's address; Traefik's entry point of the same port),
#: and +1 Traefik's own entry point (ping) on loopback.
GATEWAY_PORT = int(os.environ.get("MODELOPS_GATEWAY_PORT", "19300"))
GATEWAY_CLASS = "modelops-local"
GATEWAY_NAMESPACE = "modelops-gateway"
GATEWAY_NAME = "local"
#: Traefik's identity (its client certificate's CN), bound to its roles in gateway_manifest().
GATEWAY_USER = "modelops:gateway"
KUBECONFIG = STATE / "kubeconfig"
#: Fixed in the training operator. The certificate rotators of JobSet and Trainer v2 also wait
#: for a tls.crt here (fixed too) but serve from their own directories (see start_jobset, start_trainer).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")

#: kwok's stage files, taken from its Go module (no copy in this repository).
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def run(*args: str | Path, capture: bool = False, **kw: object) -> str:
    """Run a command, failing loudly with its output."""
    streams: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    res = subprocess.run([str(a) for a in args], text=True, check=False, **streams)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise SystemExit(
            f"command failed ({res.returncode}): {' '.join(map(str, args))}\n{res.stdout or ''}{res.stderr or ''}"
        )
    return res.stdout if capture else ""


# --- certificates -----------------------------------------------------------------------------


def _openssl_req(name: str, subject: str, *mode: str) -> None:
    """A new RSA key `<name>.key` with either a self-signed certificate (mode -x509: a CA) or a
    certificate request `<name>.csr` (mode -new: a leaf, signed by _openssl_leaf)."""
    pki = STATE / "pki"
    out = pki / (f"{name}.crt" if "-x509" in mode else f"{name}.csr")
    run(
        "openssl",
        "req",
        *mode,
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        pki / f"{name}.key",
        "-out",
        out,
        "-subj",
        subject,
    )


def _openssl_ca(name: str, subject: str) -> None:
    _openssl_req(name, subject, "-x509", "-days", "3650")


def _openssl_leaf(name: str, subject: str, ext: str, ca: str = "ca") -> None:
    pki = STATE / "pki"
    with tempfile.NamedTemporaryFile("w", suffix=".cnf", delete=False) as f:
        f.write(ext)
    try:
        _openssl_req(name, subject, "-new")
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            pki / f"{name}.csr",
            "-CA",
            pki / f"{ca}.crt",
            "-CAkey",
            pki / f"{ca}.key",
            "-CAcreateserial",
            "-out",
            pki / f"{name}.crt",
            "-days",
            "3650",
            "-extfile",
            f.name,
        )
    finally:
        os.unlink(f.name)


#: metrics-server's identity (its client certificate's CN), which RBAC binds to its roles.
METRICS_SERVER_USER = "modelops:metrics-server"
#: The custom metrics adapter's identity, bound to its roles in custom_metrics_adapter_manifest().
CUSTOM_METRICS_USER = "modelops:custom-metrics-adapter"
#: The aggregation layer's client certificate: the API server proxies requests to metrics-server
#: with it, and metrics-server trusts the user headers of a client of this name from the
#: front-proxy CA (a CA of its own, as Kubernetes asks: the cluster CA's clients must not be able
#: to pass as the proxy).
FRONT_PROXY_CLIENT = "front-proxy-client"

CLIENTS = {
    # name: subject. admin is in system:masters; the control-plane components use their own
    # identities so RBAC applies to them as in a real cluster.
    "admin": "/O=system:masters/CN=modelops-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    "kwok": "/O=system:masters/CN=kwok-controller",
    # The real node's kubelet (the Node authorizer and NodeRestriction apply to it), kube-proxy
    # (bound to system:node-proxier by Kubernetes' bootstrap policy), and the API server's client
    # certificate for the kubelet's API (logs, exec, port-forward).
    "node": f"/O=system:nodes/CN=system:node:{NODE_NAME}",
    "kube-proxy": "/CN=system:kube-proxy",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
    # metrics-server, to the API server and to the kubelet (whose webhook authorizer asks RBAC:
    # the ClusterRole system:metrics-server gives it nodes/metrics), bound in metrics_server_manifest().
    "metrics-server": f"/CN={METRICS_SERVER_USER}",
    # The custom metrics adapter, to the API server (it lists pods; delegated authn and authz).
    "custom-metrics-adapter": f"/CN={CUSTOM_METRICS_USER}",
    # Traefik, the Gateway controller (it watches the Gateway API's objects, Services and
    # EndpointSlices, and writes the routes' and Gateways' status), bound in gateway_manifest().
    "gateway": f"/CN={GATEWAY_USER}",
}


def make_pki() -> None:
    """A CA, the API server's serving certificate, client certificates, the service-account key,
    the aggregation layer's CA and client certificate, and the serving certificates of
    metrics-server and the custom metrics adapter.
    Only what is missing is made, so that a cluster made before a certificate was added gets it."""
    pki = STATE / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    serving = "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    client = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    if not (pki / "ca.crt").exists():
        _openssl_ca("ca", "/CN=modelops-local-ca")
    if not (pki / "front-proxy-ca.crt").exists():
        _openssl_ca("front-proxy-ca", "/CN=modelops-front-proxy-ca")
    sans = (
        f"IP:127.0.0.1,IP:10.96.0.1,IP:{NODE_IP},"
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    )
    # The aggregation layer dials an APIService's endpoint directly but checks its certificate
    # for the Service's name, <service>.<namespace>.svc (kube-aggregator's proxy handler).
    leaves = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\n{serving}", "ca"),
        "kubelet": (f"/CN={NODE_NAME}", f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\n{serving}", "ca"),
        "metrics-server-serving": (
            "/CN=metrics-server",
            f"subjectAltName=DNS:metrics-server.kube-system.svc,IP:{NODE_IP}\n{serving}",
            "ca",
        ),
        "custom-metrics-adapter-serving": (
            "/CN=custom-metrics-adapter",
            f"subjectAltName=DNS:custom-metrics-adapter.kube-system.svc,IP:{NODE_IP}\n{serving}",
            "ca",
        ),
        FRONT_PROXY_CLIENT: (f"/CN={FRONT_PROXY_CLIENT}", client, "front-proxy-ca"),
        **{name: (subject, client, "ca") for name, subject in CLIENTS.items()},
    }
    for name, (subject, ext, ca) in leaves.items():
        if not (pki / f"{name}.crt").exists():
            _openssl_leaf(name, subject, ext, ca)
    if not (pki / "sa.key").exists():
        run("openssl", "genrsa", "-out", pki / "sa.key", "2048")
        run("openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")


def write_kubeconfig(path: Path, user: str) -> None:
    """A kubeconfig for one client certificate (JSON is valid YAML)."""
    pki = STATE / "pki"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelops-local",
                "cluster": {"server": f"https://127.0.0.1:{API_PORT}", "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(pki / f"{user}.crt"), "client-key": str(pki / f"{user}.key")},
            }
        ],
        "contexts": [{"name": "modelops-local", "context": {"cluster": "modelops-local", "user": user}}],
        "current-context": "modelops-local",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")


# --- processes --------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None

    @property
    def pidfile(self) -> Path:
        return STATE / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self) -> None:
        if self.pid():
            return
        (STATE / "logs").mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(STATE / "logs" / f"{self.name}.log", "ab") as out:
            proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=STATE,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        self.pidfile.write_text(str(proc.pid))
        log(f"started {self.name} (pid {proc.pid}, log {STATE / 'logs' / (self.name + '.log')})")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            if self.pid() is None or _zombie(pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        log(f"stopped {self.name}")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def operator_component() -> Component:
    """The modelops operator from the project's virtualenv, as a user runs it out of cluster."""
    return Component(
        "modelops-operator",
        [str(REPO / ".venv" / "bin" / "modelops-operator")],
        env={
            "KUBECONFIG": str(KUBECONFIG),
            "MODELOPS_HEALTH_PORT": os.environ.get("MODELOPS_HEALTH_PORT", "18080"),
            "MODELOPS_METRICS_PORT": os.environ.get("MODELOPS_METRICS_PORT", "18081"),
            "MODELOPS_ARTIFACT_PVC": os.environ.get("MODELOPS_ARTIFACT_PVC", "modelops-artifacts"),
            "MODELOPS_PROMETHEUS_URL": f"http://{NODE_IP}:{PROMETHEUS_PORT}",
        },
    )


def image_refs() -> dict[str, str]:
    """The project's images in the local registry, by digest (hack/images.py writes them)."""
    try:
        return dict(json.loads((CACHE / "images" / "refs.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def components() -> list[Component]:
    pki = STATE / "pki"

    def b(name: str) -> str:
        return str(BIN / name)

    return [
        Component(
            "etcd",
            [
                b("etcd"),
                "--name=modelops",
                f"--data-dir={STATE / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ETCD_PORT}",
                f"--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}",
                f"--listen-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
                f"--initial-cluster=modelops=http://127.0.0.1:{ETCD_PORT + 1}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        ),
        Component(
            "kube-apiserver",
            [
                b("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
                # Pods reach the API server through the `kubernetes` Service, which kube-proxy
                # sends to the advertised address: the node's bridge address, so it must listen
                # there too (and on loopback, for the host's clients).
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # Off, as the CIS benchmark asks; MODELOPS_API_SERVER_PROFILING=1 at `up` turns it on
                # for bench/scale.py --api-server-profile (/debug/pprof, cluster-admin only).
                f"--profiling={'true' if os.environ.get('MODELOPS_API_SERVER_PROFILING') == '1' else 'false'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                # The aggregation layer (metrics-server's metrics.k8s.io): the API server proxies
                # to an APIService's Service with the front-proxy client certificate and passes the
                # user in these headers; it dials the Service's endpoint itself rather than its
                # ClusterIP, so that it does not depend on kube-proxy.
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={pki / (FRONT_PROXY_CLIENT + '.crt')}",
                f"--proxy-client-key-file={pki / (FRONT_PROXY_CLIENT + '.key')}",
                "--enable-aggregator-routing=true",
                "--v=1",
            ],
        ),
        Component(
            "kube-controller-manager",
            [
                b("kube-controller-manager"),
                f"--kubeconfig={STATE / 'kube-controller-manager.kubeconfig'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        ),
        Component(
            "kube-scheduler",
            [
                b("kube-scheduler"),
                f"--kubeconfig={STATE / 'kube-scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={STATE / 'kube-scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={STATE / 'kube-scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
        ),
        Component(
            "kwok",
            [
                b("kwok"),
                f"--kubeconfig={STATE / 'kwok.kubeconfig'}",
                f"--config={STATE / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{KWOK_PORT}",
            ],
        ),
        Component(
            "training-operator",
            [
                b("training-operator"),
                f"--kubeconfig={KUBECONFIG}",
                "--enable-scheme=pytorchjob",
                f"--webhook-server-port={TRAINING_OPERATOR_PORTS}",
                f"--metrics-bind-address=127.0.0.1:{TRAINING_OPERATOR_PORTS + 1}",
                f"--health-probe-bind-address=127.0.0.1:{TRAINING_OPERATOR_PORTS + 2}",
                f"--pytorch-init-container-template-file={HACK / 'training-operator' / 'init-container.yaml'}",
                # Workers wait for the master's name in an init container: the trainer image has
                # the shell and getent it needs, and is on the node already for the workers.
                f"--pytorch-init-container-image={image_refs().get('trainer', 'modelops/trainer:missing')}",
                "--pytorch-init-container-max-tries=600",
            ],
            env={"MY_POD_NAMESPACE": "kubeflow"},
        ),
        Component(
            "kueue",
            [
                b("kueue"),
                f"--config={STATE / 'kueue' / 'config.yaml'}",
                f"--kubeconfig={KUBECONFIG}",
                # The on-demand visibility API would need its own APIService; nothing here reads it.
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=2",
            ],
        ),
        Component(
            "jobset",
            [
                b("jobset"),
                f"--config={STATE / 'jobset' / 'config.yaml'}",
                f"--kubeconfig={KUBECONFIG}",
                "--zap-log-level=2",
            ],
        ),
        Component(
            "trainer",
            [
                b("trainer-controller-manager"),
                f"--kubeconfig={KUBECONFIG}",
                f"--webhook-server-port={TRAINER_PORTS}",
                # Plain HTTP on loopback, as the other components' metrics here.
                f"--metrics-bind-address=127.0.0.1:{TRAINER_PORTS + 1}",
                "--metrics-secure=false",
                f"--health-probe-bind-address=127.0.0.1:{TRAINER_PORTS + 2}",
                "--leader-elect=false",
                "--zap-log-level=2",
            ],
            # Its webhook server reads controller-runtime's default certificate directory under
            # $TMPDIR (trainer_cert_dir()); its own, not the training operator's /tmp one.
            env={"TMPDIR": str(STATE / "trainer" / "tmp")},
        ),
        Component(
            "prometheus",
            [
                b("prometheus"),
                f"--config.file={STATE / 'prometheus.yaml'}",
                f"--storage.tsdb.path={STATE / 'prometheus'}",
                # On the node's address: the host's clients and the pods (the operator's canary
                # analysis) reach it there.
                f"--web.listen-address={NODE_IP}:{PROMETHEUS_PORT}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
        ),
        Component(
            "metrics-server",
            [
                b("metrics-server"),
                # One identity for the API server (nodes, pods; the delegated authentication and
                # authorization of its own API) and for the kubelet's /metrics/resource.
                f"--kubeconfig={STATE / 'metrics-server.kubeconfig'}",
                f"--authentication-kubeconfig={STATE / 'metrics-server.kubeconfig'}",
                f"--authorization-kubeconfig={STATE / 'metrics-server.kubeconfig'}",
                # On the node's address, where the Service's EndpointSlice sends the API server.
                f"--bind-address={NODE_IP}",
                f"--secure-port={METRICS_SERVER_PORT}",
                f"--tls-cert-file={pki / 'metrics-server-serving.crt'}",
                f"--tls-private-key-file={pki / 'metrics-server-serving.key'}",
                # The kubelet's serving certificate is signed by the cluster's CA: verified, not skipped.
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-port={KUBELET_PORT}",
                # Only the real node has a kubelet; kwok's simulated nodes have nothing to scrape.
                "--node-selector=modelops.dev/pool=local",
                "--metric-resolution=15s",
                AUTHORIZED_TTL,
                "--v=1",
            ],
        ),
        Component(
            "custom-metrics-adapter",
            [
                b("custom-metrics-adapter"),
                # One identity for listing pods and for the delegated authentication and
                # authorization of its own API.
                f"--lister-kubeconfig={STATE / 'custom-metrics-adapter.kubeconfig'}",
                f"--authentication-kubeconfig={STATE / 'custom-metrics-adapter.kubeconfig'}",
                f"--authorization-kubeconfig={STATE / 'custom-metrics-adapter.kubeconfig'}",
                f"--bind-address={NODE_IP}",
                f"--secure-port={CUSTOM_METRICS_PORT}",
                f"--tls-cert-file={pki / 'custom-metrics-adapter-serving.crt'}",
                f"--tls-private-key-file={pki / 'custom-metrics-adapter-serving.key'}",
                f"--prometheus-url=http://{NODE_IP}:{PROMETHEUS_PORT}",
                AUTHORIZED_TTL,
                "--v=1",
            ],
        ),
        Component(
            "gateway",
            [
                b("traefik"),
                # Nothing leaves this machine: no check for a newer version, no usage statistics.
                "--global.checknewversion=false",
                "--global.sendanonymoususage=false",
                # The Gateway's listener port names the entry point it is served on.
                f"--entrypoints.web.address={NODE_IP}:{GATEWAY_PORT}",
                f"--entrypoints.traefik.address=127.0.0.1:{GATEWAY_PORT + 1}",
                "--ping=true",
                # Traefik's API (its routers' and services' runtime configuration, the weights
                # among them) on the loopback entry point: the tests wait on it for a new weight.
                "--api.insecure=true",
                "--api.dashboard=false",
                "--providers.kubernetesgateway=true",
                # The address the Gateway's status reports (clients reach the listener there).
                f"--providers.kubernetesgateway.statusaddress.ip={NODE_IP}",
                "--log.level=INFO",
                "--log.nocolor=true",
            ],
            env={"KUBECONFIG": str(STATE / "gateway.kubeconfig")},
        ),
        Component(
            "registry",
            ["docker-registry", "serve", str(STATE / "registry.yaml")],
        ),
        Component(
            "containerd",
            ["containerd", f"--config={STATE / 'containerd' / 'config.toml'}"],
        ),
        Component(
            "kubelet",
            [
                b("kubelet"),
                f"--config={STATE / 'kubelet.yaml'}",
                f"--kubeconfig={STATE / 'node.kubeconfig'}",
                f"--root-dir={STATE / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--node-labels=modelops.dev/pool=local",
                "--v=1",
            ],
        ),
        Component(
            "kube-proxy",
            [b("kube-proxy"), f"--config={STATE / 'kube-proxy.yaml'}", "--v=1"],
        ),
        Component(
            "coredns",
            [b("coredns"), "-conf", str(STATE / "Corefile")],
        ),
        Component(
            "provisioner",
            [
                str(REPO / ".venv" / "bin" / "python"),
                str(HACK / "provisioner.py"),
                f"--kubeconfig={KUBECONFIG}",
                f"--volumes={STATE / 'volumes'}",
            ],
        ),
    ]


# --- readiness --------------------------------------------------------------------------------


def _admin_context() -> ssl.SSLContext:
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def api_get(path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{API_PORT}{path}", context=_admin_context(), timeout=timeout
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def wait_for(what: str, check: Callable[[], bool], timeout: float, component: Component | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if component is not None and component.pid() is None:
            tail = (STATE / "logs" / f"{component.name}.log").read_text()[-3000:]
            raise SystemExit(f"{component.name} exited while waiting for {what}:\n{tail}")
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} (logs in {STATE / 'logs'})")


def kubectl(*args: str, stdin: str | None = None) -> str:
    return run(BIN / "kubectl", f"--kubeconfig={KUBECONFIG}", *args, capture=True, input=stdin)


def kwok_config() -> None:
    """kwok's configuration: its stages, read from the kwok Go module in the module cache."""
    moddir = go_module_dir("kwok", "sigs.k8s.io/kwok")
    docs = [Path(moddir, stage).read_text().strip() for stage in KWOK_STAGES]
    (STATE / "kwok.yaml").write_text("\n---\n".join(docs) + "\n")


def go_module_dir(wrapper: str, module: str) -> Path:
    """Where a module of one of hack/gomod's wrappers lies in the module cache."""
    out = run("go", "list", "-m", "-f", "{{.Dir}}", module, capture=True, cwd=HACK / "gomod" / wrapper)
    return Path(out.strip())


# --- the real node ----------------------------------------------------------------------------


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A system command (ip, sysctl, iptables, mount): quiet; raises with its output on failure."""
    res = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(args)}\n{res.stdout}{res.stderr}")
    return res


def node_network() -> None:
    """The node's network, idempotently: the pod bridge with the node's address, forwarding, bridged
    traffic through iptables (kube-proxy's rules must see pod-to-Service packets on the bridge), a
    route for Service addresses onto the bridge (host clients reach them; an address nothing
    answers dies there instead of leaving the machine), and a blackhole for kwok's pod addresses
    (kube-proxy writes rules for Services whose endpoints are simulated pods)."""
    if os.geteuid() != 0:
        raise SystemExit("the local node needs root (network, mounts, cgroups)")
    if not Path("/proc/sys/net/bridge").exists():  # br_netfilter: built in on some kernels
        sh("modprobe", "br_netfilter")
    for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
        sh("sysctl", "-qw", f"{key}=1")
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    prefix = POD_CIDR.split("/")[1]
    if f"{NODE_IP}/{prefix}" not in sh("ip", "-o", "addr", "show", "dev", BRIDGE).stdout:
        sh("ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    sh("ip", "route", "replace", "blackhole", KWOK_POD_CIDR)
    # Pods talk to each other, to Services and to this machine, never past it: what a pod sends to
    # any other address is dropped instead of being forwarded out of the machine's interface.
    sh("iptables", "-N", EGRESS_CHAIN, check=False)
    sh("iptables", "-F", EGRESS_CHAIN)
    sh("iptables", "-A", EGRESS_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
    if sh("iptables", "-C", "FORWARD", "-j", EGRESS_CHAIN, check=False).returncode != 0:
        sh("iptables", "-I", "FORWARD", "1", "-j", EGRESS_CHAIN)


def node_network_down() -> None:
    sh("iptables", "-D", "FORWARD", "-j", EGRESS_CHAIN, check=False)
    sh("iptables", "-F", EGRESS_CHAIN, check=False)
    sh("iptables", "-X", EGRESS_CHAIN, check=False)
    sh("ip", "route", "del", SERVICE_CIDR, check=False)
    sh("ip", "route", "del", "blackhole", KWOK_POD_CIDR, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)
    if (BIN / "kube-proxy").exists():
        sh(str(BIN / "kube-proxy"), "--cleanup", check=False)
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        if ns.startswith("cni-"):
            sh("ip", "netns", "delete", ns.split()[0], check=False)
    shutil.rmtree("/var/lib/cni/networks/modelops-pods", ignore_errors=True)


def _write_json(path: Path, doc: object) -> None:
    """JSON is YAML too: every configuration file here is written as JSON."""
    _write_text(path, json.dumps(doc, indent=2) + "\n")


def registry_garbage_collect() -> None:
    """Delete the blobs of images no tag names any more, before the registry starts (it must not
    run meanwhile). Each build re-tags :dev, so without this every rebuild of the trainer leaves
    gigabytes behind in the machine's cache, shared by every clone."""
    if any(c.name == "registry" and c.pid() is not None for c in components()):
        return
    if not (CACHE / "registry" / "docker" / "registry" / "v2" / "repositories").is_dir():
        return  # nothing pushed yet (a fresh machine): nothing to collect, and the registry says so as an error
    result = subprocess.run(
        ["docker-registry", "garbage-collect", "--delete-untagged", str(STATE / "registry.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        log(f"registry garbage-collect failed (the cache keeps old blobs): {result.stderr.strip()[-300:]}")


def _write_text(path: Path, text: str) -> None:
    """Write a configuration file only when its content changes: kube-proxy exits when its
    configuration file is rewritten, even with the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def registry_config() -> None:
    """Debian's docker-registry on loopback; its blobs live in the cache, so images survive `down`."""
    _write_json(
        STATE / "registry.yaml",
        {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(CACHE / "registry")}, "delete": {"enabled": True}},
            "http": {"addr": REGISTRY},
        },
    )
    registry_garbage_collect()


def containerd_config(pause_image: str) -> None:
    """containerd's CRI plugin: runc through the v2 shim, overlayfs, cgroupfs (cgroup v1 here),
    CNI from Debian's plugins, and the local registry over plain HTTP. `restrict_oom_score_adj`:
    root here lacks CAP_SYS_RESOURCE, so runc cannot lower a process's OOM score; without it every
    sandbox fails ("can't get final child's PID from pipe")."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    certs = STATE / "containerd" / "certs.d"
    (certs / REGISTRY).mkdir(parents=True, exist_ok=True)
    (certs / REGISTRY / "hosts.toml").write_text(
        f'server = "http://{REGISTRY}"\n\n[host."http://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    toml = f"""version = 2
root = "{STATE / "containerd" / "root"}"
state = "{RUN_DIR / "containerd"}"
[grpc]
  address = "{CONTAINERD_SOCK}"
[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{STATE / "cni"}"
[{cri}.registry]
  config_path = "{certs}"
"""
    _write_text(STATE / "containerd" / "config.toml", toml)
    _write_json(
        STATE / "cni" / "10-modelops.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "modelops-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [{"subnet": POD_CIDR, "rangeStart": NODE_IP.rsplit(".", 1)[0] + ".2", "gateway": NODE_IP}]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
    )


def kubelet_config() -> None:
    """The kubelet: containerd's CRI, cgroupfs on cgroup v1 (still supported by 1.34 when
    `failCgroupV1` is false), webhook authentication and authorization of its API, CoreDNS on the
    node's address, and eviction thresholds low enough for a shared development disk."""
    pki = STATE / "pki"
    _write_json(
        STATE / "kubelet.yaml",
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(pki / "kubelet.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "registerWithTaints": [LOCAL_NODE_TAINT],
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            # The disk-pressure taint goes 30 s after the disk is freed (the default is 5 min).
            "evictionPressureTransitionPeriod": "30s",
            "maxPods": 110,
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
            "volumePluginDir": str(STATE / "kubelet" / "volume-plugins"),
        },
    )


def kube_proxy_config() -> None:
    _write_json(
        STATE / "kube-proxy.yaml",
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(STATE / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the machine's conntrack table size alone (the sysctl is not ours to set here).
            "conntrack": {"maxPerCore": 0, "min": 0},
        },
    )


def corefile() -> None:
    """CoreDNS on the node's address: cluster names from the API server, the rest to the host's
    resolver. The kubelet gives pods this address as their name server."""
    _write_text(
        STATE / "Corefile",
        f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18180
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {KUBECONFIG} modelops-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
    loop
}}
""",
    )


def pull_images() -> None:
    """Pull the project's images into the node's containerd before any pod needs them, as a real
    cluster's image pre-puller does: the trainer's gigabytes (a minute or two the first time) then
    do not count against a test's or a user's first wait. Already pulled: a second each."""
    started = time.monotonic()
    for name, ref in sorted(image_refs().items()):
        run(
            "ctr", f"--address={CONTAINERD_SOCK}", "--namespace=k8s.io", "images", "pull", "--plain-http", ref,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        log(f"image {name} on the node ({time.monotonic() - started:.0f}s)")


def unmount_under(root: Path) -> None:
    """Unmount everything mounted below `root` (containers' root filesystems, pods' volumes), the
    deepest first, so that the state directory can be removed."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if (m + "/").startswith(prefix)), key=len, reverse=True):
        sh("umount", "-l", target, check=False)


def stop_containers() -> None:
    """Stop every container of the node: containerd's shims outlive containerd itself."""
    res = sh("pgrep", "-f", f"containerd-shim-runc-v2 .*-address {CONTAINERD_SOCK}", check=False)
    for pid in res.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid), signal.SIGKILL)
    # The containers' processes outlive their shims: kill whatever is left in the pods' cgroups
    # (cgroupfs driver: /sys/fs/cgroup/<controller>/kubepods/...), then remove the empty groups.
    groups = sorted(Path("/sys/fs/cgroup").glob("*/kubepods*/**/"), key=lambda g: len(g.parts), reverse=True)
    for group in groups:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)
    for group in groups:
        with contextlib.suppress(OSError):
            group.rmdir()


def prometheus_config() -> None:
    """Prometheus discovers pods through the API server and scrapes those that ask for it.

    The convention (as in Prometheus' own example configuration): pod annotations
    `prometheus.io/scrape: "true"`, `prometheus.io/port`, and optionally `prometheus.io/path`.
    Only Running pods on nodes that really execute them (`local-*`) are scraped; kwok's simulated
    pods have nothing to scrape. Rule files in .cluster/prometheus-rules/ are loaded.
    """
    rules = STATE / "prometheus-rules"
    rules.mkdir(parents=True, exist_ok=True)
    ann = "__meta_kubernetes_pod_annotation_prometheus_io_"
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules / "*.yaml")],
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(KUBECONFIG)}],
                "relabel_configs": [
                    {"source_labels": [ann + "scrape"], "action": "keep", "regex": "true"},
                    {"source_labels": ["__meta_kubernetes_pod_node_name"], "action": "keep", "regex": "local-.*"},
                    {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep", "regex": "Running"},
                    {
                        "source_labels": [ann + "path"],
                        "action": "replace",
                        "target_label": "__metrics_path__",
                        "regex": "(.+)",
                    },
                    {
                        "source_labels": ["__address__", ann + "port"],
                        "action": "replace",
                        "regex": r"([^:]+)(?::\d+)?;(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }
    (STATE / "prometheus.yaml").write_text(json.dumps(config, indent=2) + "\n")


def training_operator_prerequisites() -> None:
    """What the training operator needs out of cluster: its namespace, the Secret its webhook
    certificate rotator fills, the certificate directory, the PyTorchJob CRD (from its module;
    applied server-side, it is too large for client-side apply), and a ValidatingWebhookConfiguration
    of the name the rotator waits for, with no rules: the operator's controllers start only once the
    rotator has injected its CA there, but the API server could not reach the webhook (its
    certificate names a Service DNS name), so it is never called. PyTorchJobs are therefore checked
    by the CRD's schema only on the local cluster."""
    kubectl(
        "apply",
        "--server-side",
        "--field-manager=modelops-cluster",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}},
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "type": "Opaque",
                        "metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"},
                    },
                    {
                        "apiVersion": "admissionregistration.k8s.io/v1",
                        "kind": "ValidatingWebhookConfiguration",
                        "metadata": {"name": "validator.training-operator.kubeflow.org"},
                        "webhooks": [
                            {
                                "name": "validator.pytorchjob.training-operator.kubeflow.org",
                                "clientConfig": {"url": "https://127.0.0.1:1/validate-kubeflow-org-v1-pytorchjob"},
                                "rules": [],
                                "failurePolicy": "Ignore",
                                "sideEffects": "None",
                                "admissionReviewVersions": ["v1"],
                            }
                        ],
                    },
                ],
            }
        ),
    )
    crd = go_module_dir("training-operator", "github.com/kubeflow/training-operator")
    kubectl(
        "apply",
        "--server-side",
        "--field-manager=modelops-cluster",
        "-f",
        str(crd / "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"),
    )
    WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)


def _aggregated_api(name: str, user: str, port: int, group: str, versions: dict[str, int]) -> list[dict[str, object]]:
    """What an API server of a host process behind the aggregation layer needs besides its own
    roles: the delegated authentication and authorization bindings for the user of its client
    certificate, a Service `kube-system/<name>` without a selector whose one EndpointSlice names
    the process's address on the node, and an APIService per version (`versions`: version ->
    versionPriority) that trusts its serving certificate through the cluster's CA (no
    `insecureSkipTLSVerify`)."""
    subject = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
    ca_bundle = base64.b64encode((STATE / "pki" / "ca.crt").read_bytes()).decode()
    rbac = "rbac.authorization.k8s.io/v1"
    items: list[dict[str, object]] = [
        {  # delegated authentication and authorization: TokenReviews and SubjectAccessReviews
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{name}:system:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [subject],
        },
        {  # the request-header CA and names, in the ConfigMap extension-apiserver-authentication
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": {"name": f"{name}-auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [subject],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port, "appProtocol": "https"}]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "modelops-cluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP", "appProtocol": "https"}],
        },
    ]
    for version, priority in versions.items():
        items.append(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": f"{version}.{group}"},
                "spec": {
                    "service": {"name": name, "namespace": "kube-system", "port": 443},
                    "group": group,
                    "version": version,
                    "caBundle": ca_bundle,
                    "groupPriorityMinimum": 100,
                    "versionPriority": priority,
                },
            }
        )
    return items


def metrics_server_manifest() -> str:
    """metrics-server's registration and RBAC, as its own manifests (manifests/base in
    sigs.k8s.io/metrics-server) have them, for a process outside the cluster: its roles are bound
    to the user of its client certificate instead of a ServiceAccount (_aggregated_api)."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": METRICS_SERVER_USER}
    rbac = "rbac.authorization.k8s.io/v1"
    items: list[dict[str, object]] = [
        {
            # Lets the users of the view, edit and admin roles read pods' and nodes' usage.
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {f"rbac.authorization.k8s.io/aggregate-to-{r}": "true" for r in ("view", "edit", "admin")},
            },
            "rules": [
                {"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:metrics-server"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:metrics-server",
            },
            "subjects": [user],
        },
        *_aggregated_api(
            "metrics-server", METRICS_SERVER_USER, METRICS_SERVER_PORT, "metrics.k8s.io", {"v1beta1": 100}
        ),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def custom_metrics_adapter_manifest() -> str:
    """The custom metrics adapter's registration and RBAC, as the library's own deployment of its
    test adapter (test-adapter-deploy/ in sigs.k8s.io/custom-metrics-apiserver) has them, for a
    process outside the cluster (_aggregated_api): a role to list pods, bound to the user of its
    client certificate, and both API versions, v1beta2 preferred. The HPA controller may read
    `custom.metrics.k8s.io` by Kubernetes' bootstrap policy
    (system:controller:horizontal-pod-autoscaler), so no role is added for it."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CUSTOM_METRICS_USER}
    rbac = "rbac.authorization.k8s.io/v1"
    items: list[dict[str, object]] = [
        {  # the described objects: the pods whose names are looked up by label selector
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {"name": CUSTOM_METRICS_USER},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CUSTOM_METRICS_USER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CUSTOM_METRICS_USER},
            "subjects": [user],
        },
        *_aggregated_api(
            "custom-metrics-adapter",
            CUSTOM_METRICS_USER,
            CUSTOM_METRICS_PORT,
            "custom.metrics.k8s.io",
            {a.split(".", 1)[0]: 200 - 100 * i for i, a in enumerate(CUSTOM_METRICS_APISERVICES)},
        ),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _condition_true(obj: dict[str, Any], type_: str) -> bool:
    """Whether the object's status has the condition `type_` with status True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def _api_condition_true(path: str, type_: str) -> bool:
    """Whether the object at the API path exists and has the condition `type_` True."""
    code, body = api_get(path)
    return code == 200 and _condition_true(json.loads(body), type_)


def apiservice_available(name: str = METRICS_APISERVICE) -> bool:
    """Whether the aggregation layer reaches the APIService's server (its Available condition)."""
    return _api_condition_true(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}", "Available")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def gateway_api_crds() -> None:
    """The Gateway API's standard-channel CRDs (HTTPRoute, Gateway, GatewayClass, GRPCRoute,
    ReferenceGrant), from the sigs.k8s.io/gateway-api module of hack/gomod/gateway-api: a
    ModelDeployment's `trafficRouting.httpRoute` needs the HTTPRoute kind. Downloaded into the
    module cache when not there yet (a wrapper with nothing to build)."""
    wrapper = HACK / "gomod" / "gateway-api"
    run("go", "mod", "download", "sigs.k8s.io/gateway-api", cwd=wrapper)
    crds = go_module_dir("gateway-api", "sigs.k8s.io/gateway-api") / "config" / "crd" / "standard"
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", str(crds))


def gateway_manifest() -> str:
    """Traefik's RBAC (its Helm chart's ClusterRole for the Gateway provider, bound to the user of
    its client certificate), the GatewayClass and the Gateway it serves."""
    rbac = "rbac.authorization.k8s.io/v1"
    gw = "gateway.networking.k8s.io"
    read = ["get", "list", "watch"]
    items: list[dict[str, object]] = [
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {"name": "modelops:gateway"},
            "rules": [
                {"apiGroups": [""], "resources": ["namespaces", "services", "secrets", "configmaps"], "verbs": read},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
                {
                    "apiGroups": [gw],
                    "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants"],
                    "verbs": read,
                },
                {
                    "apiGroups": [gw],
                    "resources": [f"{r}/status" for r in ("gatewayclasses", "gateways", "httproutes", "grpcroutes")],
                    "verbs": ["update"],
                },
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "modelops:gateway"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelops:gateway"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": GATEWAY_USER}],
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {
            "apiVersion": f"{gw}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": "traefik.io/gateway-controller"},
        },
        {
            "apiVersion": f"{gw}/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": GATEWAY_PORT,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def start_gateway(comp: Component) -> None:
    """The Gateway API's CRDs, Traefik's RBAC, GatewayClass and Gateway; Traefik, until it reports
    the Gateway programmed."""
    gateway_api_crds()
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=gateway_manifest())
    comp.start()
    wait_for(f"the Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} Programmed", gateway_programmed, 60, comp)


def gateway_programmed() -> bool:
    """Whether Traefik reports the Gateway `Programmed` (its listener configured)."""
    path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{GATEWAY_NAMESPACE}/gateways/{GATEWAY_NAME}"
    return _api_condition_true(path, "Programmed")


def _mount_webhook_cert(
    namespace: str = "kubeflow", secret: str = "training-operator-webhook-cert", into: Path = WEBHOOK_CERT_DIR
) -> bool:
    """Do the kubelet's part: once a certificate rotator has filled its Secret, put the files where
    its controller reads them (the training operator and Kueue start their controllers only then)."""
    code, body = api_get(f"/api/v1/namespaces/{namespace}/secrets/{secret}")
    data = json.loads(body).get("data") or {} if code == 200 else {}
    if not all(k in data for k in ("ca.crt", "tls.crt", "tls.key")):
        return False
    into.mkdir(parents=True, exist_ok=True)
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (into / key).write_bytes(base64.b64decode(data[key]))
    return True


# --- Kueue ------------------------------------------------------------------------------------


def kueue_config() -> dict[str, object]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a process outside the cluster:
    webhooks on the node's address (where the Service's EndpointSlice sends the API server), its
    own certificate management (the rotator fills the Secret; `_mount_webhook_cert` copies it to
    `certDir`), no leader election, PyTorchJobs only, jobs without a queue name left alone, and no
    waitForPodsReady (a preempted trial is requeued at once, resuming from its checkpoint)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{KUEUE_PORTS + 2}"},
        "metrics": {"bindAddress": f"127.0.0.1:{KUEUE_PORTS + 1}"},
        "webhook": {"host": NODE_IP, "port": KUEUE_PORTS, "certDir": str(STATE / "kueue" / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": "kueue-webhook-service",
            "webhookSecretName": "kueue-webhook-server-cert",
        },
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(KUEUE_FRAMEWORKS)},
    }


def kueue_manifest() -> str:
    """Kueue's CRDs (with their conversion webhook) and webhook configurations, as its kustomization
    of config/components/{crd,webhook} names them (prefix `kueue-`, namespace kueue-system), less
    the webhooks of frameworks not integrated here (pods, Deployments, batch Jobs, ...: nothing else
    goes through Kueue); its namespace; the Secret its rotator fills; and, for its webhook Service
    (which has no selector), one EndpointSlice naming the process's address on the node."""
    components = go_module_dir("kueue", "sigs.k8s.io/kueue") / "config" / "components"
    root = STATE / "kueue" / "kustomize"
    rel = os.path.relpath(components, root)  # kustomize takes relative paths only
    service_ports = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": KUEUE_PORTS}]
    patches: list[dict[str, object]] = [
        {
            "target": {"kind": "Service", "name": "webhook-service"},
            "patch": json.dumps([{"op": "replace", "path": "/spec/ports", "value": service_ports}]),
        }
    ]
    built = _kustomize(root, [f"{rel}/crd", f"{rel}/webhook"], patches)
    webhooks = re.findall(r"^  name: ([a-z]+)\.kb\.io$", built, re.MULTILINE)
    for kind in ("Mutating", "Validating"):
        drop = [w for w in webhooks if w[0] == kind[0].lower() and w[1:] not in KUEUE_WEBHOOK_KINDS]
        patch = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": f"{kind}WebhookConfiguration",
            "metadata": {"name": "any"},  # the target names it
            "webhooks": [{"name": f"{w}.kb.io", "$patch": "delete"} for w in drop],
        }
        patches.append({"target": {"kind": f"{kind}WebhookConfiguration"}, "patch": json.dumps(patch)})
    built = _kustomize(root, [f"{rel}/crd", f"{rel}/webhook"], patches)
    ours = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "kueue-webhook-server-cert", "namespace": KUEUE_NAMESPACE},
        },
        *_webhook_host(KUEUE_NAMESPACE, "kueue-webhook-service", "https", KUEUE_PORTS),
    ]
    return "\n---\n".join([*(json.dumps(doc) for doc in ours), built])


def _kustomize(
    root: Path,
    resources: list[str],
    patches: list[dict[str, object]],
    namespace: str = KUEUE_NAMESPACE,
    prefix: str = "kueue-",
) -> str:
    """`kubectl kustomize` of a kustomization in `root` (JSON is YAML): by default namespace
    kueue-system, prefix `kueue-`, as Kueue's config/default has them."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        **({"namePrefix": prefix} if prefix else {}),
        "resources": resources,
        "patches": patches,
    }
    _write_json(root / "kustomization.yaml", kustomization)
    return run(BIN / "kubectl", "kustomize", str(root), capture=True)


#: ResourceFlavors: one per node pool (the real node, kwok's CPU and GPU nodes), by its label.
KUEUE_FLAVORS = {
    "local": {"nodeLabels": {"modelops.dev/pool": "local"}, "nodeTaints": [LOCAL_NODE_TAINT]},
    "kwok-cpu": {"nodeLabels": {"modelops.dev/pool": "cpu"}},
    "kwok-gpu": {
        "nodeLabels": {"modelops.dev/pool": "gpu"},
        "nodeTaints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    },
}


def kueue_queues_manifest() -> str:
    """The queues: a ResourceFlavor per node pool; the ClusterQueue `modelops` with CPU, memory and
    GPU quota per flavor (the real node first, so that a trial that fits runs for real), preempting
    lower-priority workloads within itself; WorkloadPriorityClasses `low` and `high`; and the
    LocalQueue `modelops` in the default namespace (tests make their own in theirs)."""
    quota = {
        "local": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "0"},
        "kwok-cpu": {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "0"},
        "kwok-gpu": {"cpu": "128", "memory": "1Ti", "nvidia.com/gpu": "16"},
    }
    api = "kueue.x-k8s.io/v1beta2"
    items: list[dict[str, object]] = [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}
        for name, spec in KUEUE_FLAVORS.items()
    ]
    items.append(
        {
            "apiVersion": api,
            "kind": "ClusterQueue",
            "metadata": {"name": "modelops"},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [{"name": r, "nominalQuota": q} for r, q in quota[flavor].items()],
                            }
                            for flavor in KUEUE_FLAVORS
                        ],
                    }
                ],
            },
        }
    )
    for name, value in (("low", 100), ("high", 1000)):
        items.append(
            {
                "apiVersion": api,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
                "description": f"{name} priority for trials (modelops' local cluster)",
            }
        )
    items.append(
        {
            "apiVersion": api,
            "kind": "LocalQueue",
            "metadata": {"name": "modelops", "namespace": "default"},
            "spec": {"clusterQueue": "modelops"},
        }
    )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def start_kueue(comp: Component) -> None:
    """Kueue's objects, its process, its certificate, then the queues (its webhooks check them)."""
    _write_json(STATE / "kueue" / "config.yaml", kueue_config())  # JSON is YAML
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=kueue_manifest())
    comp.start()
    certs = STATE / "kueue" / "certs"
    wait_for(
        "Kueue's webhook certificate",
        lambda: _mount_webhook_cert(KUEUE_NAMESPACE, "kueue-webhook-server-cert", certs),
        60,
        comp,
    )
    wait_for("Kueue ready", lambda: _http_ok(f"http://127.0.0.1:{KUEUE_PORTS + 2}/readyz"), 120, comp)
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=kueue_queues_manifest())


# --- JobSet and Kubeflow Trainer v2 ----------------------------------------------------------


def _webhook_host(namespace: str, service: str, port_name: str, port: int) -> list[dict[str, object]]:
    """A selector-less webhook Service's EndpointSlice: the process's webhook server on the node's
    address (the API server dials the endpoint, by the port named like the Service's)."""
    return [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-host",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "modelops-cluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        }
    ]


def jobset_config() -> dict[str, object]:
    """JobSet's Configuration (config.jobset.x-k8s.io/v1alpha1) for a process outside the cluster:
    webhooks on the node's address, its own certificate management (the rotator fills the Secret;
    `_mount_webhook_cert` copies it to `certDir`), no leader election."""
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{JOBSET_PORTS + 2}"},
        "metrics": {"bindAddress": f"127.0.0.1:{JOBSET_PORTS + 1}"},
        "webhook": {"host": NODE_IP, "port": JOBSET_PORTS, "certDir": str(STATE / "jobset" / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": "jobset-webhook-service",
            "webhookSecretName": "jobset-webhook-server-cert",
        },
    }


def jobset_manifest() -> str:
    """JobSet's CRD, webhook configurations and the Secret its rotator fills, as its config/default
    names them (config/components/{crd,webhook,internalcert}, prefix `jobset-`, namespace
    jobset-system); its namespace; and, for its webhook Service (made selector-less), one
    EndpointSlice naming the process's address on the node. The CRD's conversion webhook is
    dropped: JobSet serves one version, and its rotator injects its CA into the webhook
    configurations only. All its webhooks stay (the pods' ones see only pods of a JobSet)."""
    components = go_module_dir("jobset", "sigs.k8s.io/jobset") / "config" / "components"
    root = STATE / "jobset" / "kustomize"
    rel = os.path.relpath(components, root)  # kustomize takes relative paths only
    service_ports = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": JOBSET_PORTS}]
    patches: list[dict[str, object]] = [
        {
            "target": {"kind": "Service", "name": "webhook-service"},
            "patch": json.dumps(
                [
                    {"op": "replace", "path": "/spec/ports", "value": service_ports},
                    {"op": "remove", "path": "/spec/selector"},
                ]
            ),
        },
        {
            "target": {"kind": "CustomResourceDefinition"},
            "patch": json.dumps(
                [
                    {"op": "remove", "path": "/spec/conversion"},
                    {"op": "remove", "path": "/metadata/annotations/cert-manager.io~1inject-ca-from"},
                ]
            ),
        },
    ]
    resources = [f"{rel}/crd", f"{rel}/webhook", f"{rel}/internalcert"]
    built = _kustomize(root, resources, patches, JOBSET_NAMESPACE, "jobset-")
    ours = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": JOBSET_NAMESPACE}},
        *_webhook_host(JOBSET_NAMESPACE, "jobset-webhook-service", "https", JOBSET_PORTS),
    ]
    return "\n---\n".join([*(json.dumps(doc) for doc in ours), built])


#: Trainer v2's webhook Service, as its manifests/base/manager names it (and its flag's default).
TRAINER_SERVICE = "kubeflow-trainer-controller-manager"
TRAINER_SECRET = "kubeflow-trainer-webhook-cert"


def trainer_manifest() -> str:
    """Trainer v2's CRDs and its ValidatingWebhookConfiguration `validator.trainer.kubeflow.org`,
    from manifests/base/{crds,webhook} as its overlays/manager kustomizes them (namespace
    kubeflow-system; the webhook's Service renamed by base/webhook's own patch); its namespace, the
    Secret its rotator fills, its webhook Service without a selector (port 443 named as in
    base/manager) and the EndpointSlice naming the process's port on the node. Not its stock
    runtimes (manifests/base/runtimes): their images cannot be pulled here."""
    manifests = go_module_dir("trainer", "github.com/kubeflow/trainer/v2") / "manifests" / "base"
    root = STATE / "trainer" / "kustomize"
    rel = os.path.relpath(manifests, root)
    built = _kustomize(root, [f"{rel}/crds", f"{rel}/webhook"], [], TRAINER_NAMESPACE, "")
    ours = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAINER_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": TRAINER_SECRET, "namespace": TRAINER_NAMESPACE},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": TRAINER_SERVICE, "namespace": TRAINER_NAMESPACE},
            "spec": {
                "ports": [{"name": "webhook-server", "port": 443, "protocol": "TCP", "targetPort": TRAINER_PORTS}]
            },
        },
        *_webhook_host(TRAINER_NAMESPACE, TRAINER_SERVICE, "webhook-server", TRAINER_PORTS),
    ]
    return "\n---\n".join([*(json.dumps(doc) for doc in ours), built])


def trainer_cert_dir() -> Path:
    """Where Trainer's webhook server reads its certificate: controller-runtime's default,
    $TMPDIR/k8s-webhook-server/serving-certs (pkg/webhook/server.go), with the process's TMPDIR."""
    env = {c.name: c.env for c in components()}["trainer"] or {}
    return Path(env["TMPDIR"]) / "k8s-webhook-server" / "serving-certs"


def _placeholder_cert(into: Path) -> None:
    """A throwaway self-signed certificate where a webhook server reads its own, so that it starts
    before `_mount_webhook_cert` puts its rotator's there (it reloads them within 10 s): JobSet's
    and Trainer's rotators find the training operator's tls.crt in their fixed directory
    (WEBHOOK_CERT_DIR) and do not wait for ours, and a webhook server with no certificate exits."""
    into.mkdir(parents=True, exist_ok=True)
    if (into / "tls.crt").exists():
        return
    run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=placeholder",
        "-keyout", into / "tls.key", "-out", into / "tls.crt",
    )  # fmt: skip


def _serves_secret_cert(namespace: str, secret: str, service: str, port: int) -> bool:
    """The webhook server on the node's address presents the certificate of its rotator's Secret,
    as the API server checks it: signed by the Secret's CA, for <service>.<namespace>.svc."""
    code, body = api_get(f"/api/v1/namespaces/{namespace}/secrets/{secret}")
    data = json.loads(body).get("data") or {} if code == 200 else {}
    if "ca.crt" not in data:
        return False
    ctx = ssl.create_default_context(cadata=base64.b64decode(data["ca.crt"]).decode())
    try:
        with (
            socket.create_connection((NODE_IP, port), timeout=2) as sock,
            ctx.wrap_socket(sock, server_hostname=f"{service}.{namespace}.svc"),
        ):
            return True
    except OSError:  # ssl.SSLError is one
        return False


def _apply_with_crds(manifest: str) -> None:
    """Apply a manifest with CRDs and wait until every CRD is Established: Trainer exits when a
    kind it indexes is not served yet."""
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=manifest)
    wait_for("the CRDs Established", _crds_established, 60)


def _crds_established() -> bool:
    """Every CRD is Established (`kubectl wait` fails on one that has no conditions yet)."""
    code, body = api_get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    if code != 200:
        return False
    return all(_condition_true(crd, "Established") for crd in json.loads(body)["items"])


def _start_webhook_process(
    comp: Component, what: str, namespace: str, secret: str, service: str, port: int, certs: Path
) -> None:
    """Start a controller whose certificate rotator fills `secret`, do the kubelet's part (its
    certificate into `certs`), and wait until it is ready and its webhooks serve that certificate."""
    if not (WEBHOOK_CERT_DIR / "tls.crt").exists():  # what the rotator waits for (see _placeholder_cert)
        raise SystemExit(f"{what} starts after the training operator's webhook certificate is in {WEBHOOK_CERT_DIR}")
    _placeholder_cert(certs)
    comp.start()
    wait_for(f"{what}'s webhook certificate", lambda: _mount_webhook_cert(namespace, secret, certs), 60, comp)
    wait_for(f"{what} ready", lambda: _http_ok(f"http://127.0.0.1:{port + 2}/readyz"), 120, comp)
    wait_for(
        f"{what}'s webhooks serving its certificate",
        lambda: _serves_secret_cert(namespace, secret, service, port),
        30,
        comp,
    )


def start_jobset(comp: Component) -> None:
    """JobSet's objects and process."""
    _write_json(STATE / "jobset" / "config.yaml", jobset_config())  # JSON is YAML
    _apply_with_crds(jobset_manifest())
    certs = STATE / "jobset" / "certs"
    _start_webhook_process(
        comp, "JobSet", JOBSET_NAMESPACE, "jobset-webhook-server-cert", "jobset-webhook-service", JOBSET_PORTS, certs
    )


def start_trainer(comp: Component) -> None:
    """Trainer v2's objects and process."""
    _apply_with_crds(trainer_manifest())
    _start_webhook_process(
        comp, "Trainer", TRAINER_NAMESPACE, TRAINER_SECRET, TRAINER_SERVICE, TRAINER_PORTS, trainer_cert_dir()
    )


def start_job_controllers(comps: dict[str, Component]) -> None:
    """JobSet, then Trainer v2 (it watches JobSets; a TrainJob runs as one), then Kueue (after
    them, so that it finds their kinds)."""
    start_jobset(comps["jobset"])
    start_trainer(comps["trainer"])
    start_kueue(comps["kueue"])


def nodes_manifest() -> str:
    """Simulated nodes: two CPU nodes and two GPU nodes (8 GPUs each, tainted like a GPU pool)."""
    items = []
    for i in range(2):
        items.append(
            _node(f"kwok-cpu-{i}", {"cpu": "32", "memory": "128Gi", "pods": "110"}, {"modelops.dev/pool": "cpu"}, [])
        )
    for i in range(2):
        items.append(
            _node(
                f"kwok-gpu-{i}",
                {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
                {"modelops.dev/pool": "gpu", "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H200"},
                [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            )
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _node(
    name: str, capacity: dict[str, str], labels: dict[str, str], taints: list[dict[str, str]]
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


# --- commands ---------------------------------------------------------------------------------


def up(_: argparse.Namespace) -> int:
    start = time.monotonic()
    need = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "kube-proxy",
        "coredns",
        "kwok",
        "training-operator",
        "prometheus",
        "metrics-server",
        "custom-metrics-adapter",
        "kueue",
        "jobset",
        "trainer-controller-manager",
        "traefik",
    ]
    if not all((BIN / n).exists() for n in need):
        run(HACK / "build-binaries.sh", stdout=None, stderr=None)
    if not (REPO / ".venv" / "bin" / "python").exists():
        raise SystemExit("the cluster needs the project's virtualenv: run hack/setup.sh first")
    STATE.mkdir(parents=True, exist_ok=True)
    node_network()
    make_pki()
    write_kubeconfig(KUBECONFIG, "admin")
    for user in (
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "node",
        "kube-proxy",
        "metrics-server",
        "custom-metrics-adapter",
        "gateway",
    ):
        write_kubeconfig(STATE / f"{user}.kubeconfig", user)
    if not (STATE / "kwok.yaml").exists():
        kwok_config()
    comps = {c.name: c for c in components()}
    _check_before_start(comps["kube-apiserver"])
    comps["etcd"].start()
    comps["kube-apiserver"].start()
    registry_config()
    comps["registry"].start()
    wait_for("the API server's /readyz", lambda: api_get("/readyz")[0] == 200, 120, comps["kube-apiserver"])
    for name in ("kube-controller-manager", "kube-scheduler", "kwok", "provisioner"):
        comps[name].start()
    wait_for("the registry", lambda: _http_ok(f"http://{REGISTRY}/v2/"), 30, comps["registry"])
    # The project's images, from its Dockerfiles (layers cached: seconds when nothing changed).
    run(sys.executable, HACK / "images.py", "build", stdout=subprocess.DEVNULL, stderr=None)
    comps = {c.name: c for c in components()}  # now with the images' references
    containerd_config(image_refs()["pause"])
    kubelet_config()
    kube_proxy_config()
    corefile()
    comps["containerd"].start()
    wait_for("containerd's socket", CONTAINERD_SOCK.exists, 30, comps["containerd"])
    pull_images()
    for name in ("kube-proxy", "coredns", "kubelet"):
        comps[name].start()
    wait_for("CoreDNS ready", lambda: _http_ok("http://127.0.0.1:18181/ready"), 60, comps["coredns"])
    wait_for("kube-proxy healthy", lambda: _http_ok("http://127.0.0.1:10256/healthz"), 60, comps["kube-proxy"])
    training_operator_prerequisites()
    start_gateway(comps["gateway"])
    comps["training-operator"].start()
    wait_for("the training operator's webhook certificate", _mount_webhook_cert, 60, comps["training-operator"])
    prometheus_config()
    comps["prometheus"].start()
    for name, manifest in (
        ("metrics-server", metrics_server_manifest),
        ("custom-metrics-adapter", custom_metrics_adapter_manifest),
    ):
        kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=manifest())
        comps[name].start()
    kubectl("apply", "--server-side", "--field-manager=modelops-cluster", "-f", "-", stdin=nodes_manifest())
    wait_for(
        "the default ServiceAccount (controller-manager up)",
        lambda: api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        120,
        comps["kube-controller-manager"],
    )
    wait_for("kwok nodes Ready", _nodes_ready, 120, comps["kwok"])
    start_job_controllers(comps)
    wait_for(
        f"the node {NODE_NAME} Ready",
        lambda: _nodes_ready() and api_get(f"/api/v1/nodes/{NODE_NAME}")[0] == 200,
        120,
        comps["kubelet"],
    )
    _wait_for_metrics_apis(comps)
    log(f"cluster up in {time.monotonic() - start:.1f}s; kubeconfig: {KUBECONFIG}")
    print(f"export KUBECONFIG={KUBECONFIG}")
    return 0


def _wait_for_metrics_apis(comps: dict[str, Component]) -> None:
    """The API server reaches metrics-server (discovery of metrics.k8s.io answers; the first usage
    figures follow one or two scrapes, 15 s each, after a pod starts) and the custom metrics
    adapter (the pods' values follow from Prometheus' scrapes, 5 s, once a pod serves)."""
    wait_for(f"the APIService {METRICS_APISERVICE} Available", apiservice_available, 120, comps["metrics-server"])
    for apiservice in CUSTOM_METRICS_APISERVICES:
        wait_for(
            f"the APIService {apiservice} Available",
            functools.partial(apiservice_available, apiservice),
            120,
            comps["custom-metrics-adapter"],
        )


#: Free disk below which `up` warns: the node's unpacked images, the volumes and the test pods'
#: writes take about this much (the trainer image alone is 6 GB).
MIN_FREE_GIB = 15


def _check_before_start(apiserver: Component) -> None:
    """A running API server must have the flags this script gives it now; a stopped one must find
    its ports free. Little free disk is said at once (the kubelet would later taint the node
    `disk-pressure`, and pods would stay Pending with a scheduling message that hides why)."""
    free = shutil.disk_usage(STATE).free / 2**30
    if free < MIN_FREE_GIB:
        log(
            f"warning: {free:.1f} GiB free on the disk of {STATE} (about {MIN_FREE_GIB} GiB needed): near a full "
            "disk the kubelet taints the node with node.kubernetes.io/disk-pressure and new pods stay Pending"
        )
    pid = apiserver.pid()
    if pid is not None and not any(a.startswith("--proxy-client-cert-file=") for a in _cmdline(pid)):
        raise SystemExit(
            "the running API server was started without the aggregation layer that metrics-server needs "
            "(a cluster from before metrics-server was added): run `hack/cluster.py down`, then `up`"
        )
    if pid is None:
        for port in (ETCD_PORT, API_PORT, REGISTRY_PORT):
            if _port_in_use(port):
                raise SystemExit(
                    f"port {port} is already in use (another local cluster?): stop it, or choose other ports "
                    "with MODELOPS_API_PORT / MODELOPS_ETCD_PORT / MODELOPS_REGISTRY_PORT"
                )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _nodes_ready() -> bool:
    code, body = api_get("/api/v1/nodes")
    if code != 200:
        return False
    nodes = json.loads(body)["items"]
    return len(nodes) > 0 and all(_condition_true(n, "Ready") for n in nodes)


def start_operator(_: argparse.Namespace) -> int:
    if not (REPO / ".venv" / "bin" / "modelops-operator").exists():
        raise SystemExit("no .venv with the operator: run hack/setup.sh first")
    comp = operator_component()
    comp.start()
    port = (comp.env or {})["MODELOPS_HEALTH_PORT"]

    wait_for("the operator's /healthz", lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 60, comp)
    log(f"operator running; log: {STATE / 'logs' / (comp.name + '.log')}")
    return 0


def down(_: argparse.Namespace) -> int:
    for comp in [operator_component(), *reversed(components())]:
        comp.stop()
    stop_containers()
    for root in (STATE, RUN_DIR):
        if root.exists():
            unmount_under(root)
    node_network_down()
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    if STATE.exists():
        shutil.rmtree(STATE)
        log(f"removed {STATE}")
    return 0


def status(_: argparse.Namespace) -> int:
    ok = True
    for comp in components():
        pid = comp.pid()
        ok &= pid is not None
        print(f"{comp.name:26} {'running, pid ' + str(pid) if pid else 'stopped'}")
    operator = operator_component().pid()
    print(f"{'modelops-operator':26} {'running, pid ' + str(operator) if operator else 'not started'}")
    code, _body = api_get("/readyz") if (STATE / "pki").exists() else (0, "")
    print(f"{'api /readyz':26} {code or 'unreachable'}")
    if code == 200:
        for apiservice in (METRICS_APISERVICE, *CUSTOM_METRICS_APISERVICES):
            print(f"{apiservice:30} {'Available' if apiservice_available(apiservice) else 'not available'}")
    # The webhook-serving controllers: ready once their certificates are in place and served.
    for name, port in (("kueue", KUEUE_PORTS), ("jobset", JOBSET_PORTS), ("trainer", TRAINER_PORTS)):
        ready = _http_ok(f"http://127.0.0.1:{port + 2}/readyz")
        print(f"{name + ' /readyz':26} {'ready' if ready else 'not ready'}")
    ping = _http_ok(f"http://127.0.0.1:{GATEWAY_PORT + 1}/ping")
    print(f"{'gateway /ping':26} {'ready' if ping else 'not ready'}")
    return 0 if ok and code == 200 else 1


def env(_: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={KUBECONFIG}")
    print(f'export PATH="{BIN}:$PATH"')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("up", up, "start the cluster (building what is missing)"),
        ("down", down, "stop the cluster and delete its state"),
        ("status", status, "show the components and the API server's health"),
        ("env", env, "print shell exports for KUBECONFIG and PATH"),
        ("operator", start_operator, "start the modelops operator (from .venv) in the background"),
    ):
        sub.add_parser(name, help=help_).set_defaults(fn=fn)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
