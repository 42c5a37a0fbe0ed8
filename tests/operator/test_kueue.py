"""Trials admitted by Kueue: the operator never fights Kueue over a PyTorchJob's `runPolicy.suspend`,
and a queued, preempted or inadmissible trial says why in status and Events.

`KueueSim` extends the TrainingRun simulator (`test_trainingrun.Sim`) with Kueue's side: a Workload
per job, owned by it (as Kueue's job reconciler makes it), whose conditions a test sets the way
Kueue v0.17 writes them (the messages are Kueue's own formats); the operator's `patch` actions on a
Workload are merged into it, and a `suspend`/`resume` of a Kueue-managed job fails the test.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.names import DEACTIVATED_ANNOTATION, KUEUE_JOB_UID_LABEL, KUEUE_QUEUE_LABEL, WORKLOAD
from modelops_operator.api.trainingrun import TrainingRunStatus
from modelops_operator.reconcile import health
from modelops_operator.reconcile import kueue as kq
from modelops_operator.reconcile.actions import Outcome
from modelops_operator.reconcile.trainingrun import WORKLOAD_GRACE_SECONDS, TrainingRunObserved
from tests.operator.test_trainingrun import Sim, cond, ok, reported, searching

T, F = "True", "False"
QUEUE = "team-a"
TRIAL = "digits-r1-t0"


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def pending(message: str) -> list[dict[str, Any]]:
    """A Workload the scheduler could not fit yet (Kueue's scheduler: reason Pending)."""
    return [_cond("QuotaReserved", F, "Pending", message)]


WAITING_FOR_QUOTA = pending(
    "couldn't assign flavors to pod set master: insufficient unused quota for cpu in flavor local, 2 more needed"
)
NEVER_FITS = pending(
    "couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu in flavor kwok-gpu, "
    "previously considered podsets requests (0) + current podset request (16) > maximum capacity (8)"
)
NO_LOCAL_QUEUE = [_cond("QuotaReserved", F, "Inadmissible", f"LocalQueue {QUEUE} doesn't exist")]
CQ_INACTIVE = [_cond("QuotaReserved", F, "Inadmissible", "ClusterQueue modelops is inactive")]
ADMITTED = [
    _cond("QuotaReserved", T, "QuotaReserved", "Quota reserved in ClusterQueue modelops"),
    _cond("Admitted", T, "Admitted", "The workload is admitted"),
]
PREEMPTION = (
    "Preempted to accommodate a workload (UID: w-2, JobUID: j-2) due to prioritization in the ClusterQueue; "
    "preemptor path: /modelops; preemptee path: /modelops"
)
PREEMPTED = [
    _cond("QuotaReserved", F, "Preempted", PREEMPTION),
    _cond("Admitted", F, "NoReservation", "The workload has no reservation"),
    _cond("Evicted", T, "Preempted", PREEMPTION),
    _cond("Preempted", T, "InClusterQueue", PREEMPTION),
    _cond("Requeued", T, "Preempted", PREEMPTION),
]
DEACTIVATED = [
    _cond("QuotaReserved", F, "Pending", "The workload is deactivated"),
    _cond("Evicted", T, "Deactivated", "The workload is deactivated"),
]


def merged(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`target` with the JSON merge patch `patch` applied (RFC 7386), as the API server does."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merged(out.get(key) if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


class KueueSim(Sim):
    """The simulator plus Kueue: a Workload per PyTorchJob, listed as the controller lists them."""

    def __init__(self, spec: dict[str, Any] | None = None, *, queue: str | None = QUEUE, **kw: Any) -> None:
        spec = copy.deepcopy(spec or {})
        if queue:
            spec.setdefault("workers", {})["queueName"] = queue
        super().__init__(spec, **kw)
        self.workloads: dict[str, dict[str, Any]] = {}
        self.served = True
        self.clock: datetime | None = None

    def observe(self) -> TrainingRunObserved:
        observed = super().observe()
        listed = [copy.deepcopy(w) for w in self.workloads.values()] if self.served else None
        observed.workloads = kq.owned_by(listed or [], observed.jobs)
        observed.kueue = listed is not None
        if self.clock is not None:
            observed.now = self.clock
        return observed

    def apply(self, out: Outcome, only: int | None = None) -> None:
        for action in out.actions[:only]:
            if action.verb == "patch" and action.kind == WORKLOAD.kind:
                name = next(j for j, w in self.workloads.items() if w["metadata"]["name"] == action.name)
                self.workloads[name] = merged(self.workloads[name], action.body or {})
            elif action.verb in ("suspend", "resume"):
                raise AssertionError(f"the operator {action.verb}d {action.name}, which Kueue manages")
            else:
                super().apply(Outcome(out.status, [action]))
        for name, job in self.jobs.items():  # the API server gives each job a uid and a creation time
            job["metadata"].setdefault("uid", f"uid-{name}")
            job["metadata"].setdefault("creationTimestamp", "2026-01-01T00:00:00Z")

    def kueue(self, job: str, conditions: list[dict[str, Any]], *, cluster_queue: str = "modelops") -> None:
        """Kueue's Workload for `job` with `conditions` (made when missing, as Kueue's job reconciler
        does: owned by the job, labelled with its uid); an admitted one also suspends or not the job
        as Kueue does."""
        meta = self.jobs[job]["metadata"]
        wl = self.workloads.setdefault(
            job,
            {
                "apiVersion": WORKLOAD.api_version,
                "kind": WORKLOAD.kind,
                "metadata": {
                    "name": f"pytorchjob-{job}-1a2b3",
                    "namespace": "ns",
                    "labels": {KUEUE_JOB_UID_LABEL: meta["uid"]},
                    "ownerReferences": [
                        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": job, "uid": meta["uid"]}
                    ],
                },
                "spec": {"queueName": QUEUE, "active": True},
            },
        )
        wl["status"] = {"conditions": conditions}
        admitted = any(x["type"] == "Admitted" and x["status"] == T for x in conditions)
        if admitted:
            wl["status"]["admission"] = {"clusterQueue": cluster_queue}
        self.jobs[job]["spec"]["runPolicy"]["suspend"] = not admitted

    def event(self, reason: str) -> str:
        assert self.out is not None
        found = [e.message for e in self.out.events if e.reason == reason]
        assert len(found) == 1, [(e.reason, e.message) for e in self.out.events]
        return found[0]


# --- reading a Workload -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "active", "state", "in_message"),
    [
        ([], True, "Queued", ""),
        (WAITING_FOR_QUOTA, True, "Queued", "insufficient unused quota"),
        (NEVER_FITS, True, "QuotaExceeded", "> maximum capacity (8)"),
        (NO_LOCAL_QUEUE, True, "QueueNotFound", f"LocalQueue {QUEUE} doesn't exist"),
        (CQ_INACTIVE, True, "QueueNotFound", "ClusterQueue modelops is inactive"),
        (ADMITTED, True, "Admitted", "admitted"),
        (PREEMPTED, True, "Preempted", "due to prioritization in the ClusterQueue"),
        (DEACTIVATED, False, "Deactivated", "deactivated"),
        ([*PREEMPTED[:1], _cond("Evicted", T, "Preempted", PREEMPTION), *WAITING_FOR_QUOTA], True, "Preempted", ""),
        ([_cond("Finished", T, "Succeeded", "Job finished successfully"), *ADMITTED], True, "Finished", "finished"),
    ],
    ids=[
        "new",
        "waiting-for-quota",
        "never-fits",
        "no-local-queue",
        "cluster-queue-inactive",
        "admitted",
        "preempted",
        "deactivated",
        "preempted-then-pending",
        "finished",
    ],
)
def test_a_workload_is_read_as_one_admission_state(conditions, active, state, in_message):
    wl = {"metadata": {"name": "w"}, "spec": {"active": active}, "status": {"conditions": conditions}}
    got = kq.admission(wl)
    assert got.state == state
    assert in_message in got.message
    assert got.active is active and got.ours is False


def test_workloads_are_matched_to_jobs_by_owner_uid_not_by_name():
    jobs = [{"metadata": {"name": "a", "uid": "1"}}, {"metadata": {"name": "b", "uid": "2"}}]
    wl = {"metadata": {"name": "pytorchjob-a-x", "ownerReferences": [{"kind": "PyTorchJob", "name": "a", "uid": "2"}]}}
    assert kq.owned_by([wl], jobs) == {"b": wl}  # a recreated "a" does not inherit b's Workload


# --- the trial and the run ----------------------------------------------------------------------------


def test_a_queued_trial_is_created_suspended_and_labelled_and_never_resumed_by_the_operator():
    sim = KueueSim()
    sim.step()
    job = sim.jobs[TRIAL]
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == QUEUE
    # Suspended by the training operator, held by Kueue: the operator waits, it does not resume.
    sim.set(TRIAL, "Suspended", reason="PyTorchJobSuspended")
    sim.kueue(TRIAL, WAITING_FOR_QUOTA)
    out = sim.step()
    assert sim.verbs == []
    trial = sim.trial(TRIAL)
    assert (trial.state, trial.reason) == ("Queued", c.QUEUED)
    assert "insufficient unused quota for cpu in flavor local" in (trial.message or "")
    assert out.status.phase == "Queued"
    for type_ in (c.READY, c.PROGRESSING, c.TRAINING_RUNNING):
        assert (cond(out.status, type_).status, cond(out.status, type_).reason) == (F, c.QUEUED)
    assert QUEUE in cond(out.status).message
    assert f"LocalQueue {QUEUE}" in sim.event(c.QUEUED)
    summary = health.summarise(TrainingRunStatus(), out.status)  # waiting for quota: in progress, not stalled
    assert (cond(summary, c.RECONCILING).status, cond(summary, c.STALLED).status) == (T, F)
    # Still waiting: no second Event.
    sim.step()
    assert c.QUEUED not in sim.reasons


def test_admission_lets_the_trial_run_with_an_event_and_no_operator_write():
    sim = KueueSim()
    sim.step()
    sim.set(TRIAL, "Suspended")
    sim.kueue(TRIAL, WAITING_FOR_QUOTA)
    sim.step()
    sim.kueue(TRIAL, ADMITTED)  # Kueue un-suspends the job; the training operator starts it
    sim.set(TRIAL, "Running", progress=reported(0.4))
    out = sim.step()
    assert sim.verbs == []
    assert "admitted by Kueue (ClusterQueue modelops)" in sim.event(c.ADMITTED)
    trial = sim.trial(TRIAL)
    assert (trial.state, trial.reason, trial.history) == ("Running", None, [0.4])
    assert out.status.phase == "Running" and cond(out.status, c.TRAINING_RUNNING).reason == c.TRIALS_RUNNING


def test_a_preempted_trial_waits_keeps_its_history_and_resumes_with_identical_epochs():
    sim = KueueSim()
    sim.step()
    sim.kueue(TRIAL, ADMITTED)
    sim.set(TRIAL, "Running", progress=reported(0.41, 0.52))
    sim.step()
    # A higher-priority workload preempts it: Kueue evicts the Workload and suspends the job.
    sim.kueue(TRIAL, PREEMPTED)
    sim.set(TRIAL, "Suspended", reason="PyTorchJobSuspended")
    out = sim.step()
    assert sim.verbs == []  # no fight: the operator does not resume it
    trial = sim.trial(TRIAL)
    assert (trial.state, trial.reason) == ("Queued", c.PREEMPTED)
    assert "due to prioritization in the ClusterQueue" in (trial.message or "")
    assert "resumes from its last checkpoint" in (trial.message or "")
    assert trial.history == [0.41, 0.52] and trial.images_per_second is None
    assert out.status.phase == "Queued" and cond(out.status).reason == c.PREEMPTED
    assert "preempted by Kueue" in sim.event(c.PREEMPTED)
    # Readmitted: the trainer resumes from its checkpoint and, having read it, reports the whole
    # history again (before that it reports none); the per-epoch values are those from before.
    sim.kueue(TRIAL, ADMITTED)
    sim.set(TRIAL, "Running", progress=reported())
    sim.step()
    assert "resumes from its last checkpoint" in sim.event(c.ADMITTED)
    assert sim.trial(TRIAL).history == [0.41, 0.52]
    sim.set(TRIAL, "Running", progress=reported(0.41, 0.52, 0.6))
    sim.step()
    sim.set(TRIAL, "Succeeded", result=ok(0.6, trial=TRIAL))
    out = sim.step()
    assert out.status.phase == "Succeeded" and sim.trial(TRIAL).history == [0.41, 0.52, 0.6]


@pytest.mark.parametrize(
    ("conditions", "reason", "says"),
    [
        (NO_LOCAL_QUEUE, c.QUEUE_NOT_FOUND, f"LocalQueue {QUEUE} doesn't exist; create LocalQueue {QUEUE}"),
        (CQ_INACTIVE, c.QUEUE_NOT_FOUND, "ClusterQueue modelops is inactive"),
        (NEVER_FITS, c.QUOTA_EXCEEDED, "Kueue can never admit it: couldn't assign flavors"),
    ],
    ids=["no-local-queue", "cluster-queue-inactive", "never-fits"],
)
def test_a_trial_kueue_can_never_admit_is_a_condition_that_stalls(conditions, reason, says):
    sim = KueueSim()
    sim.step()
    sim.set(TRIAL, "Suspended")
    sim.kueue(TRIAL, conditions)
    out = sim.step()
    assert sim.verbs == []
    assert (sim.trial(TRIAL).state, sim.trial(TRIAL).reason) == ("Queued", reason)
    ready = cond(out.status)
    assert (ready.status, ready.reason) == (F, reason) and says in ready.message
    assert cond(out.status, c.DEGRADED).status == T
    assert [e.type for e in out.events if e.reason == reason] == ["Warning"]
    summary = health.summarise(TrainingRunStatus(), out.status)
    assert cond(summary, c.STALLED).status == T
    # Fixed by the user (the LocalQueue created, the quota raised): Kueue admits, the run moves on.
    sim.kueue(TRIAL, ADMITTED)
    sim.set(TRIAL, "Running")
    out = sim.step()
    assert out.status.phase == "Running" and cond(out.status, c.DEGRADED).status == F


def _no_kueue(sim: KueueSim) -> None:
    sim.served = False


def _deactivated_by_someone_else(sim: KueueSim) -> None:
    sim.kueue(TRIAL, DEACTIVATED)
    sim.workloads[TRIAL]["spec"]["active"] = False


@pytest.mark.parametrize(
    ("world", "reason", "says"),
    [
        (_no_kueue, c.KUEUE_UNAVAILABLE, "does not serve Kueue's Workload API (workloads.kueue.x-k8s.io)"),
        (_deactivated_by_someone_else, c.WORKLOAD_DEACTIVATED, "activate it again"),
    ],
    ids=["kueue-not-installed", "deactivated-by-someone-else"],
)
def test_a_trial_kueue_will_not_admit_says_why_and_is_left_alone(world, reason, says):
    sim = KueueSim()
    sim.step()
    world(sim)
    sim.set(TRIAL, "Suspended")
    out = sim.step()
    assert sim.verbs == []
    assert cond(out.status).reason == reason and says in cond(out.status).message


def test_a_workload_that_never_appears_is_reported_after_a_grace_period():
    sim = KueueSim({"workers": {"workloadPriorityClass": "urgent"}})
    sim.step()
    sim.set(TRIAL, "Suspended")
    created = sim.jobs[TRIAL]["metadata"]["creationTimestamp"]
    start = datetime.fromisoformat(created.replace("Z", "+00:00"))
    sim.clock = start + timedelta(seconds=WORKLOAD_GRACE_SECONDS - 10)
    out = sim.step()
    assert cond(out.status).reason == c.QUEUED
    sim.clock = start + timedelta(seconds=WORKLOAD_GRACE_SECONDS + 10)
    out = sim.step()
    assert cond(out.status).reason == c.KUEUE_UNAVAILABLE and "kubeflow.org/pytorchjob" in cond(out.status).message
    assert "WorkloadPriorityClass urgent (spec.workers.workloadPriorityClass) exist?" in cond(out.status).message


def test_spec_suspend_deactivates_the_workload_and_unsuspend_activates_only_its_own():
    sim = KueueSim(searching(maxTrials=2))
    sim.step()
    sim.kueue(TRIAL, ADMITTED)
    sim.set(TRIAL, "Running", progress=reported(0.4))
    sim.step()
    sim.change("suspend", True)
    out = sim.step()
    wl_name = sim.workloads[TRIAL]["metadata"]["name"]
    assert sim.verbs == [("patch", wl_name)]  # the Workload, never the job's runPolicy.suspend
    wl = sim.workloads[TRIAL]
    assert wl["spec"]["active"] is False and wl["metadata"]["annotations"][DEACTIVATED_ANNOTATION] == "true"
    assert out.status.phase == "Suspended"
    sim.kueue(TRIAL, DEACTIVATED)  # Kueue evicts it and suspends the job
    sim.set(TRIAL, "Suspended")
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Suspended"
    assert (sim.trial(TRIAL).state, sim.trial(TRIAL).message) == ("Pending", "suspended")
    sim.change("suspend", False)
    sim.step()
    assert sim.verbs == [("patch", wl_name)]
    wl = sim.workloads[TRIAL]
    assert wl["spec"]["active"] is True and DEACTIVATED_ANNOTATION not in wl["metadata"].get("annotations", {})
    assert sim.trial(TRIAL).state == "Queued" and sim.status.phase == "Queued"


def test_a_job_kueue_holds_without_a_queue_name_is_not_resumed():
    """A Kueue with `manageJobsWithoutQueueName: true` holds every job: the operator reads the
    Workload even when the run names no queue, and does not resume what Kueue holds."""
    sim = KueueSim(queue=None)
    sim.step()
    assert sim.jobs[TRIAL]["spec"]["runPolicy"]["suspend"] is False  # no queue: created running
    sim.kueue(TRIAL, WAITING_FOR_QUOTA)  # Kueue's webhook suspended it and made a Workload
    sim.set(TRIAL, "Suspended")
    out = sim.step()
    assert sim.verbs == [] and out.status.phase == "Queued"


def test_reaching_the_goal_stops_a_queued_trial_by_deleting_its_job():
    sim = KueueSim(searching(maxTrials=4, parallelism=2, objective={"metric": "val_accuracy", "goal": 0.8}))
    sim.step()
    sim.kueue(TRIAL, ADMITTED)
    sim.set("digits-r1-t1", "Suspended")
    sim.kueue("digits-r1-t1", WAITING_FOR_QUOTA)
    sim.step()
    assert sim.trial("digits-r1-t1").state == "Queued"
    sim.set(TRIAL, "Succeeded", result=ok(0.9, trial=TRIAL))
    out = sim.step()
    assert ("delete", "digits-r1-t1") in sim.verbs and "digits-r1-t1" not in sim.jobs
    assert sim.trial("digits-r1-t1").state == "Stopped" and out.status.phase == "Succeeded"
