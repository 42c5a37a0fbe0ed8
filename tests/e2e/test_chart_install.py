"""The Helm chart on the local cluster: `helm install` runs the operator's image as a pod (on the
real node, by digest, in a restricted namespace), `helm test` passes, the operator reconciles in
namespaced mode, and the chart's RBAC cannot do what the operator must not. (Every other cluster
test runs its operator with this RBAC too: see `operator_kubeconfig` in conftest.py.)"""

from __future__ import annotations

import json
import uuid

import pytest

from modelops_operator.api import conditions as c
from tests.support.cluster import (
    ON_LOCAL_NODE,
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    REPO,
    RESTRICTED,
    create,
    helm,
    images,
    kubectl,
    ready_reason,
    wait_until,
)
from tests.support.objects import training_run

pytestmark = pytest.mark.localnode
SA = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_RELEASE}"


@pytest.mark.parametrize(
    ("verb", "resource", "where", "allowed"),
    [
        ("get", "secrets", "--all-namespaces", False),
        ("list", "secrets", "--all-namespaces", False),
        ("get", "secrets", "-n=default", False),
        ("create", "pods", "-n=default", False),
        ("delete", "pods", "-n=default", False),
        ("create", "pods", "-n=default --subresource=exec", False),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", "--all-namespaces", False),
        ("bind", "clusterroles.rbac.authorization.k8s.io", "--all-namespaces", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "--all-namespaces", False),
        ("impersonate", "users", "--all-namespaces", False),
        ("impersonate", "serviceaccounts", "-n=default", False),
        ("delete", "namespaces", "--all-namespaces", False),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces", False),
        ("update", "leases.coordination.k8s.io", "-n=default", False),
        ("delete", "deployments.apps", "-n=default", False),
        ("get", "pods", "-n=default --subresource=log", False),  # a trial's progress comes from its trainer
        # what it needs (sanity: the checks above are not failing for another reason)
        ("create", "pytorchjobs.kubeflow.org", "-n=default", True),
        ("patch", "trainingruns.modelops.dev", "-n=default --subresource=status", True),
        ("get", "pods", "-n=default", True),
        ("patch", "deployments.apps", "-n=default", True),
        ("update", f"leases.coordination.k8s.io/{OPERATOR_RELEASE}", f"-n={OPERATOR_NAMESPACE}", True),
        ("update", "leases.coordination.k8s.io/someone-elses", f"-n={OPERATOR_NAMESPACE}", False),
    ],
)
def test_the_operators_role_cannot_do_what_it_must_not(operator_kubeconfig, verb, resource, where, allowed):
    # A subresource is a flag: `pods/log` would ask about a pod named "log".
    out = kubectl("auth", "can-i", verb, resource, *where.split(), f"--as={SA}", check=False).stdout.strip()
    assert out == ("yes" if allowed else "no"), f"{SA} {verb} {resource} {where}: {out}"


@pytest.mark.slow
def test_helm_install_runs_the_operator_in_the_cluster_and_helm_test_passes(operator, custom, namespace):
    """Namespaced mode: the in-cluster operator watches only `namespace`."""
    operator.stop()  # the session's operator watches every namespace: out of the way meanwhile
    release, ns = f"mo-{uuid.uuid4().hex[:6]}", f"mo-system-{uuid.uuid4().hex[:6]}"
    try:
        # The release namespace enforces the restricted profile too; the operator runs the image
        # built from operator/Dockerfile, from the local registry, by digest.
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, *(f"{k}={v}" for k, v in RESTRICTED.items()))
        repository, digest = images()["operator"].split("@")
        args = [
            "upgrade", "--install", release, str(REPO / "charts" / "modelops"), "--namespace", ns,
            "--wait", "--timeout", "180s", "--set", "crds.enabled=false",  # the session's CRDs serve
            "--set", f"image.repository={repository}", "--set", f"image.digest={digest}",
            "--set", f"settings.trainerImage={images()['trainer']}",
            "--set", f"settings.serverImage={images()['server']}",
            "--set", "rbac.scope=namespaced", "--set-json", f"watchNamespaces={json.dumps([namespace])}",
            "--set", "settings.resyncSeconds=2", "--set", "settings.progressSeconds=1",
            "--set-json", f"nodeSelector={json.dumps(ON_LOCAL_NODE['nodeSelector'])}",
            "--set-json", f"tolerations={json.dumps(ON_LOCAL_NODE['tolerations'])}",
        ]  # fmt: skip
        installed = helm(*args, check=False)
        assert installed.returncode == 0, installed.stderr + kubectl("-n", ns, "get", "pods", "-o", "wide").stdout
        pods = json.loads(kubectl("-n", ns, "get", "pods", "-o", "json").stdout)["items"]
        assert [p["spec"]["nodeName"] for p in pods] == ["local-0"]  # a container on the real node
        assert [p["status"]["containerStatuses"][0]["imageID"] for p in pods] == [images()["operator"]]
        create(custom, namespace, training_run("in-cluster", "missing"))
        assert wait_until(
            "the in-cluster operator's status", lambda: ready_reason(custom, namespace, "trainingruns", "in-cluster")
        ) == ("False", c.DATASET_NOT_FOUND)

        tested = helm("test", release, "--namespace", ns, check=False)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "Phase:          Succeeded" in tested.stdout or "Succeeded" in tested.stdout
    finally:
        helm("uninstall", release, "--namespace", ns, "--wait", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        operator.start()
