"""The local control plane behaves like a cluster: controllers, scheduling onto simulated CPU and
GPU nodes, EndpointSlices, and PodSecurity admission. The test namespaces enforce the restricted
profile, so every pod here has its fields (kwok's nodes only pretend to run them)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.cluster import apply, endpoint_addresses, kubectl, wait_until

SECURE_POD = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
SECURE_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def container(image: str, **fields: Any) -> dict[str, Any]:
    return {"name": "c", "image": image, "securityContext": SECURE_CONTAINER, **fields}


def test_pod_security_restricted_is_enforced(cluster, namespace):
    labels = json.loads(kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
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
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"securityContext": SECURE_POD, "containers": [container("web", ports=[{"containerPort": 8080}])]},
    }
    apply(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        },
    )
    kubectl("-n", namespace, "expose", "deployment", "web", "--port=80", "--target-port=8080")
    wait_until(
        "3 available replicas",
        lambda: (
            kubectl("-n", namespace, "get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}").stdout == "3"
        ),
    )
    nodes = kubectl("-n", namespace, "get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}").stdout.split()
    assert len(nodes) == 3 and all(n.startswith("kwok-cpu-") for n in nodes)  # GPU nodes are tainted
    # Every endpoint counts, ready or not: what this checks is that the EndpointSlice lists the 3 pods.
    wait_until("3 endpoints", lambda: len(endpoint_addresses(namespace, "web", ready_only=False)) == 3)


def test_gpu_pods_land_on_gpu_nodes(cluster, namespace):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer"},
        "spec": {
            "securityContext": SECURE_POD,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container("trainer", resources={"limits": {"nvidia.com/gpu": "4"}})],
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
        "containers": [container("trainer", resources={"limits": {"nvidia.com/gpu": "9"}})],
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
    apply(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": SECURE_POD,
                        "containers": [container("busybox")],
                    }
                }
            },
        },
    )
    wait_until(
        "Complete",
        lambda: kubectl("-n", namespace, "get", "job", "once", "-o", "jsonpath={.status.succeeded}").stdout == "1",
    )
