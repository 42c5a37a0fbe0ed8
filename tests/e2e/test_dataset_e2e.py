"""A Dataset end to end on the local cluster: the operator's Job really runs the preparation
program on the executing node, and the Dataset's status tells the truth about the result."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ARTIFACTS, kubectl, status, wait_until
from tests.support.workloads import local_dataset, seed_digits

pytestmark = pytest.mark.localnode


def ready_reason(custom, namespace, name):
    """The Ready condition's reason once the Dataset is settled (Ready or Failed), else None; from
    one read of the status, so phase and condition belong together."""
    st = status(custom, namespace, "datasets", name)
    cond = next((x for x in st.get("conditions", []) if x["type"] == c.READY), None)
    return cond["reason"] if cond and st.get("phase") in ("Ready", "Failed") else None


def jobs(namespace: str) -> list[dict[str, Any]]:
    return list(
        json.loads(kubectl("-n", namespace, "get", "jobs", "-l", "modelops.dev/dataset", "-o", "json").stdout)["items"]
    )


def test_a_dataset_is_prepared_by_a_real_job_and_reports_its_counts(operator, custom, namespace):
    seed_digits(namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", local_dataset("digits"))
    assert wait_until("Ready", lambda: ready_reason(custom, namespace, "digits"), timeout=180) == c.DATASET_PREPARED
    st = status(custom, namespace, "datasets", "digits")
    assert st["phase"] == "Ready" and st["images"] == 1797 and st["classes"] == 10
    assert st["digest"].startswith("sha256:") and st["version"] == st["digest"][7:19]
    assert st["artifactURI"] == f"file://{ARTIFACTS}/datasets/{namespace}/digits/{st['version']}"
    assert sum(s["total"] for s in st["splits"].values()) == 1797
    for digit in map(str, range(10)):
        assert sum(s["perClass"][digit] for s in st["splits"].values()) > 150
    (prepare_job,) = jobs(namespace)
    pod_spec = prepare_job["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert prepare_job["metadata"]["ownerReferences"][0]["name"] == "digits"
    out = kubectl("get", "dset", "digits", "-n", namespace).stdout
    assert "True" in out and st["version"] in out and "1797" in out

    # Unchanged spec: the operator's resyncs (every 2 s here) never run the Job again.
    uid = prepare_job["metadata"]["uid"]
    kubectl("-n", namespace, "annotate", "dataset", "digits", "touched=yes")
    time.sleep(5)  # a few resync periods
    assert [j["metadata"]["uid"] for j in jobs(namespace)] == [uid]

    # A spec change yields a new version from a new Job; the old Job goes, the old version stays on disk.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "datasets", "digits", {"spec": {"split": {"seed": 3}}}
    )
    wait_until(
        "a new version",
        lambda: (
            status(custom, namespace, "datasets", "digits").get("observedGeneration") == 2
            and status(custom, namespace, "datasets", "digits").get("phase") == "Ready"
        ),
        timeout=180,
    )
    new = status(custom, namespace, "datasets", "digits")
    assert new["version"] != st["version"] and new["images"] == 1797
    wait_until(
        "one Job left",
        lambda: [j["metadata"]["uid"] for j in jobs(namespace)] != [uid] and len(jobs(namespace)) == 1,
        timeout=60,
    )


def test_an_unreachable_source_fails_with_a_reason_a_user_can_act_on(operator, custom, namespace):
    seed_digits(namespace)
    body = local_dataset("lost", source=f"file://{ARTIFACTS}/sources/no-such-folder")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", body)
    assert wait_until("Failed", lambda: ready_reason(custom, namespace, "lost"), timeout=180) == c.SOURCE_UNREACHABLE
    st = status(custom, namespace, "datasets", "lost")
    assert st["phase"] == "Failed" and "no-such-folder" in next(
        x["message"] for x in st["conditions"] if x["type"] == c.READY
    )
    assert "version" not in st  # nothing partial is ever marked Ready
