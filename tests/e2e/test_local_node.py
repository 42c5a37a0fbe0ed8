"""The real node (`local-0`: kubelet, containerd, runc, CNI bridge, kube-proxy, CoreDNS): the
project's images run as containers under Pod Security's restricted profile, with the Kubernetes
semantics the product relies on — Jobs, restarts, probes, endpoints, Service names, volumes,
limits, logs — plus Prometheus scraping them and the Kubeflow training operator running a real
two-pod PyTorchJob. The images come from the local registry by digest, which containerd's own view
(`ctr`) confirms."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import (
    CONTAINERD_SOCK,
    PROMETHEUS,
    REPO,
    STATE,
    VOLUMES,
    apply,
    endpoint_addresses,
    get,
    images,
    kubectl,
    wait_until,
)
from tests.support.workloads import job, job_condition, pod_template

pytestmark = pytest.mark.localnode


def pod(name: str, command: list[str], restart: str, **container: Any) -> dict[str, Any]:
    template = pod_template(name, command, restart=restart, **container)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template["metadata"]},
        "spec": template["spec"],
    }


def job_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("-n", namespace, "get", "pods", "-l", f"job-name={name}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def processes_with(token: str) -> list[int]:
    """PIDs on this machine whose command line contains `token`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if token in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def prometheus(query: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        return list(json.load(r)["data"]["result"])


def test_a_job_writes_a_file_and_reports_through_its_termination_message(cluster, namespace):
    script = (
        "import os, socket, json\n"
        "open('/scratch/out.txt', 'w').write('written by ' + os.environ['POD_NAME'])\n"
        "msg = {'host': socket.gethostname(), 'ip': os.environ['MY_IP'], 'secret': os.environ['TOKEN'],\n"
        "       'file': open('/scratch/out.txt').read(), 'config': open('/etc/app/greeting').read()}\n"
        "open('/dev/termination-log', 'w').write(json.dumps(msg))\n"
    )
    apply(
        namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": {"greeting": "hello"}},
        job(
            "writer",
            script,
            env=[
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            ],
            volumes=[{"name": "work", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "app"}}],
            volumeMounts=[{"name": "work", "mountPath": "/scratch"}, {"name": "cfg", "mountPath": "/etc/app"}],
        ),
    )
    assert wait_until("the Job to complete", lambda: job_condition(namespace, "writer"), timeout=90) == "Complete"
    pod = job_pods(namespace, "writer")[0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    message = json.loads(terminated["message"])
    assert message == {
        "host": pod["metadata"]["name"],
        "ip": pod["status"]["podIP"],
        "secret": "s3cr3t",
        "file": f"written by {pod['metadata']['name']}",
        "config": "hello",
    }
    assert pod["status"]["podIP"].startswith("10.250.")
    assert not Path("/scratch/out.txt").exists()  # the volume was mounted in the pod's namespace only


def test_a_crashing_container_restarts_per_policy_and_its_job_fails_after_backoff(cluster, namespace):
    crash = "import sys; print('about to fail', flush=True); sys.exit(3)"
    apply(
        namespace,
        pod(
            "crasher",
            ["python", "-c", crash],
            restart="OnFailure",
            terminationMessagePolicy="FallbackToLogsOnError",
        ),
    )

    def restarted_twice() -> dict[str, Any] | None:
        status = get(namespace, "pod", "crasher")["status"].get("containerStatuses", [{}])[0]
        return status if status.get("restartCount", 0) >= 2 else None

    status = wait_until("two restarts", restarted_twice, timeout=90)
    last = status["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"
    assert "about to fail" in last["message"]  # FallbackToLogsOnError
    assert get(namespace, "pod", "crasher")["status"]["phase"] == "Running"  # still being restarted

    apply(namespace, job("doomed", crash, backoff=1))
    assert wait_until("the Job to fail", lambda: job_condition(namespace, "doomed"), timeout=120) == "Failed"
    reasons = [c.get("reason") for c in get(namespace, "job", "doomed")["status"]["conditions"]]
    assert "BackoffLimitExceeded" in reasons


def test_a_deployment_serves_through_its_service_and_prometheus_scrapes_it(cluster, namespace):
    token = f"modelops-test-{uuid.uuid4().hex[:8]}"
    server = (
        "import socket, http.server, threading, prometheus_client\n"
        "prometheus_client.start_http_server(9100)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = socket.gethostname().encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "    def log_message(self, *a): pass\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
    )
    template = pod_template(
        "web",
        ["python", "-c", server, token],
        restart="Always",
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 2},
    )
    template["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "9100"}
    apply(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
        {  # selects no pod: its EndpointSlice has no endpoints, which must not hide the others
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody"},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"name": "http", "port": 80}]},
        },
    )
    wait_until(
        "3 available replicas",
        lambda: get(namespace, "deployment", "web")["status"].get("availableReplicas") == 3,
        timeout=90,
    )

    addresses = wait_until(
        "3 ready endpoints", lambda: len(found := endpoint_addresses(namespace, "web")) == 3 and found
    )
    for address in addresses:  # every pod answers on its own IP, from the host too
        with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as r:
            assert r.read().decode().startswith("web-")

    # The Service name resolves inside pods, and its traffic is spread over the replicas.
    # Requests until all three replicas answered (the node's Service proxy follows endpoint changes
    # within a second or two; a loaded machine may take longer), at most 30 s.
    client = (
        "import urllib.request, json, time\n"
        "seen, end = set(), time.time() + 30\n"
        "while len(seen) < 3 and time.time() < end:\n"
        "    seen.add(urllib.request.urlopen('http://web/').read().decode()); time.sleep(0.05)\n"
        "open('/dev/termination-log', 'w').write(json.dumps(sorted(seen)))\n"
    )
    apply(namespace, job("client", client))
    outcome = wait_until("the client", lambda: job_condition(namespace, "client"), timeout=90)
    assert outcome == "Complete", kubectl("-n", namespace, "logs", "job/client", check=False).stdout
    seen = json.loads(
        job_pods(namespace, "client")[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
    assert len(seen) == 3 and all(name.startswith("web-") for name in seen)

    up = wait_until(
        "3 up targets in Prometheus",
        lambda: (
            len(prometheus(f'up{{namespace="{namespace}"}} == 1')) == 3
            and prometheus(f'up{{namespace="{namespace}"}} == 1')
        ),
        timeout=60,
    )
    assert {r["metric"]["pod"] for r in up} == {
        p.split()[0]
        for p in kubectl("-n", namespace, "get", "pods", "-l", "app=web", "-o", "name")
        .stdout.replace("pod/", "")
        .split()
    }

    logs = kubectl("-n", namespace, "logs", "deployment/web", check=False)
    assert logs.returncode == 0, logs.stderr  # the node's logs endpoint answers `kubectl logs`

    assert len(processes_with(token)) == 3
    kubectl("-n", namespace, "delete", "deployment", "web", "--wait=true")
    wait_until(
        "the pods to go",
        lambda: "No resources" in kubectl("-n", namespace, "get", "pods", "-l", "app=web").stderr,
        timeout=60,
    )
    wait_until("no process left behind", lambda: processes_with(token) == [], timeout=30)


def test_a_liveness_probe_failure_restarts_the_container(cluster, namespace):
    apply(
        namespace,
        pod(
            "unhealthy",
            ["python", "-c", "import time; time.sleep(600)"],
            restart="Always",
            livenessProbe={
                "exec": {"command": ["test", "-e", "/tmp/never-there"]},
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
        ),
    )
    wait_until(
        "a restart",
        lambda: (
            get(namespace, "pod", "unhealthy")["status"].get("containerStatuses", [{}])[0].get("restartCount", 0) >= 1
        ),
        timeout=60,
    )


def test_a_persistent_volume_claim_outlives_its_pods(cluster, namespace):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(namespace, claim)
    wait_until("the claim bound", lambda: get(namespace, "pvc", "data").get("status", {}).get("phase") == "Bound")
    for name, script in (
        ("write", "open('/data/x', 'w').write('kept')"),
        ("read", "open('/dev/termination-log', 'w').write(open('/data/x').read())"),
    ):
        apply(
            namespace,
            job(
                name,
                script,
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                volumeMounts=[{"name": "data", "mountPath": "/data"}],
            ),
        )
        assert wait_until(name, lambda n=name: job_condition(namespace, n), timeout=90) == "Complete"
    pod = job_pods(namespace, "read")[0]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "kept"
    path = VOLUMES / namespace / "data"
    assert (path / "x").read_text() == "kept"
    kubectl("-n", namespace, "delete", "job", "write", "read", "--wait=true")
    kubectl("-n", namespace, "delete", "pvc", "data", "--wait=true")
    wait_until("the volume's directory removed", lambda: not path.exists(), timeout=60)


@pytest.mark.slow
def test_a_two_worker_pytorchjob_trains_with_gloo(cluster, namespace):
    program = (
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "open('/dev/termination-log', 'w').write('%d/%d:%g' % (dist.get_rank(), dist.get_world_size(), t.item()))\n"
        "dist.destroy_process_group()\n"
    )

    def replica() -> dict[str, Any]:
        template = pod_template("ddp", ["python", "-c", program], restart="OnFailure", image="trainer")
        template["spec"]["containers"][0]["name"] = "pytorch"
        return {"replicas": 1, "restartPolicy": "OnFailure", "template": template}

    apply(
        namespace,
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "ddp"},
            "spec": {"pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()}},
        },
    )

    def succeeded() -> bool:
        conds = get(namespace, "pytorchjob", "ddp").get("status", {}).get("conditions", [])
        return any(c["type"] == "Succeeded" and c["status"] == "True" for c in conds)

    wait_until("the PyTorchJob to succeed", succeeded, timeout=180)
    pods = json.loads(
        kubectl("-n", namespace, "get", "pods", "-l", "training.kubeflow.org/job-name=ddp", "-o", "json").stdout
    )["items"]
    messages = sorted(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] for p in pods)
    assert messages == ["0/2:3", "1/2:3"]  # both ranks took part in the all-reduce (1 + 2)


def test_the_node_is_registered_with_a_lease(cluster):
    node = json.loads(kubectl("get", "node", "local-0", "-o", "json").stdout)
    assert node["metadata"]["labels"]["modelops.dev/pool"] == "local"
    assert {"key": "modelops.dev/local", "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert int(node["status"]["capacity"]["cpu"]) == os.cpu_count()
    lease = json.loads(kubectl("-n", "kube-node-lease", "get", "lease", "local-0", "-o", "json").stdout)
    first = lease["spec"]["renewTime"]
    time.sleep(11)  # the kubelet renews every 10 s (a quarter of the lease's 40 s)
    again = json.loads(kubectl("-n", "kube-node-lease", "get", "lease", "local-0", "-o", "json").stdout)
    assert again["spec"]["renewTime"] != first


def test_a_memory_limit_is_enforced(cluster, namespace):
    hog = "b = bytearray(400 * 2**20); open('/dev/termination-log', 'w').write('survived')"
    apply(namespace, job("hog", hog, resources={"limits": {"memory": "100Mi"}}))
    assert wait_until("the hog to fail", lambda: job_condition(namespace, "hog"), timeout=60) == "Failed"
    terminated = job_pods(namespace, "hog")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137


def containers() -> list[dict[str, Any]]:
    """Every container containerd runs for the kubelet, as containerd itself describes it."""
    ctr = ["ctr", f"--address={CONTAINERD_SOCK}", "--namespace=k8s.io", "containers"]
    ids = subprocess.run([*ctr, "list", "--quiet"], capture_output=True, text=True, check=True).stdout.split()
    found = []
    for cid in ids:
        info = subprocess.run([*ctr, "info", cid], capture_output=True, text=True, check=False)
        if info.returncode == 0:  # a container may go between the two calls
            found.append(json.loads(info.stdout))
    return found


def test_pods_run_the_registrys_images_by_digest_not_the_checkout(cluster, namespace):
    """containerd's own view: the pod's container runs the local registry's image by digest, its
    program comes from the image's virtualenv as the image's user, and no container on the node
    mounts anything of this checkout but the cluster's own state (volumes, kubelet files)."""
    script = (
        "import json, modelops_server, os\n"
        "ran = {'module': modelops_server.__file__, 'uid': os.getuid()}\n"
        "open('/dev/termination-log', 'w').write(json.dumps(ran))\n"
    )
    apply(namespace, job("where", script))
    assert wait_until("the Job", lambda: job_condition(namespace, "where"), timeout=90) == "Complete"
    status = job_pods(namespace, "where")[0]["status"]["containerStatuses"][0]
    ran = json.loads(status["state"]["terminated"]["message"])
    assert ran == {"module": "/opt/venv/lib/python3.11/site-packages/modelops_server/__init__.py", "uid": 65532}
    repository, digest = images()["server"].split("@")
    assert status["imageID"] == f"{repository}@{digest}"

    cid = status["containerID"].removeprefix("containerd://")
    everything = containers()
    mine = [c for c in everything if c["ID"] == cid]
    assert mine and mine[0]["Image"] == images()["server"], mine
    registry = repository.split("/")[0]
    assert everything and all(c["Image"].startswith(f"{registry}/modelops/") for c in everything), {
        c["Image"] for c in everything
    }
    for c in everything:
        sources = [m.get("source", "") for m in c["Spec"].get("mounts", [])]
        from_checkout = [s for s in sources if s.startswith(f"{REPO}/") and not s.startswith(f"{STATE}/")]
        assert from_checkout == [], (c["ID"], from_checkout)
