"""The TrainJob backend (Kubeflow Trainer v2): its builder against Trainer v2's own CRD, the same
trial on both backends, its state, and the trial logic driving it, without a cluster.

The cluster e2e (tests/e2e/test_trainjob_e2e.py) runs the same trial on both backends for real.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator.api import conditions as c
from modelops_operator.api.names import TRAINJOB
from modelops_operator.builders.backends import BACKENDS, PYTORCHJOB_BACKEND, TRAINJOB_BACKEND, backend_of
from modelops_operator.builders.trainingrun import CONFIG_ENV, with_mlflow_credentials
from modelops_operator.builders.trainjob import NODE, master_selector, trainjob_state, unsupported
from modelops_operator.reconcile.actions import Outcome
from modelops_operator.reconcile.trainingrun import TrainingRunObserved, TrialObservation
from modelops_operator.settings import OperatorSettings
from tests.operator.test_chart import HELM, KUBE_VERSION, REPO
from tests.operator.test_pytorchjob_schema import unknown_fields
from tests.operator.test_trainingrun import DATASET_DIGEST, DATASET_URI, Sim, cond, ok, run_obj, spec_of, with_state
from tests.support.tools import missing

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(artifact_pvc="modelops-artifacts", training_backend="TrainJob")


def _module() -> Path:
    versions = dict(line.split("=", 1) for line in (ROOT / "hack/versions.env").read_text().splitlines() if "=" in line)
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go/pkg/mod")
    return cache / f"github.com/kubeflow/trainer/v2@{versions['TRAINER_VERSION'].strip()}"


@functools.cache
def _schema(kind: str) -> dict[str, Any]:
    path = _module() / "manifests/base/crds" / f"trainer.kubeflow.org_{kind}.yaml"
    if not path.exists():
        missing(f"Kubeflow Trainer v2's CRD ({path})", "hack/build-binaries.sh trainer downloads its module")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return dict(version["schema"]["openAPIV3Schema"])


def build(spec: dict[str, Any] | None = None, *, backend: str = "TrainJob", suspend: bool = False) -> dict[str, Any]:
    body = run_obj(spec)
    return BACKENDS[backend].build(
        body,
        spec_of(body),
        SETTINGS,
        round_=1,
        index=0,
        parameters={"learningRate": "0.01"},
        dataset_uri=DATASET_URI,
        dataset_digest=DATASET_DIGEST,
        suspend=suspend,
    )


EVERY_FIELD = {
    "workers": {
        "nodes": 2,
        "gpusPerNode": 2,
        "queueName": "team-a",
        "workloadPriorityClass": "high",
        "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "16Gi"}},
        "placement": {
            "nodeSelector": {"gpu": "h200"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "runtimeRef": {"name": "team-torch", "kind": "TrainingRuntime"},
    },
    "checkpointing": {"pvc": "ckpt", "uri": "file:///mnt/ckpt"},
    "registry": {"mlflowTrackingUri": "https://mlflow.example", "caSecret": "mlflow-ca"},
    "podSettings": {"serviceAccountName": "ml-train", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
}


@pytest.mark.parametrize(("spec", "suspend"), [({}, False), (EVERY_FIELD, True)], ids=["minimal", "every-field"])
def test_every_field_of_a_built_trainjob_is_in_trainer_v2s_crd(spec, suspend):
    job = build(spec, suspend=suspend)
    assert unknown_fields(job, _schema("trainjobs")) == []
    assert job["apiVersion"] == TRAINJOB.api_version and job["spec"]["suspend"] is suspend
    if spec:
        assert job["spec"]["runtimeRef"] == {
            "name": "team-torch",
            "apiGroup": "trainer.kubeflow.org",
            "kind": "TrainingRuntime",
        }
        assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 2


def test_the_walk_finds_a_misspelt_trainjob_field():
    job = {"spec": {"trainer": {"numNode": 2}, "podSpecOverrides": [{"targetJobs": [], "affinity": {}}]}}
    assert unknown_fields(job, _schema("trainjobs")) == [".spec.trainer.numNode", ".spec.podSpecOverrides[0].affinity"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in container["env"]}


def test_the_same_trial_gets_the_same_program_config_storage_and_placement_on_both_backends():
    v1, v2 = build(EVERY_FIELD, backend="PyTorchJob"), build(EVERY_FIELD)
    master = v1["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (override,) = v2["spec"]["podSpecOverrides"]
    trainer = v2["spec"]["trainer"]
    ctr = master["containers"][0]
    # The program, its arguments and every variable the operator sets (the config above all).
    assert trainer["image"] == ctr["image"] and trainer["args"] == ctr["args"]
    assert json.loads(_env(trainer)[CONFIG_ENV]) == json.loads(_env(ctr)[CONFIG_ENV])
    assert _env(trainer) == _env(ctr)
    assert trainer["command"][-2:] == ctr["command"][-2:] == ["-m", "modelops_trainer.train"]
    # Trainer v2 gives torch.distributed.run its PET_* variables: always that launcher.
    assert trainer["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert trainer["resourcesPerNode"] == ctr["resources"]
    # Storage the trial writes to, less the scratch space each backend's pod template has.
    scratch = {"tmp", "dshm"}
    assert override["volumes"] == [v for v in master["volumes"] if v["name"] not in scratch]
    assert override["containers"] == [
        {"name": NODE, "volumeMounts": [m for m in ctr["volumeMounts"] if m["name"] not in scratch]}
    ]
    for key in ("nodeSelector", "tolerations", "serviceAccountName"):
        assert override[key] == master[key], key
    assert v2["metadata"]["labels"] == v1["metadata"]["labels"]
    assert v2["metadata"]["annotations"] == v1["metadata"]["annotations"]


def test_what_trainer_v2_cannot_carry_per_trial_is_named():
    spec = {
        "workers": {"gangScheduling": True, "placement": {"priorityClassName": "training"}},
        "runPolicy": {"activeDeadlineSeconds": 600},
        "podSettings": {"imagePullSecrets": [{"name": "regcred"}], "labels": {"team": "a"}},
    }
    found = unsupported(spec_of(run_obj(spec)), SETTINGS)
    assert found == [
        "spec.workers.gangScheduling (the runtime's podGroupPolicy does it)",
        "spec.workers.placement.priorityClassName",
        "podSettings.imagePullSecrets",
        "podSettings.labels",
        "spec.runPolicy.activeDeadlineSeconds",
    ]
    assert unsupported(spec_of(run_obj(EVERY_FIELD)), SETTINGS) == []
    assert PYTORCHJOB_BACKEND.unsupported(spec_of(run_obj(spec)), SETTINGS) == []


def condition(type_: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("conditions", "running", "expected"),
    [
        ([], False, ("Pending", "", "")),
        ([condition("Created")], False, ("Pending", "", "")),
        ([condition("Created")], True, ("Running", "", "")),
        ([condition("Suspended", reason="Suspended")], False, ("Suspended", "Suspended", "")),
        ([condition("Suspended", "False"), condition("Created")], True, ("Running", "", "")),
        ([condition("Complete", reason="AllJobsCompleted", message="jobset completed")], False,
         ("Succeeded", "AllJobsCompleted", "jobset completed")),
        ([condition("Failed", reason="FailedJobs", message="jobset failed")], True,
         ("Failed", "FailedJobs", "jobset failed")),
    ],
)  # fmt: skip
def test_a_trainjobs_state(conditions, running, expected):
    assert trainjob_state({"kind": "TrainJob", "status": {"conditions": conditions}}, running) == expected


def test_each_job_is_read_by_its_own_kinds_backend():
    assert backend_of({"kind": "TrainJob"}) is TRAINJOB_BACKEND
    assert backend_of({"kind": "PyTorchJob"}) is PYTORCHJOB_BACKEND
    assert (
        master_selector("r-r1-t0")
        == "jobset.sigs.k8s.io/jobset-name=r-r1-t0,batch.kubernetes.io/job-completion-index=0"
    )
    assert TRAINJOB_BACKEND.suspend_patch(True) == {"spec": {"suspend": True}}


def test_mlflow_credentials_reach_the_trainjobs_trainer():
    spec = {"registry": {"mlflowTrackingUri": "https://mlflow.example", "credentialsSecret": "creds"}}
    job = build(spec)
    out = with_mlflow_credentials(job, spec_of(run_obj(spec)), TRAINJOB_BACKEND.rank0_container)
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"]
        for v in out["spec"]["trainer"]["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert refs.get("MLFLOW_TRACKING_TOKEN") == "creds" and "MLFLOW_TRACKING_TOKEN" not in _env(job["spec"]["trainer"])


# --- the trial logic on the TrainJob backend -------------------------------------------------------


class TrainJobSim(Sim):
    """`Sim` with Trainer v2 playing the training operator: TrainJobs, their conditions, `spec.suspend`."""

    def __init__(self, spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.settings = settings
        self.served, self.runtime = True, True

    def observe(self) -> TrainingRunObserved:
        observed = super().observe()
        observed.backend_served, observed.runtime_found = self.served, self.runtime
        return observed

    def apply(self, out: Outcome, only: int | None = None) -> None:
        for action in out.actions[:only]:
            job = self.jobs.get(action.name)
            if action.verb in ("suspend", "resume") and job is not None and job["kind"] == "TrainJob":
                assert action.kind == "TrainJob"
                job["spec"]["suspend"] = action.verb == "suspend"
            else:
                super().apply(Outcome(out.status, [action], []))

    def train(self, name: str, state: str | None, result: dict[str, Any] | None = None, running: bool = False) -> None:
        conds = [condition("Created")]
        if state:
            conds.append(condition(state, reason=state))
        self.jobs[name] = {**self.jobs[name], "status": {"conditions": conds}}
        self.seen[name] = TrialObservation(
            result_message=json.dumps(result) if result else None, master_running=running
        )


def test_a_run_on_the_trainjob_backend_trains_suspends_resumes_and_registers():
    sim = TrainJobSim()
    sim.step()
    assert [(a.verb, a.kind) for a in sim.out.actions] == [("create", "TrainJob")]
    sim.train("digits-r1-t0", None, running=False)
    sim.step()
    assert sim.trial("digits-r1-t0").state == "Pending"
    sim.train("digits-r1-t0", None, running=True)
    sim.step()
    assert sim.trial("digits-r1-t0").state == "Running" and sim.status.phase == "Running"
    sim.change("suspend", True)
    sim.step()
    assert [(a.verb, a.kind) for a in sim.out.actions] == [("suspend", "TrainJob")]
    assert sim.jobs["digits-r1-t0"]["spec"]["suspend"] is True
    sim.change("suspend", False)
    sim.train("digits-r1-t0", "Suspended")
    sim.step()
    assert [(a.verb, a.kind) for a in sim.out.actions] == [("resume", "TrainJob")]
    sim.train("digits-r1-t0", "Complete", result=ok(0.9, trial="digits-r1-t0"))
    sim.step()
    assert sim.status.phase == "Succeeded" and sim.status.model is not None
    assert sim.status.model.trial == "digits-r1-t0"


@pytest.mark.parametrize(
    ("served", "runtime", "spec", "reason", "said"),
    [
        (False, True, {}, c.TRAINING_BACKEND_UNAVAILABLE, "does not serve trainjobs.trainer.kubeflow.org"),
        (True, False, {}, c.RUNTIME_NOT_FOUND, "ClusterTrainingRuntime modelops-torch-distributed does not exist"),
        (True, False, {"workers": {"runtimeRef": {"name": "mine", "kind": "TrainingRuntime"}}}, c.RUNTIME_NOT_FOUND,
         "TrainingRuntime mine in this namespace does not exist"),
        (True, True, {"podSettings": {"imagePullSecrets": [{"name": "regcred"}]}}, c.UNSUPPORTED_BY_BACKEND,
         "cannot carry podSettings.imagePullSecrets"),
    ],
)  # fmt: skip
def test_a_trainjob_backend_that_cannot_take_the_trial_is_a_condition_and_nothing_is_created(
    served, runtime, spec, reason, said
):
    sim = TrainJobSim(spec)
    sim.served, sim.runtime = served, runtime
    sim.step()
    assert sim.out.actions == []
    ready = cond(sim.status)
    assert (ready.status, ready.reason) == ("False", reason) and said in ready.message, ready
    assert sim.status.phase == "Pending"
    # Fixed (the runtime created, the API installed): the trial starts.
    sim.served, sim.runtime = True, True
    sim.run["spec"].pop("podSettings", None)
    sim.step()
    assert [(a.verb, a.kind) for a in sim.out.actions] == [("create", "TrainJob")]


def test_a_backend_changed_mid_round_follows_the_old_jobs_and_starts_new_trials_on_the_new_one():
    lr = {"name": "learningRate", "type": "logUniform", "min": 1e-4, "max": 1e-1}
    search = {"algorithm": "random", "maxTrials": 2, "parallelism": 1, "earlyStopping": "none", "parameters": [lr],
              "objective": {"metric": "val_accuracy", "direction": "maximize"}}  # fmt: skip
    sim = TrainJobSim({"search": search, "workers": {"backend": "PyTorchJob"}})
    sim.step()
    assert [(a.verb, a.kind) for a in sim.out.actions] == [("create", "PyTorchJob")]
    sim.change("workers.backend", "TrainJob")  # not a model field: the same round goes on
    sim.jobs["digits-r1-t0"] = with_state(sim.jobs["digits-r1-t0"], "Running")
    sim.step()
    assert sim.trial("digits-r1-t0").state == "Running" and sim.out.actions == []
    sim.set("digits-r1-t0", "Succeeded", result=ok(0.8, trial="digits-r1-t0"))
    sim.step()
    assert sim.trial("digits-r1-t0").state == "Succeeded"
    assert [(a.verb, a.kind, a.name) for a in sim.out.actions] == [("create", "TrainJob", "digits-r1-t1")]


# --- the chart's runtime ---------------------------------------------------------------------------


def test_the_charts_runtime_is_rendered_only_where_trainer_v2_is_served_and_fits_its_crd():
    if not HELM.exists():
        missing(f"helm ({HELM})", "run hack/build-binaries.sh")

    def rendered(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [str(HELM), "template", "r", str(REPO / "charts/modelops"), "--kube-version", KUBE_VERSION, *args],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ClusterTrainingRuntime"]

    assert rendered() == []
    (runtime,) = rendered("--api-versions", "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == OperatorSettings().training_runtime
    assert unknown_fields(runtime, _schema("clustertrainingruntimes")) == []
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert job["name"] == NODE and pod["containers"][0]["name"] == NODE
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert rendered("--api-versions", "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime",
                    "--set", "trainingRuntime.create=false") == []  # fmt: skip
