"""The local control plane behaves like a cluster: controllers, scheduling onto simulated CPU and
GPU nodes, EndpointSlices, and PodSecurity admission."""

from __future__ import annotations

import json

from tests.cluster.conftest import kubectl, wait_until


def test_pod_security_restricted_is_enforced(cluster, namespace):
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    res = kubectl("-n", namespace, "run", "privileged", "--image=busybox", "--privileged", check=False)
    assert res.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in res.stderr
    compliant = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(compliant))


def test_a_deployment_gets_replicas_scheduled_and_endpoints(cluster, namespace):
    kubectl("-n", namespace, "create", "deployment", "web", "--image=web", "--replicas=3", "--port=8080")
    kubectl("-n", namespace, "expose", "deployment", "web", "--port=80", "--target-port=8080")
    wait_until(
        "3 available replicas",
        lambda: (
            kubectl("-n", namespace, "get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}").stdout == "3"
        ),
    )
    nodes = kubectl("-n", namespace, "get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}").stdout.split()
    assert len(nodes) == 3 and all(n.startswith("kwok-cpu-") for n in nodes)  # GPU nodes are tainted
    wait_until(
        "3 endpoints",
        lambda: (
            len(
                json.loads(
                    kubectl(
                        "-n", namespace, "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json"
                    ).stdout
                )["items"][0].get("endpoints")
                or []
            )
            == 3
        ),
    )


def test_gpu_pods_land_on_gpu_nodes(cluster, namespace):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer"},
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "trainer", "resources": {"limits": {"nvidia.com/gpu": "4"}}}],
        },
    }
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(pod))
    wait_until(
        "Running",
        lambda: kubectl("-n", namespace, "get", "pod", "trainer", "-o", "jsonpath={.status.phase}").stdout == "Running",
    )
    node = kubectl("-n", namespace, "get", "pod", "trainer", "-o", "jsonpath={.spec.nodeName}").stdout
    assert node.startswith("kwok-gpu-")
    too_big = {**pod, "metadata": {"name": "too-big"}}
    too_big["spec"] = {
        **pod["spec"],
        "containers": [{"name": "c", "image": "trainer", "resources": {"limits": {"nvidia.com/gpu": "9"}}}],
    }
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(too_big))
    wait_until(
        "Unschedulable",
        lambda: (
            "Insufficient nvidia.com/gpu"
            in kubectl(
                "-n", namespace, "get", "pod", "too-big", "-o", "jsonpath={.status.conditions[*].message}"
            ).stdout
        ),
    )


def test_a_job_completes(cluster, namespace):
    kubectl("-n", namespace, "create", "job", "once", "--image=busybox")
    wait_until(
        "Complete",
        lambda: kubectl("-n", namespace, "get", "job", "once", "-o", "jsonpath={.status.succeeded}").stdout == "1",
    )
