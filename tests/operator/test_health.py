"""What kstatus and Argo CD make of our objects, asked of their own code; and the summary
conditions and times (`reconcile.health`) that tell them.

Every status here is produced by the operator's reconcile code, driven as test_dataset,
test_trainingrun and test_rollout drive it (their simulations of the API server, the Jobs, the
training operator and the Deployments), then finalised as the handler does (`health.summarise`)
and stored through its wire form. The objects then go through hack/gomod/health
(`modelops-health`, built by hack/build-binaries.sh): kstatus's `status.Compute`, which Flux's
health checks and Helm 4's `--wait` call, and Argo CD's `health.GetResourceHealth` with util/lua
running charts/argocd's health checks as argocd-cm customisations, in Argo CD's own Lua sandbox.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from modelops_operator.api import conditions as c
from modelops_operator.api.common import API_VERSION, ConditionStatus, StatusBase
from modelops_operator.api.dataset import DatasetPhase, DatasetSpec, DatasetStatus
from modelops_operator.api.modeldeployment import ModelDeploymentPhase as MDPhase
from modelops_operator.api.modeldeployment import ModelDeploymentStatus
from modelops_operator.api.trainingrun import TrainingRunPhase, TrainingRunStatus
from modelops_operator.reconcile import health
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from modelops_operator.reconcile.status import describe_error, invalid_spec, merge_patch, refused
from tests.operator import test_dataset as tds
from tests.operator import test_kueue as tkq
from tests.operator import test_rollout as trl
from tests.operator import test_trainingrun as ttr
from tests.support.health import judge

REPO = Path(__file__).resolve().parents[2]
T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNKNOWN = "ShardsReindexing"
"""A reason this operator never writes (a newer one might): it must not read as done."""


def wrap(kind: str, status: StatusBase | None, generation: int | None = None) -> dict[str, Any]:
    """The live object a tool sees; its generation is the one the status observed, unless given."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": "digits", "namespace": "ml", "uid": "0f1e2d3c"},
        "spec": {},
    }
    gen = generation if generation is not None else (status.observed_generation if status else 1)
    body["metadata"]["generation"] = gen
    if status is not None:
        body["status"] = status.wire()
    return body


def stored(status: StatusBase) -> Any:
    """`status` as the API server stores it and the next reconcile reads it back."""
    return type(status).model_validate(json.loads(json.dumps(status.wire())))


def cond(status: StatusBase, type_: str = c.READY) -> Any:
    return c.get_condition(status.conditions, type_)


def unknown_reason(status: StatusBase, phase: str, *, summarise: bool = True) -> StatusBase:
    """`status` as a newer operator might write it: not Ready, for a reason this one does not know,
    in a phase that otherwise means done; finalised by `summarise` (or left as the last one was)."""
    msg = "re-indexing the shards; the version is not readable meanwhile"
    conds = c.set_condition(status.conditions, c.READY, F, UNKNOWN, msg, status.observed_generation, T0)
    new = status.model_copy(update={"phase": phase, "conditions": conds})
    return stored(health.summarise(status, new, at=T0)) if summarise else new


# --- the kinds' lives, as the reconcile code lives them ------------------------------------------


class DatasetSim:
    """A Dataset reconciled by `reconcile_dataset`, finalised as the handler does."""

    def __init__(self) -> None:
        self.body = tds.obj()
        self.status = DatasetStatus()
        self.at = T0

    def step(self, jobs: list[dict[str, Any]], result: str | None = None, problem: str | None = None) -> DatasetSim:
        observed = DatasetObserved(jobs=copy.deepcopy(jobs), result_message=result, pod_problem=problem)
        out = reconcile_dataset(self.body, tds.spec_of(self.body), self.status, observed, tds.SETTINGS)
        return self.finish(out.status)

    def finish(self, new: StatusBase) -> DatasetSim:
        """The handler's last step: summarise, then store."""
        self.at += timedelta(minutes=1)
        self.status = stored(health.summarise(self.status, new, at=self.at))
        return self

    @property
    def generation(self) -> int:
        return int(self.body["metadata"]["generation"])

    def job(self, state: str | None = None) -> dict[str, Any]:
        return tds.job_for(self.body, state)


class _Finalised:
    """A TrainingRun simulation whose steps are finalised as the handler does."""

    status: TrainingRunStatus

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at = T0

    def step(self, apply: bool = True) -> Any:
        old = self.status
        out = super().step(apply)
        self.at += timedelta(minutes=1)
        self.status = stored(health.summarise(old, self.status, at=self.at))
        return out


class RunSim(_Finalised, ttr.Sim):
    """test_trainingrun's TrainingRun simulation, each step finalised as the handler does."""


class QueuedRunSim(_Finalised, tkq.KueueSim):
    """test_kueue's TrainingRun with a Kueue queue, each step finalised as the handler does."""


class DeploymentSim(trl.Sim):
    """test_rollout's ModelDeployment simulation, each reconcile finalised as the handler does."""

    def reconcile(self, command: str | None = None, *, converge: bool = True) -> Any:
        old = self.status
        out = super().reconcile(command, converge=converge)
        self.status = stored(health.summarise(old, self.status, at=self.now))
        return out


def dataset_lives() -> dict[str, StatusBase]:
    lives: dict[str, StatusBase] = {}
    sim = DatasetSim().step([])
    lives["created"] = sim.status
    lives["preparing"] = sim.step([sim.job()]).status
    problem = "pod digits-prepare-x7k2p: ImagePullBackOff: Back-off pulling image"
    lives["pod-pending"] = sim.step([sim.job()], problem=problem).status
    lives["ready"] = sim.step([sim.job("Complete")], result=tds.RESULT).status
    lives["unknown-reason"] = unknown_reason(sim.status, "Ready")
    lives["unknown-reason-unsummarised"] = unknown_reason(sim.status, "Ready", summarise=False)
    # The spec changes, and the new Job's name is held by someone else's Job (the handler's refusal).
    conflict = refused(sim.status, sim.generation + 1, c.NAME_CONFLICT, ["Job digits-prepare-1 is not ours"], "Ready")
    lives["name-conflict"] = DatasetSim().finish(conflict).status
    failure = {"ok": False, "reason": c.SOURCE_UNREACHABLE, "message": "cannot read s3://images/digits/: NoSuchBucket"}
    sim = DatasetSim().step([])
    lives["failed"] = sim.step([sim.job("Failed")], result=json.dumps(failure)).status
    try:
        DatasetSpec.model_validate({"sources": []})
    except ValidationError as e:
        lives["invalid-spec"] = DatasetSim().finish(invalid_spec(DatasetStatus(), 2, describe_error(e))).status
    return lives


def training_run_lives() -> dict[str, StatusBase]:
    lives: dict[str, StatusBase] = {}
    sim = RunSim()
    sim.dataset = None
    sim.step()
    lives["waiting-for-dataset"] = sim.status
    # The first trial's PyTorchJob name is held by someone else's (the handler's refusal).
    old = TrainingRunStatus()
    conflict = refused(old, 1, c.NAME_CONFLICT, ["PyTorchJob digits-r1-t0 is not ours"], old.phase)
    lives["name-conflict"] = stored(health.summarise(old, conflict, at=T0))
    sim = RunSim()
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=ttr.reported(0.5, 0.7))
    sim.step()
    lives["running"] = sim.status
    sim.set("digits-r1-t0", "Succeeded", result=ttr.ok(0.93, trial="r1"))
    sim.step()
    lives["succeeded"] = sim.status
    lives["unknown-reason"] = unknown_reason(sim.status, "Succeeded")
    sim = RunSim()
    sim.step()
    sim.set("digits-r1-t0", "Failed", result=ttr.failed())
    sim.step()
    lives["failed"] = sim.status
    sim = RunSim(ttr.searching(maxTrials=3, parallelism=1))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=ttr.reported(0.4))
    sim.step()
    sim.change("suspend", True)
    sim.step()
    lives["suspended"] = sim.status
    for life, conditions in (("queued", tkq.WAITING_FOR_QUOTA), ("queue-not-found", tkq.NO_LOCAL_QUEUE)):
        sim = QueuedRunSim()
        sim.step()
        sim.set(tkq.TRIAL, "Suspended")
        sim.kueue(tkq.TRIAL, conditions)
        sim.step()
        lives[life] = sim.status
    return lives


def model_deployment_lives() -> dict[str, StatusBase]:
    lives: dict[str, StatusBase] = {}
    sim = DeploymentSim()
    sim.target = trl.M1
    sim.reconcile(converge=False)
    lives["rolling-stable"] = sim.status
    invalid = invalid_spec(ModelDeploymentStatus(), 1, "spec.rollout.steps.1: a step is one of setWeight, pause")
    lives["invalid-spec"] = stored(health.summarise(ModelDeploymentStatus(), invalid, at=T0))
    waiting = rm.waiting_status(ModelDeploymentStatus(), 1, rm.Waiting(c.TRAINING_RUN_NOT_FOUND, "no such run"))
    lives["waiting-for-model"] = stored(health.summarise(ModelDeploymentStatus(), waiting, at=T0))
    sim = DeploymentSim([trl.weight(10), trl.analysis(), trl.weight(50)]).serving()
    lives["healthy"] = sim.status
    lives["unknown-reason"] = unknown_reason(sim.status, "Healthy")
    refusal = rm.refused_status(sim.status, 1, c.NAME_CONFLICT, ["Service digits-canary is not ours"])
    lives["name-conflict"] = stored(health.summarise(sim.status, refusal, at=T0))
    sim.roll(trl.M2, until_step=1)
    lives["canary"] = sim.status
    sim.metrics = {"errorRate": 0.05}
    sim.wait(30)
    sim.reconcile(converge=False)
    lives["rolled-back"] = sim.status
    sim = DeploymentSim([trl.weight(10), trl.pause(), trl.weight(50)]).serving().roll(trl.M2, until_step=1)
    sim.wait(60)
    sim.reconcile()
    lives["paused"] = sim.status
    return lives


LIVES: dict[str, Callable[[], dict[str, StatusBase]]] = {
    "Dataset": dataset_lives,
    "TrainingRun": training_run_lives,
    "ModelDeployment": model_deployment_lives,
}

PROGRESSING = ("InProgress", "Progressing")
DONE = ("Current", "Healthy")
FAILED = ("Failed", "Degraded")
HOLDING = ("InProgress", "Suspended")

#: (kind, life) -> (phase, kstatus, Argo CD, words in Argo CD's message)
CASES: dict[tuple[str, str], tuple[str, tuple[str, str], list[str]]] = {
    ("Dataset", "created"): ("Pending", PROGRESSING, ["JobCreated: created Job digits-prepare-"]),
    ("Dataset", "preparing"): ("Running", PROGRESSING, ["Preparing: Job digits-prepare-"]),
    ("Dataset", "pod-pending"): ("Running", PROGRESSING, ["PodPending", "ImagePullBackOff"]),
    ("Dataset", "ready"): ("Ready", DONE, ["version 0123456789ab: 90 images in 3 classes"]),
    ("Dataset", "unknown-reason"): ("Ready", PROGRESSING, [f"{UNKNOWN}: re-indexing"]),
    ("Dataset", "unknown-reason-unsummarised"): ("Ready", PROGRESSING, [f"{UNKNOWN}: re-indexing"]),
    ("Dataset", "name-conflict"): ("Ready", FAILED, ["NameConflict: Job digits-prepare-1 is not ours"]),
    ("Dataset", "failed"): ("Failed", FAILED, ["SourceUnreachable: cannot read s3://images/digits/"]),
    ("Dataset", "invalid-spec"): ("Failed", FAILED, ["InvalidSpec: spec.sources"]),
    ("TrainingRun", "waiting-for-dataset"): ("WaitingForDataset", PROGRESSING, ['DatasetNotFound: Dataset "digits"']),
    ("TrainingRun", "name-conflict"): ("Pending", FAILED, ["NameConflict: PyTorchJob digits-r1-t0 is not ours"]),
    ("TrainingRun", "running"): ("Running", PROGRESSING, ["digits-r1-t0 running epoch"]),
    ("TrainingRun", "suspended"): ("Suspended", HOLDING, ["suspended"]),
    ("TrainingRun", "queued"): ("Queued", PROGRESSING, ["Queued: trial digits-r1-t0", "insufficient unused quota"]),
    ("TrainingRun", "queue-not-found"): ("Queued", FAILED, ["QueueNotFound: ", "LocalQueue team-a doesn't exist"]),
    ("TrainingRun", "succeeded"): ("Succeeded", DONE, ["model version 1 registered from trial digits-r1-t0"]),
    ("TrainingRun", "unknown-reason"): ("Succeeded", PROGRESSING, [f"{UNKNOWN}: re-indexing"]),
    ("TrainingRun", "failed"): ("Failed", FAILED, ["ParityCheckFailed: ", "ONNX logits differ"]),
    ("ModelDeployment", "rolling-stable"): ("Pending", PROGRESSING, ["stable rolling out model digits-resnet:v1"]),
    ("ModelDeployment", "invalid-spec"): ("Failed", FAILED, ["InvalidSpec: spec.rollout.steps.1"]),
    ("ModelDeployment", "waiting-for-model"): ("Pending", PROGRESSING, ["TrainingRunNotFound: no such run"]),
    ("ModelDeployment", "healthy"): ("Healthy", DONE, ["serving model digits-resnet:v1"]),
    ("ModelDeployment", "unknown-reason"): ("Healthy", PROGRESSING, [f"{UNKNOWN}: re-indexing"]),
    ("ModelDeployment", "name-conflict"): ("Healthy", FAILED, ["NameConflict: Service digits-canary is not ours"]),
    ("ModelDeployment", "canary"): (
        "Progressing",
        PROGRESSING,
        ["step 1: analysis 0/2", "(canary digits-resnet:v2 at 33% of traffic)"],
    ),
    ("ModelDeployment", "paused"): ("Paused", HOLDING, ["modelops.dev/promote=true"]),
    ("ModelDeployment", "rolled-back"): ("Degraded", FAILED, ["errorRate", "stable digits-resnet:v1 serves all"]),
}


@pytest.fixture(scope="module")
def lives() -> dict[tuple[str, str], StatusBase]:
    return {(kind, name): status for kind, live in LIVES.items() for name, status in live().items()}


@pytest.fixture(scope="module")
def verdicts(lives: dict[tuple[str, str], StatusBase]) -> dict[tuple[str, str], dict[str, Any]]:
    keys = list(lives)
    return dict(zip(keys, judge([wrap(kind, lives[kind, name]) for kind, name in keys]), strict=True))


def test_every_life_has_a_case_and_every_phase_is_lived(lives):
    assert set(lives) == set(CASES)
    for kind, phases in (("Dataset", DatasetPhase), ("TrainingRun", TrainingRunPhase), ("ModelDeployment", MDPhase)):
        lived = {getattr(status, "phase", None) for (k, _), status in lives.items() if k == kind}
        assert lived == set(get_args(phases)), kind


@pytest.mark.parametrize(("kind", "life"), list(CASES), ids=[f"{k}-{n}" for k, n in CASES])
def test_kstatus_and_argocd_agree_with_the_status(kind, life, lives, verdicts):
    status, answer = lives[kind, life], verdicts[kind, life]
    phase, (kstatus, argocd), says = CASES[kind, life]
    assert getattr(status, "phase", None) == phase
    assert not answer.get("error"), answer
    assert (answer["kstatus"]["status"], answer["argocd"]["status"]) == (kstatus, argocd), answer
    for words in says:
        assert words in answer["argocd"]["message"], answer
    # What the summary conditions say is what kstatus reads.
    failed, reconciling, stalled = (cond(status, t).status == T for t in (c.FAILED, c.RECONCILING, c.STALLED))
    if life.endswith("unsummarised"):
        return
    assert stalled == (kstatus == "Failed") and failed <= stalled
    assert reconciling == (argocd == "Progressing")
    if isinstance(status, DatasetStatus | TrainingRunStatus):
        assert (cond(status, c.SUCCEEDED).status == T) == (kstatus == "Current")
    else:
        assert cond(status, c.SUCCEEDED) is None


@pytest.mark.parametrize(
    ("kind", "life"),
    [("Dataset", "failed"), ("TrainingRun", "failed"), ("ModelDeployment", "rolled-back")],
)
def test_failed_carries_readys_reason_and_message(kind, life, lives):
    status = lives[kind, life]
    ready, failed = cond(status), cond(status, c.FAILED)
    assert (failed.status, failed.reason, failed.message) == (T, ready.reason, ready.message)
    assert failed.observed_generation == status.observed_generation


@pytest.mark.parametrize(("kind", "life"), [("Dataset", "ready"), ("TrainingRun", "succeeded")])
def test_a_success_says_succeeded_and_nothing_else(kind, life, lives):
    status = lives[kind, life]
    assert [(t, cond(status, t).status) for t in (c.SUCCEEDED, c.FAILED, c.RECONCILING, c.STALLED)] == [
        (c.SUCCEEDED, T),
        (c.FAILED, F),
        (c.RECONCILING, F),
        (c.STALLED, F),
    ]
    assert all(cond(status, t).message == cond(status).message for t in (c.FAILED, c.RECONCILING, c.STALLED))


@pytest.mark.parametrize(
    ("kind", "life"), [("Dataset", "ready"), ("TrainingRun", "succeeded"), ("ModelDeployment", "healthy")]
)
def test_a_generation_not_yet_observed_is_in_progress_for_both(kind, life, lives):
    status = lives[kind, life]
    [answer] = judge([wrap(kind, status, generation=status.observed_generation + 1)])
    assert (answer["kstatus"]["status"], answer["argocd"]["status"]) == PROGRESSING
    assert "latest observed generation" in answer["kstatus"]["message"]
    assert "waiting for the operator to observe generation" in answer["argocd"]["message"]


@pytest.mark.parametrize("kind", list(LIVES))
def test_an_object_without_status(kind):
    """Argo CD's check waits for the operator; kstatus cannot tell (no observedGeneration, no
    condition: Current by its rules), which docs/status.md says."""
    [answer] = judge([wrap(kind, None)])
    assert answer["argocd"] == {"status": "Progressing", "message": "waiting for the operator to observe generation 1"}
    assert answer["kstatus"]["status"] == "Current"


def test_argocd_runs_the_checks_in_its_sandbox(tmp_path):
    """Argo CD opens no string library for custom checks: a script that uses it fails there, and so
    here; the harness reports Argo CD's Unknown and the error."""
    cm = tmp_path / "argocd-cm.yaml"
    script = 'hs = {}\nhs.status = "Healthy"\nhs.message = string.upper("x")\nreturn hs\n'
    cm.write_text(json.dumps({"data": {"resource.customizations.health.modelops.dev_Dataset": script}}))
    [answer] = judge([wrap("Dataset", None)], argocd_cm=cm)
    assert answer["argocd"]["status"] == "Unknown" and "string" in answer["argocd"]["message"]
    assert "argocd:" in answer["error"]


def test_kinds_without_a_check_are_left_out_of_argocd_health():
    [answer] = judge([{**wrap("Dataset", None), "apiVersion": "example.com/v1", "kind": "Other"}])
    assert answer["argocd"] is None and answer["kstatus"]["status"] == "Current"


# --- the times ------------------------------------------------------------------------------------


def test_a_datasets_times_follow_its_job():
    sim = DatasetSim().step([])
    created = sim.at
    assert (sim.status.start_time, sim.status.completion_time) == (created, None)
    sim.step([sim.job()])
    assert (sim.status.start_time, sim.status.completion_time) == (created, None)
    sim.step([sim.job("Complete")], result=tds.RESULT)
    done = sim.at
    assert (sim.status.start_time, sim.status.completion_time) == (created, done)
    sim.step([sim.job("Complete")], result=tds.RESULT)  # settled: nothing moves
    assert (sim.status.start_time, sim.status.completion_time) == (created, done)
    old_job = sim.job("Complete")
    sim.body["spec"]["sources"][0]["uri"] = "file:///data/digits-2"  # a new spec: a new Job
    sim.step([old_job])
    assert sim.status.phase == "Pending"
    assert (sim.status.start_time, sim.status.completion_time) == (sim.at, None)


def test_a_training_runs_times_follow_its_round_and_trials():
    sim = RunSim(ttr.searching(maxTrials=2, parallelism=1, maxFailedTrials=1))
    sim.step()
    started = sim.at
    assert (sim.status.start_time, sim.status.completion_time) == (started, None)
    assert [(t.name, t.start_time, t.completion_time) for t in sim.status.trials] == [("digits-r1-t0", started, None)]
    sim.set("digits-r1-t0", "Succeeded", result=ttr.ok(0.9, trial="t0"))
    sim.step()
    first_done = sim.at
    sim.set("digits-r1-t1", "Failed", result=ttr.failed())
    sim.step()
    while sim.status.phase not in ("Succeeded", "Failed"):
        sim.step()
    assert sim.status.phase == "Succeeded"
    trials = {t.name: t for t in sim.status.trials}
    assert (trials["digits-r1-t0"].start_time, trials["digits-r1-t0"].completion_time) == (started, first_done)
    assert trials["digits-r1-t1"].start_time == first_done
    assert trials["digits-r1-t1"].completion_time is not None
    assert sim.status.start_time == started and sim.status.completion_time is not None
    finished = sim.status.completion_time
    sim.step()
    assert sim.status.completion_time == finished
    sim.change("hyperparameters.learningRate", 0.01)  # a new round
    sim.step()
    assert sim.status.round == 2 and sim.status.start_time == sim.at and sim.status.completion_time is None
    assert all(t.start_time == sim.at and t.completion_time is None for t in sim.status.trials)


def test_a_suspended_trial_loses_its_completion_time_when_it_resumes():
    sim = RunSim(ttr.searching(maxTrials=3, parallelism=1, earlyStopping="median"))
    sim.step()
    trial = sim.status.trials[0]
    stopped = trial.model_copy(update={"state": "Stopped"})
    old = sim.status.model_copy(update={"trials": [trial]})
    new = health.summarise(old, sim.status.model_copy(update={"trials": [stopped]}), at=T0 + timedelta(hours=1))
    assert new.trials[0].completion_time == T0 + timedelta(hours=1)  # type: ignore[attr-defined]
    back = health.summarise(new, new.model_copy(update={"trials": [trial]}), at=T0 + timedelta(hours=2))
    assert back.trials[0].completion_time is None  # type: ignore[attr-defined]
    assert back.trials[0].start_time == trial.start_time  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(LIVES))
def test_summarising_again_changes_nothing(kind):
    """What makes "write status only when it changed" converge: a second pass at a later time
    leaves every condition, transition time and timestamp as it was."""
    for name, status in LIVES[kind]().items():
        if name.endswith("unsummarised"):
            continue
        again = health.summarise(status, status, at=T0 + timedelta(days=1))
        assert merge_patch(status.wire(), again.wire()) == {}
