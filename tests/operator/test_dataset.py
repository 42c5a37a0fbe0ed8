"""The Dataset's Job builder and reconciliation, table-driven, without a cluster."""

from __future__ import annotations

import json

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.builders.dataset import CONFIG_ENV, build_prepare_job, data_hash
from modelops_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from modelops_operator.reconcile.pods import pod_problem, termination_message
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, dataset

SETTINGS = OperatorSettings(artifact_uri="file:///var/lib/modelops/artifacts", artifact_pvc="artifacts")


def obj(builder=None):
    body = (builder or dataset("digits")).obj()
    body["metadata"].update(namespace="ml", uid="uid-1", generation=2)
    return body


def spec_of(body):
    return DatasetSpec.model_validate(body["spec"])


def job_for(body, state=None, reason="", name=None):
    job = build_prepare_job(body, spec_of(body), SETTINGS)
    if name:
        job["metadata"]["name"] = name
        job["metadata"]["labels"]["modelops.dev/spec-hash"] = "0" * 16
    if state:
        job["status"] = {"conditions": [{"type": state, "status": "True", "reason": reason, "message": "m"}]}
    return job


RESULT = json.dumps(
    {
        "ok": True,
        "version": "0123456789ab",
        "digest": DIGEST,
        "uri": "file:///x/0123456789ab",
        "images": 90,
        "classes": 3,
        "splits": {"train": {"total": 72, "perClass": {"a": 24}}},
        "dropped": {"Duplicate": 2},
    }
)


def run(body, observed, old=None):
    return reconcile_dataset(body, spec_of(body), old or DatasetStatus(), observed, SETTINGS)


def ready(status):
    return c.get_condition(status.conditions, c.READY)


# --- builder ----------------------------------------------------------------------------------


def test_the_job_is_named_labelled_and_owned():
    body = obj()
    job = build_prepare_job(body, spec_of(body), SETTINGS)
    h = data_hash(spec_of(body))
    assert job["metadata"]["name"] == f"digits-prepare-{h[:8]}"
    assert job["metadata"]["labels"]["modelops.dev/spec-hash"] == h
    assert job["metadata"]["labels"]["modelops.dev/dataset"] == "digits"
    assert job["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "Dataset",
        "name": "digits",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    long = obj(dataset("d" * 60))
    assert len(build_prepare_job(long, spec_of(long), SETTINGS)["metadata"]["name"]) <= 63


def test_the_pod_meets_the_restricted_profile():
    body = obj()
    pod = build_prepare_job(body, spec_of(body), SETTINGS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["restartPolicy"] == "Never"
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_the_config_travels_in_the_environment():
    body = obj(dataset().set("spec.sources.0.credentialsSecret", "s3-creds").set("spec.split.seed", 7))
    container = build_prepare_job(body, spec_of(body), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    config = json.loads(next(e["value"] for e in container["env"] if e["name"] == CONFIG_ENV))
    assert config["apiVersion"] == "modelops.dev/prepare-config/v1"
    assert config["output"]["uri"] == "file:///var/lib/modelops/artifacts/datasets/ml/digits"
    assert config["split"]["seed"] == 7
    assert "credentialsSecret" not in config["sources"][0]  # credentials come as environment, not config
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["command"] == ["python", "-m", "modelops_trainer.prepare"]


def test_the_artifact_pvc_is_mounted_only_for_file_uris():
    body = obj()
    pod = build_prepare_job(body, spec_of(body), SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "artifacts"}} in pod["volumes"]
    s3 = obj(dataset().set("spec.sources.0.uri", "s3://bucket/x").set("spec.output.uri", "s3://bucket/out"))
    pod = build_prepare_job(s3, spec_of(s3), SETTINGS)["spec"]["template"]["spec"]
    assert all(v["name"] != "artifacts" for v in pod["volumes"])


def test_only_data_fields_change_the_hash():
    base = spec_of(obj())
    assert data_hash(base) == data_hash(spec_of(obj(dataset().set("spec.resources.requests", {"cpu": "2"}))))
    assert data_hash(base) == data_hash(spec_of(obj(dataset().set("spec.backoffLimit", 5))))
    assert data_hash(base) != data_hash(spec_of(obj(dataset().set("spec.split.seed", 1))))
    assert data_hash(base) != data_hash(spec_of(obj(dataset().set("spec.preprocessing.imageSize", 64))))


# --- reconciliation -----------------------------------------------------------------------------


def test_no_job_yet_creates_one():
    out = run(obj(), DatasetObserved())
    assert [(a.verb, a.kind) for a in out.actions] == [("create", "Job")]
    assert out.status.phase == "Pending" and ready(out.status).reason == c.JOB_CREATED
    assert out.status.observed_generation == 2


@pytest.mark.parametrize(
    ("state", "reason", "message", "phase", "expected"),
    [
        (None, "", None, "Running", c.PREPARING),
        ("Complete", "", RESULT, "Ready", c.DATASET_PREPARED),
        ("Complete", "", None, "Running", c.PREPARING),
        ("Complete", "", "", "Failed", c.RESULT_UNREADABLE),
        (
            "Failed",
            "BackoffLimitExceeded",
            json.dumps({"ok": False, "reason": "EmptyClass", "message": "class b: 0"}),
            "Failed",
            c.EMPTY_CLASS,
        ),
        (
            "Failed",
            "BackoffLimitExceeded",
            json.dumps({"ok": False, "reason": "Exploded", "message": "boom"}),
            "Failed",
            c.PREPARATION_FAILED,
        ),
        ("Failed", "DeadlineExceeded", None, "Failed", c.DEADLINE_EXCEEDED),
        ("Failed", "BackoffLimitExceeded", "Traceback: ValueError", "Failed", c.PREPARATION_FAILED),
    ],
    ids=["active", "complete", "complete-unread", "no-result", "empty-class", "unknown-reason", "deadline", "crash"],
)
def test_the_job_state_becomes_status(state, reason, message, phase, expected):
    body = obj()
    out = run(body, DatasetObserved(jobs=[job_for(body, state, reason)], result_message=message))
    assert out.status.phase == phase
    assert ready(out.status).reason == expected
    assert ready(out.status).status == ("True" if phase == "Ready" else "False")
    assert out.actions == []


def test_a_ready_version_is_reported_in_full():
    body = obj()
    out = run(body, DatasetObserved(jobs=[job_for(body, "Complete")], result_message=RESULT))
    st = out.status
    assert (st.version, st.digest, st.images, st.classes) == ("0123456789ab", DIGEST, 90, 3)
    assert st.splits["train"].per_class == {"a": 24} and st.dropped == {"Duplicate": 2}
    assert st.spec_hash == data_hash(spec_of(body))


def test_a_prepared_spec_never_runs_again():
    body = obj()
    done = run(body, DatasetObserved(jobs=[job_for(body, "Complete")], result_message=RESULT)).status
    again = run(body, DatasetObserved(jobs=[]), old=done)  # the Job was deleted (or the operator restarted)
    assert again.actions == [] and again.status.phase == "Ready"


def test_a_new_spec_replaces_the_old_job_and_keeps_the_old_version_meanwhile():
    body = obj()
    done = run(body, DatasetObserved(jobs=[job_for(body, "Complete")], result_message=RESULT)).status
    changed = obj(dataset().set("spec.split.seed", 9))
    old_job = job_for(body, "Complete")
    out = run(changed, DatasetObserved(jobs=[old_job]), old=done)
    assert (out.actions[0].verb, out.actions[0].name) == ("delete", old_job["metadata"]["name"])
    assert out.actions[1].verb == "create"
    assert out.status.version == "0123456789ab" and ready(out.status).reason == c.JOB_CREATED
    assert "stays available" in ready(out.status).message


def test_a_pod_that_cannot_start_is_reported_not_waited_on_silently():
    pods = [
        {
            "metadata": {"name": "p"},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": 'persistentvolumeclaim "modelops-artifacts" not found',
                    }
                ]
            },
        }
    ]
    assert "modelops-artifacts" in pod_problem(pods)
    waiting = [
        {
            "metadata": {"name": "p"},
            "status": {
                "containerStatuses": [
                    {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
                ]
            },
        }
    ]
    assert pod_problem(waiting).startswith("pod p: ImagePullBackOff: no such image; check the image name")
    assert (
        pod_problem(
            [
                {
                    "metadata": {"name": "p"},
                    "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
                }
            ]
        )
        is None
    )
    body = obj()
    out = run(body, DatasetObserved(jobs=[job_for(body)], pod_problem=pod_problem(pods)))
    assert ready(out.status).reason == c.POD_PENDING and out.status.phase == "Running"


def test_termination_message_takes_the_last_finished_pod():
    def pod(finished, message):
        return {
            "status": {"containerStatuses": [{"state": {"terminated": {"finishedAt": finished, "message": message}}}]}
        }

    assert termination_message([]) is None
    assert termination_message([pod("2026-01-01T00:00:01Z", "old"), pod("2026-01-01T00:00:09Z", "new")]) == "new"
    assert termination_message([{"status": {}}, pod("t", None)]) == ""


def prepare_container(body):
    return job_for(body)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({}, {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}}),
        (
            {"requests": {"memory": "16Gi"}},
            {"requests": {"cpu": "1", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
        ),
        (
            {"limits": {"memory": "512Mi", "cpu": "500m"}},
            {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        ),
        (
            {"requests": {"cpu": "2"}, "limits": {"cpu": "8", "memory": "32Gi"}},
            {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
        ),
    ],
)
def test_the_prepare_pod_always_has_limits_and_a_valid_pair(resources, expected):
    body = obj(dataset().set("spec.resources", resources))
    assert prepare_container(body)["resources"] == expected


def test_the_scratch_volume_has_room_for_each_archive_at_its_limit_and_no_more():
    archive = {"uri": "s3://b/pets.tar.gz", "format": "archive"}
    body = obj(
        dataset().set("spec.sources", [archive, {**archive, "uri": "s3://b/more.zip"}, {"uri": "s3://b/folder"}])
    )
    volumes = {v["name"]: v for v in job_for(body)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": str(2 * (10 << 30) + (1 << 30))}
    smaller = obj(dataset().set("spec.sources", [archive]).set("spec.limits", {"archiveMaxBytes": 1 << 30}))
    volumes = {v["name"]: v for v in job_for(smaller)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": str(2 << 30)}


def test_limits_reach_the_program_and_only_a_set_limit_changes_the_hash():
    base = obj()
    config = json.loads(next(e["value"] for e in prepare_container(base)["env"] if e["name"] == CONFIG_ENV))
    assert config["limits"] == {
        "archiveMaxBytes": 10 << 30,
        "archiveMaxMembers": 1_000_000,
        "archiveMaxRatio": 100,
        "manifestMaxBytes": 256 << 20,
        "imageMaxBytes": 64 << 20,
    }
    explicit_default = obj(dataset().set("spec.limits", {"archiveMaxRatio": 100}))
    raised = obj(dataset().set("spec.limits", {"archiveMaxRatio": 1000}))
    assert data_hash(spec_of(base)) == data_hash(spec_of(explicit_default)) != data_hash(spec_of(raised))


def test_a_version_whose_split_lacks_a_class_is_ready_but_degraded():
    body = obj()
    lacking = json.dumps({**json.loads(RESULT), "missing": {"test": ["a", "b"], "val": ["b"]}})
    done = run(body, DatasetObserved(jobs=[job_for(body, "Complete")], result_message=lacking)).status
    assert done.phase == "Ready"
    degraded = c.get_condition(done.conditions, c.DEGRADED)
    assert (degraded.status, degraded.reason) == ("True", c.SPLIT_MISSES_CLASS)
    assert degraded.message.startswith("splits without an image of some classes (test: a, b; val: b)")
    whole = run(
        body,
        DatasetObserved(jobs=[job_for(body, "Complete")], result_message=RESULT),
        old=done.model_copy(update={"spec_hash": None}),
    ).status
    assert c.get_condition(whole.conditions, c.DEGRADED).status == "False"


@pytest.mark.parametrize(
    ("allowed", "phase", "reason"),
    [
        ([], "Failed", c.CREDENTIALS_NOT_ALLOWED),
        (["team-b-bucket"], "Failed", c.CREDENTIALS_NOT_ALLOWED),
        (["s3-creds"], "Pending", c.JOB_CREATED),
    ],
)
def test_a_credentials_secret_must_be_one_the_admin_listed(allowed, phase, reason):
    body = obj(dataset().set("spec.sources.0.credentialsSecret", "s3-creds"))
    settings = SETTINGS.model_copy(update={"dataset_credentials_secrets": allowed})
    out = reconcile_dataset(body, spec_of(body), DatasetStatus(), DatasetObserved(jobs=[]), settings)
    assert (out.status.phase, ready(out.status).reason) == (phase, reason)
    assert bool(out.actions) is (phase == "Pending")  # no Job for a refused Secret
    if phase == "Failed":
        assert ready(out.status).message.startswith(
            "spec.sources[].credentialsSecret: s3-creds may not be used by Datasets"
        )
        assert out.status.spec_hash is None  # checked again at the next resync, once the admin lists it
