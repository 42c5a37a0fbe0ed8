"""Which changes of a dependency wake its dependants, and which objects are polled."""

from __future__ import annotations

import pytest

from modelops_operator.reconcile import dependencies as dep


def ds(phase="Ready", version="v1", digest="sha256:a", ready="True", **extra):
    status = {"phase": phase, "version": version, "digest": digest, "artifactURI": "pvc://x/v1", **extra}
    status["conditions"] = [{"type": "Ready", "status": ready, "reason": "R", "message": "m"}]
    return {"metadata": {"name": "d"}, "status": status}


def run(*models, model=None):
    status = {"models": [{"version": v, "uri": f"pvc://m/{v}", "digest": f"d{v}"} for v in models]}
    if model is not None:
        status["model"] = {"version": model, "uri": f"pvc://m/{model}", "digest": f"d{model}"}
    return {"metadata": {"name": "r"}, "status": status}


def test_a_dataset_fingerprint_follows_what_a_run_reads():
    base = dep.dataset_fingerprint(ds())
    assert base == dep.dataset_fingerprint(ds())
    # Pending, Running or Failed without a Ready version: a waiting run reads the same.
    assert dep.dataset_fingerprint(ds(phase="Running", ready="False")) == dep.dataset_fingerprint(
        ds(phase="Failed", ready="False")
    )
    assert base != dep.dataset_fingerprint(ds(version="v2"))
    assert base != dep.dataset_fingerprint(ds(digest="sha256:b"))
    assert base != dep.dataset_fingerprint(ds(ready="False"))
    # Status fields a run does not read (counts, times) do not wake it.
    assert base == dep.dataset_fingerprint(ds(counts={"train": 3}, lastUpdateTime="now"))
    assert dep.dataset_fingerprint(None) is None


def test_a_run_fingerprint_follows_its_registered_models_only():
    assert dep.run_fingerprint(run(1, model=1)) == dep.run_fingerprint(run(1))
    assert dep.run_fingerprint(run(1)) != dep.run_fingerprint(run(1, 2))
    assert dep.run_fingerprint(run(1)) != dep.run_fingerprint(run(1, model=2))
    changed = run(1)
    changed["status"]["phase"] = "Running"
    changed["status"]["trials"] = [{"name": "t0"}]
    assert dep.run_fingerprint(changed) == dep.run_fingerprint(run(1))
    assert dep.run_fingerprint(None) is None


@pytest.mark.parametrize(
    ("before", "after", "known", "listed", "wake"),
    [
        (None, "a", False, True, False),  # listed at start: the resume handler reconciles dependants
        (None, "a", False, False, True),  # created after start: its dependants may be waiting for it
        ("a", "a", True, False, False),  # an event that changed nothing a dependant reads
        ("a", "b", True, False, True),
        ("a", "b", True, True, True),  # changed while the watch was down, seen in the re-list
        ("a", None, True, False, True),  # deleted
    ],
)
def test_which_events_wake_dependants(before, after, known, listed, wake):
    assert dep.should_wake(before, after, known=known, listed=listed) is wake


def test_the_wake_value_names_the_change():
    assert dep.wake_value("Dataset", "digits", "abc") == "Dataset/digits@abc"
    assert dep.wake_value("Dataset", "digits", None) == "Dataset/digits@deleted"


@pytest.mark.parametrize(
    ("phase", "waits"),
    [(None, True), ("Pending", True), ("WaitingForDataset", True), ("Running", False), ("Succeeded", False)],
)
def test_only_runs_that_have_not_pinned_a_dataset_are_woken_by_it(phase, waits):
    assert dep.run_waits_for_dataset(phase) is waits


@pytest.mark.parametrize(
    ("kind", "status", "polled"),
    [
        ("Dataset", {"phase": "Running"}, True),
        ("Dataset", {"phase": "Ready"}, False),
        ("TrainingRun", {"phase": "Running"}, True),
        ("TrainingRun", {"phase": "Queued"}, True),  # Kueue's admission is seen only by polling
        ("TrainingRun", {"phase": "WaitingForDataset"}, False),  # woken by its Dataset instead
        ("TrainingRun", {"phase": "Suspended"}, False),
        ("ModelDeployment", {"phase": "Progressing"}, True),
        ("ModelDeployment", {"phase": "Pending"}, True),  # first status not written yet
        (
            "ModelDeployment",
            {"phase": "Pending", "conditions": [{"type": "ModelResolved", "status": "False"}]},
            False,  # waiting for its TrainingRun's model: woken by the run instead
        ),
        ("ModelDeployment", {"phase": "Healthy"}, False),
        ("ModelDeployment", {"phase": "Healthy", "experiment": {"phase": "Running"}}, True),  # measured, ended on time
        ("ModelDeployment", {"phase": "Healthy", "experiment": {"phase": "Concluded"}}, False),  # waits for a person
        ("ModelDeployment", {}, False),
    ],
)
def test_which_objects_the_progress_timer_polls(kind, status, polled):
    assert dep.needs_progress(kind, status) is polled
