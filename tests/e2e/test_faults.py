"""Faults the operator must ride out: the API server gone for 30 s (its watches break, its calls
fail), a watch connection that silently stalls, and objects deleted while the operator is down."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.names import FINALIZER
from tests.support.cluster import (
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    REPO,
    STATE,
    OperatorProcess,
    create,
    kubectl,
    ready_reason,
    status,
    wait_until,
)
from tests.support.objects import training_run
from tests.support.proxy import StallingProxy


def ready_message(custom, namespace: str, name: str) -> str:
    """The message of a TrainingRun's Ready condition ("" when it has none)."""
    conditions = status(custom, namespace, "trainingruns", name).get("conditions") or []
    return next((x["message"] for x in conditions if x["type"] == c.READY), "")


def not_found(kind: str, namespace: str, name: str) -> bool:
    """Gone, as the API server says it (NotFound), not merely unreadable (any other failure raises)."""
    out = kubectl("-n", namespace, "get", kind, name, check=False)
    if out.returncode == 0:
        return False
    assert "NotFound" in out.stderr, out.stderr
    return True


def cluster_module():
    spec = importlib.util.spec_from_file_location("modelops_cluster", REPO / "hack" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lease(namespace: str, name: str) -> dict:
    return json.loads(kubectl("-n", namespace, "get", "lease", name, "-o", "json").stdout)["spec"]


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
    assert wait_until(
        "the change observed",
        lambda: ready_reason(custom, namespace, "trainingruns", "before", generation=2),
        timeout=120,
    ) == ("False", c.DATASET_NOT_FOUND)
    assert 'Dataset "elsewhere" does not exist in this namespace' in ready_message(custom, namespace, "before")
    assert 'Dataset "missing" does not exist in this namespace' in ready_message(custom, namespace, "after")
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
        # Held meanwhile, and by the operator's finalizer (nothing else holds it).
        assert obj["metadata"].get("deletionTimestamp")
        assert obj["metadata"]["finalizers"] == [FINALIZER]
    finally:
        operator.start()
    wait_until("the object gone", lambda: not_found("trainingrun", namespace, "doomed"), timeout=60)


@pytest.mark.slow
def test_a_watch_that_silently_stalls_is_replaced(operator, operator_kubeconfig, custom, namespace):
    """The connection under the operator's watches goes silent (no error, no close): the watch
    client timeout ends it and kopf re-lists and re-watches on a new connection, so objects
    created meanwhile are still seen. Without that timeout the operator would wait forever (the
    resync is an hour in tests and cannot help a new object). The operator runs with leader
    election: its Lease renewals, stalled too, time out and go on over new connections, so it keeps
    the Lease rather than hanging while another replica could take it over."""
    config = yaml.safe_load(operator_kubeconfig.read_text())
    server = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = StallingProxy(server.hostname or "127.0.0.1", server.port or 443).start()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    proxied_config = STATE / "operator-proxied.kubeconfig"
    proxied_config.write_text(yaml.safe_dump(config))
    operator.stop()  # one operator at a time: the proxied one replaces the session's for this test
    proxied = OperatorProcess(
        proxied_config,
        MODELOPS_WATCH_SERVER_TIMEOUT_SECONDS="3600",
        MODELOPS_WATCH_CLIENT_TIMEOUT_SECONDS="15",
        MODELOPS_LEADER_ELECTION_NAMESPACE=OPERATOR_NAMESPACE,
        MODELOPS_LEADER_ELECTION_ID=OPERATOR_RELEASE,
    )
    try:
        proxied.start()
        create(custom, namespace, training_run("before", "missing"))
        assert wait_until("the first status", lambda: ready_reason(custom, namespace, "trainingruns", "before")) == (
            "False",
            c.DATASET_NOT_FOUND,
        )
        watches = proxied.metric('modelops_watch_restarts_total{reason="inactive"}')
        holder = lease(OPERATOR_NAMESPACE, OPERATOR_RELEASE)["holderIdentity"]
        proxy.stall()
        stalled_at = datetime.now(UTC)
        create(custom, namespace, training_run("after", "missing"))
        assert wait_until(
            "the object created during the stall reconciled",
            lambda: ready_reason(custom, namespace, "trainingruns", "after"),
            timeout=120,
        ) == ("False", c.DATASET_NOT_FOUND)
        assert 'Dataset "missing" does not exist in this namespace' in ready_message(custom, namespace, "after")
        assert proxied.metric('modelops_watch_restarts_total{reason="inactive"}') > watches

        def renewed_since_the_stall() -> bool:
            spec = lease(OPERATOR_NAMESPACE, OPERATOR_RELEASE)
            renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))
            return spec["holderIdentity"] == holder and renewed > stalled_at + timedelta(seconds=5)

        wait_until("the Lease renewed after the stall", renewed_since_the_stall, timeout=30)
        assert proxied.proc is not None and proxied.proc.poll() is None
    finally:
        proxied.stop()
        proxy.close()
        operator.start()
