"""Faults the operator must ride out: the API server gone for 30 s (its watches break, its calls
fail), and objects deleted while the operator is down."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.cluster.conftest import REPO, kubectl, wait_until
from tests.cluster.test_operator import create, ready_reason
from tests.objects import training_run


def cluster_module():
    spec = importlib.util.spec_from_file_location("modelops_cluster", REPO / "hack" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def api_ready(cluster) -> bool:
    code, _ = cluster.api_get("/readyz")
    return bool(code == 200)


@pytest.mark.slow
def test_the_operator_reconnects_after_the_api_server_is_gone_for_30_s(operator, custom, namespace):
    create(custom, namespace, training_run("before", "missing"))
    assert wait_until("the first status", lambda: ready_reason(custom, namespace, "trainingruns", "before")) == (
        "False",
        c.DATASET_NOT_FOUND,
    )
    cluster = cluster_module()
    apiserver = next(comp for comp in cluster.components() if comp.name == "kube-apiserver")
    apiserver.stop()
    try:
        time.sleep(30)
        assert operator.proc is not None and operator.proc.poll() is None  # it waits; it does not crash
    finally:
        apiserver.start()
        wait_until("the API server back", lambda: api_ready(cluster), timeout=120, interval=1)
        # The controller manager and the scheduler exit when they cannot renew their leader lease
        # (as in any cluster, where the kubelet restarts them): restart what exited.
        for comp in cluster.components():
            comp.start()
        kubectl("create", "namespace", "fault-probe", check=False)
        wait_until(
            "the controller manager back (a namespace gets its default ServiceAccount)",
            lambda: kubectl("-n", "fault-probe", "get", "serviceaccount", "default", check=False).returncode == 0,
            timeout=120,
        )
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
        kubectl("-n", "fault-probe", "apply", "-f", "-", stdin=json.dumps(probe))
        wait_until(
            "the scheduler back (a pod gets a node)",
            lambda: kubectl("-n", "fault-probe", "get", "pod", "probe", "-o", "jsonpath={.spec.nodeName}").stdout,
            timeout=120,
        )
        kubectl("delete", "namespace", "fault-probe", "--wait=false", check=False)
    # A new object, and a change to the old one, are both seen: the watches were re-established.
    create(custom, namespace, training_run("after", "missing"))
    assert wait_until(
        "the new object reconciled", lambda: ready_reason(custom, namespace, "trainingruns", "after"), timeout=120
    ) == ("False", c.DATASET_NOT_FOUND)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", "before", {"spec": {"datasetRef": {"name": "elsewhere"}}}
    )
    wait_until(
        "the change observed",
        lambda: ready_reason(custom, namespace, "trainingruns", "before", generation=2),
        timeout=120,
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=5) as r:
        assert r.status == 200


def test_objects_deleted_while_the_operator_is_down_go_once_it_returns(operator, custom, namespace):
    """A TrainingRun carries the operator's finalizer; deleted while the operator is away, it
    waits, and goes as soon as the operator is back (its PyTorchJobs, if any, are gone already)."""
    create(custom, namespace, training_run("doomed", "missing"))
    wait_until("the finalizer", lambda: custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", "doomed")["metadata"].get("finalizers"))  # fmt: skip
    operator.stop()
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "doomed")
        time.sleep(3)
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "doomed")
        assert obj["metadata"].get("deletionTimestamp")  # held by the finalizer meanwhile
    finally:
        operator.start()
    wait_until(
        "the object gone",
        lambda: kubectl("-n", namespace, "get", "trainingrun", "doomed", check=False).returncode != 0,
        timeout=60,
    )
