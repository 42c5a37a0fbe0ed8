"""Two operator replicas with Lease-based leader election: only the leader reconciles; when it is
killed, the standby takes the Lease over and carries on, a rollout under way included."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import (
    ARTIFACTS,
    ON_LOCAL_NODE,
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    OperatorProcess,
    create,
    kubectl,
    ready_reason,
    status,
    wait_until,
)
from tests.support.objects import model_deployment, training_run
from tests.support.serving import export_model
from tests.support.workloads import artifacts_on_host

LEASE = OPERATOR_RELEASE  # the one Lease the chart's Role lets the operator hold


def holder(namespace: str, lease: str) -> str | None:
    out = kubectl("-n", namespace, "get", "lease", lease, "-o", "json", check=False)
    return json.loads(out.stdout)["spec"].get("holderIdentity") if out.returncode == 0 else None


@contextmanager
def elected_pair(
    operator: OperatorProcess, kubeconfig: Path, **extra_env: str
) -> Iterator[tuple[OperatorProcess, str]]:
    """Two replicas electing a leader, in place of the session's operator (which runs without
    election); yields the leader (started first) and its identity. The standby runs too."""
    operator.stop()
    env = {"MODELOPS_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE, "MODELOPS_LEADER_ELECTION_ID": LEASE}
    first, second = OperatorProcess(kubeconfig, **env, **extra_env), OperatorProcess(kubeconfig, **env, **extra_env)
    try:
        first.start()  # healthy once it leads (kopf's own /healthz)
        leader = wait_until("a lease holder", lambda: holder(OPERATOR_NAMESPACE, LEASE), timeout=30)
        second.start()  # healthy while waiting too: its standby /healthz answers
        with urllib.request.urlopen(f"http://{second.host}:{second.port}/healthz", timeout=5) as r:
            assert b"standby" in r.read()
        yield first, leader
    finally:
        first.stop()
        second.stop()
        operator.start()


def test_the_standby_takes_over_when_the_leader_is_killed(operator, operator_kubeconfig, custom, namespace):
    with elected_pair(operator, operator_kubeconfig) as (first, leader):
        create(custom, namespace, training_run("led", "missing"))
        assert wait_until("the leader reconciles", lambda: ready_reason(custom, namespace, "trainingruns", "led")) == (
            "False",
            c.DATASET_NOT_FOUND,
        )
        assert holder(OPERATOR_NAMESPACE, LEASE) == leader

        first.kill()  # SIGKILL: no release; the standby waits out the lease (15 s) and takes over
        wait_until("a new lease holder", lambda: holder(OPERATOR_NAMESPACE, LEASE) not in (None, leader), timeout=60)
        create(custom, namespace, training_run("after", "missing"))
        assert wait_until(
            "the new leader reconciles", lambda: ready_reason(custom, namespace, "trainingruns", "after"), timeout=60
        ) == ("False", c.DATASET_NOT_FOUND)


@pytest.mark.localnode
@pytest.mark.slow
def test_a_rollout_completes_when_the_leader_is_killed_mid_rollout(operator, operator_kubeconfig, custom, namespace):
    store = artifacts_on_host(namespace)
    v1 = export_model(store / "models" / "v1", seed=1, name="digits")
    v2 = export_model(store / "models" / "v2", seed=2, name="digits")

    def model(exported) -> dict[str, str]:
        return {"uri": f"file://{ARTIFACTS}/{exported.path.relative_to(store)}", "digest": exported.digest}

    body = (
        model_deployment("digits")
        .set("spec.model", model(v1))
        .set("spec.server", {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}})
        .set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 1})
        .set("spec.rollout", {"steps": [{"setWeight": 50}, {"pause": {"duration": "20s"}}]})
    )
    with elected_pair(operator, operator_kubeconfig) as (first, leader):
        create(custom, namespace, body)
        wait_until(
            "version 1 Healthy",
            lambda: status(custom, namespace, "modeldeployments", "digits").get("phase") == "Healthy",
            180,
        )
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", "digits", {"spec": {"model": model(v2)}}
        )

        def paused_at_50() -> bool:
            st = status(custom, namespace, "modeldeployments", "digits")
            return (st.get("canary") or {}).get("digest") == v2.digest and st.get("currentStep") == 1

        wait_until("the canary paused at 50%", paused_at_50, timeout=180)
        first.kill()  # mid-rollout: the canary serves half the traffic, the pause is running
        wait_until("a new lease holder", lambda: holder(OPERATOR_NAMESPACE, LEASE) not in (None, leader), timeout=60)

        def promoted() -> bool:
            st = status(custom, namespace, "modeldeployments", "digits")
            return st.get("phase") == "Healthy" and (st.get("stable") or {}).get("digest") == v2.digest

        wait_until("the new leader completes the rollout", promoted, timeout=180)
        st = status(custom, namespace, "modeldeployments", "digits")
        assert st["previous"]["digest"] == v1.digest and not st.get("aborted") and st.get("canary") is None


def test_in_an_ipv6_pod_the_probes_and_metrics_answer_on_ipv6(operator, operator_kubeconfig):
    """An IPv6-only cluster probes the pod's IPv6 address: told its pod IP is IPv6 (the chart's
    MODELOPS_POD_IP), the leader's kopf /healthz, the standby's /healthz and /metrics all answer on
    IPv6 (here ::1); they listened on 0.0.0.0 alone before, so such a pod was never alive."""
    with elected_pair(operator, operator_kubeconfig, MODELOPS_POD_IP="fd00:10:244::17") as (first, _):
        assert first.host == "[::1]"
        with urllib.request.urlopen(f"http://[::1]:{first.port}/healthz", timeout=5) as r:
            assert r.status == 200 and b"standby" not in r.read()
        assert first.metric("modelops_build_info") == 1
