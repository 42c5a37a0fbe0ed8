"""What tools that know no modelops kind read from a live object the operator refused: `kubectl
wait --for=condition=Failed`, `kubectl get -o wide`, kstatus and Argo CD (the latter two by their own
code, hack/gomod/health, on the object as the API server returns it)."""

from __future__ import annotations

import json

from modelops_operator.api import conditions as c
from tests.support.cluster import create, kubectl, ready_reason, wait_until
from tests.support.health import judge
from tests.support.objects import dataset


def test_a_refused_dataset_is_failed_for_every_tool(operator, custom, namespace):
    # The operator's settings list no Secret for datasets: this one is refused, for good.
    create(custom, namespace, dataset("locked").set("spec.sources.0.credentialsSecret", "s3-creds"))
    wait_until(
        "CredentialsNotAllowed",
        lambda: ready_reason(custom, namespace, "datasets", "locked") == ("False", c.CREDENTIALS_NOT_ALLOWED),
    )
    for condition in (c.FAILED, c.STALLED):
        kubectl("-n", namespace, "wait", f"--for=condition={condition}", "--timeout=30s", "dataset/locked")
    assert (
        kubectl(
            "-n", namespace, "wait", "--for=condition=Succeeded", "--timeout=1s", "dataset/locked", check=False
        ).returncode
        != 0
    )
    wide = kubectl("-n", namespace, "get", "dataset", "locked", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:3] == ["NAME", "READY", "PHASE"] and "REASON" in wide[0].split()
    assert c.CREDENTIALS_NOT_ALLOWED in wide[1].split() and "Failed" in wide[1].split()
    [answer] = judge([json.loads(kubectl("-n", namespace, "get", "dataset", "locked", "-o", "json").stdout)])
    assert answer["kstatus"]["status"] == "Failed" and answer["argocd"]["status"] == "Degraded", answer
    assert "s3-creds" in answer["argocd"]["message"]
