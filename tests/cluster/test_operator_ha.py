"""Two operator replicas with Lease-based leader election: only the leader reconciles; when it is
killed, the standby takes the Lease over and carries on."""

from __future__ import annotations

import json
import urllib.request

from modelops_operator.api import conditions as c
from tests.cluster.conftest import OPERATOR_NAMESPACE, OPERATOR_RELEASE, OperatorProcess, kubectl, wait_until
from tests.cluster.test_operator import create, ready_reason
from tests.objects import training_run


def holder(namespace: str, lease: str) -> str | None:
    out = kubectl("-n", namespace, "get", "lease", lease, "-o", "json", check=False)
    return json.loads(out.stdout)["spec"].get("holderIdentity") if out.returncode == 0 else None


def test_the_standby_takes_over_when_the_leader_is_killed(operator, operator_kubeconfig, custom, namespace):
    operator.stop()  # the session's operator runs without election: out of the way for this test
    lease = OPERATOR_RELEASE  # the one Lease the chart's Role lets the operator hold
    env = {"MODELOPS_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE, "MODELOPS_LEADER_ELECTION_ID": lease}
    first, second = OperatorProcess(operator_kubeconfig, **env), OperatorProcess(operator_kubeconfig, **env)
    try:
        first.start()  # healthy once it leads (kopf's own /healthz)
        leader = wait_until("a lease holder", lambda: holder(OPERATOR_NAMESPACE, lease), timeout=30)
        second.start()  # healthy while waiting too: its standby /healthz answers
        with urllib.request.urlopen(f"http://127.0.0.1:{second.port}/healthz", timeout=5) as r:
            assert b"standby" in r.read()
        create(custom, namespace, training_run("led", "missing"))
        assert wait_until("the leader reconciles", lambda: ready_reason(custom, namespace, "trainingruns", "led")) == (
            "False",
            c.DATASET_NOT_FOUND,
        )
        assert holder(OPERATOR_NAMESPACE, lease) == leader

        first.kill()  # SIGKILL: no release; the standby waits out the lease (15 s) and takes over
        wait_until("a new lease holder", lambda: holder(OPERATOR_NAMESPACE, lease) not in (None, leader), timeout=60)
        create(custom, namespace, training_run("after", "missing"))
        assert wait_until(
            "the new leader reconciles", lambda: ready_reason(custom, namespace, "trainingruns", "after"), timeout=60
        ) == ("False", c.DATASET_NOT_FOUND)
    finally:
        first.stop()
        second.stop()
        operator.start()
