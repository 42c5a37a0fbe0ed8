"""The TrainingRun's PyTorchJob builder and reconciliation, table-driven, without a cluster.

The reconciler is a pure function of the run, its old status and what it observed; `Sim` plays the
API server and the training operator around it: it applies the actions to a list of job dicts,
lets a test set a job's conditions and what its master pod said, and feeds both back, with the
status round-tripped through its wire form as the API server would store it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.names import GPU, PARAMETERS_ANNOTATION, ROUND_LABEL, TRIAL_LABEL
from modelops_operator.api.trainingrun import TrainingRunSpec, TrainingRunStatus, TrialStatus
from modelops_operator.builders.trainingrun import (
    CONFIG_ENV,
    MAX_JOB_NAME,
    build_pytorchjob,
    model_hash,
    trial_name,
)
from modelops_operator.reconcile.actions import Outcome
from modelops_operator.reconcile.pods import master_result
from modelops_operator.reconcile.progress import TrainerProgress
from modelops_operator.reconcile.status import merge_patch
from modelops_operator.reconcile.trainingrun import (
    TrainingRunObserved,
    TrialObservation,
    inspected,
    job_state,
    reconcile_training_run,
)
from modelops_operator.settings import OperatorSettings
from tests.support.objects import search, training_run

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
SETTINGS = OperatorSettings(artifact_pvc="modelops-artifacts")
ARTIFACTS = "/var/lib/modelops/artifacts"
DATASET_DIGEST = "sha256:" + "a" * 64
DATASET_URI = f"file://{ARTIFACTS}/datasets/ns/digits/v1"
LR = {"name": "learningRate", "type": "logUniform", "min": 1e-4, "max": 1e-1}


def ready_dataset(version: str = "v1", ready: bool = True) -> dict[str, Any]:
    digest = DATASET_DIGEST if version == "v1" else "sha256:" + hashlib.sha256(version.encode()).hexdigest()
    return {
        "status": {
            "version": version,
            "digest": digest,
            "artifactURI": f"file://{ARTIFACTS}/datasets/ns/digits/{version}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
    }


def run_obj(spec: dict[str, Any] | None = None, name: str = "digits", generation: int = 1) -> dict[str, Any]:
    body = training_run(name, "digits").obj()
    body["spec"].update(spec or {})
    body["metadata"].update(namespace="ns", uid="u-1", generation=generation)
    return body


def spec_of(body: dict[str, Any]) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(body["spec"])


def cond(status: TrainingRunStatus, type_: str = c.READY):
    return c.get_condition(status.conditions, type_)


def ok(value: float = 0.9, metric: str = "val_accuracy", trial: str = "t") -> dict[str, Any]:
    """The trainer's summary of a trial that trained, exported and parity-checked its model."""
    where = f"file://{ARTIFACTS}/runs/ns/digits/{trial}/model.onnx"
    return {
        "status": "Succeeded",
        "reason": "Succeeded",
        "message": "trained 3 epoch(s); best epoch 3; exported and parity-checked",
        "epochs": 3,
        "objective": {"metric": metric, "value": value},
        "metrics": {metric: value, "test_top1": 0.5},
        "model": {
            "uri": where,
            "digest": "sha256:" + hashlib.sha256(trial.encode()).hexdigest(),
            "modelCardUri": where + ".card.json",
        },
    }


def failed(reason: str = "ParityCheckFailed", message: str = "ONNX logits differ from PyTorch's") -> dict[str, Any]:
    return {"status": "Failed", "reason": reason, "message": message}


def reported(*values: float | None, metric: str = "val_accuracy", steps_per_epoch: int = 20) -> TrainerProgress:
    """What a trainer's progress endpoint says after `len(values)` epochs, 5 steps into the next."""
    return TrainerProgress.model_validate_json(
        json.dumps(
            {
                "epoch": len(values),
                "epochs": 10,
                "step": len(values) * steps_per_epoch + 5,
                "stepInEpoch": 5,
                "stepsPerEpoch": steps_per_epoch,
                "imagesPerSecond": 812.5,
                "etaSeconds": 95.0,
                "metric": metric,
                "history": list(values),
            }
        )
    )


def with_state(job: dict[str, Any], state: str | None, reason: str = "", message: str = "") -> dict[str, Any]:
    """`job` with the conditions the training operator would give it."""
    conds: list[dict[str, Any]] = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}]
    if state in ("Succeeded", "Failed", "Suspended"):
        conds.append({"type": "Running", "status": "False", "reason": "PyTorchJobRunning"})
    if state:
        conds.append({"type": state, "status": "True", "reason": reason, "message": message})
    return {**job, "status": {"conditions": conds}}


class Sim:
    """A TrainingRun, the PyTorchJobs the API server holds for it, and what their master pods say."""

    def __init__(self, spec: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None, **kw: Any) -> None:
        self.run = run_obj(spec, **kw)
        self.dataset = ready_dataset() if dataset is None else dataset
        self.status = TrainingRunStatus()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, TrialObservation] = {}
        self.out: Outcome | None = None
        self.settings = SETTINGS

    # the world

    def observe(self) -> TrainingRunObserved:
        """What the controller would observe now."""
        jobs = [copy.deepcopy(j) for j in self.jobs.values()]
        # As the handler: only the pods of jobs `inspected` names are read.
        trials = {n: self.seen[n] for n in inspected(self.status, jobs) if n in self.seen}
        return TrainingRunObserved(dataset=copy.deepcopy(self.dataset), jobs=jobs, trials=trials)

    def step(self, apply: bool = True) -> Outcome:
        """One reconcile; its actions applied to the jobs and its status stored (as JSON)."""
        observed = self.observe()
        out = reconcile_training_run(copy.deepcopy(self.run), spec_of(self.run), self.status, observed, self.settings)
        if apply:
            self.apply(out)
        self.status = TrainingRunStatus.model_validate(json.loads(json.dumps(out.status.wire())))
        self.out = out
        return out

    def apply(self, out: Outcome, only: int | None = None) -> None:
        for action in out.actions[:only]:
            if action.verb == "create":
                assert action.body is not None and action.body["metadata"]["name"] == action.name
                self.jobs.setdefault(action.name, copy.deepcopy(action.body))  # an existing name: 409, no-op
            elif action.verb == "delete":
                self.jobs.pop(action.name, None)
            else:
                self.jobs[action.name]["spec"]["runPolicy"]["suspend"] = action.verb == "suspend"

    def set(
        self,
        name: str,
        state: str | None,
        *,
        reason: str = "",
        message: str = "",
        result: dict[str, Any] | str | None = None,
        progress: TrainerProgress | None = None,
    ) -> None:
        self.jobs[name] = with_state(self.jobs[name], state, reason, message)
        text = json.dumps(result) if isinstance(result, dict) else result
        self.seen[name] = TrialObservation(result_message=text, progress=progress)

    def change(self, path: str, value: Any) -> None:
        """Edit the spec (a dotted path) and bump the generation, as `kubectl edit` would."""
        *parents, last = path.split(".")
        node = self.run["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.run["metadata"]["generation"] += 1

    # reading the status

    def trial(self, name: str) -> TrialStatus:
        return next(t for t in self.status.trials if t.name == name)

    @property
    def verbs(self) -> list[tuple[str, str]]:
        assert self.out is not None
        return [(a.verb, a.name) for a in self.out.actions]

    @property
    def reasons(self) -> list[str]:
        assert self.out is not None
        return [e.reason for e in self.out.events]


def searching(**fields: Any) -> dict[str, Any]:
    """A spec with a random search over the learning rate."""
    fields.setdefault("algorithm", "random")
    fields.setdefault("earlyStopping", "none")
    return {"search": search(LR, **fields)}


# --- builder ------------------------------------------------------------------------------------


def build(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "digits",
    settings: OperatorSettings = SETTINGS,
    round_: int = 1,
    index: int = 0,
    parameters: dict[str, str] | None = None,
    dataset_uri: str = DATASET_URI,
    suspend: bool = False,
) -> dict[str, Any]:
    body = run_obj(spec, name=name)
    return build_pytorchjob(
        body,
        spec_of(body),
        settings,
        round_=round_,
        index=index,
        parameters=parameters or {},
        dataset_uri=dataset_uri,
        dataset_digest=DATASET_DIGEST,
        suspend=suspend,
    )


def pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod spec per replica type."""
    return {k: r["template"]["spec"] for k, r in job["spec"]["pytorchReplicaSpecs"].items()}


def container(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    return pods(job)[replica]["containers"][0]


def config_of(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    return json.loads(next(e["value"] for e in container(job, replica)["env"] if e["name"] == CONFIG_ENV))


GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("workers", "gpus", "tolerations"),
    [
        ({}, None, None),
        ({"gpusPerNode": 1}, "1", [GPU_TOLERATION]),
        ({"gpusPerNode": 8, "nodes": 2}, "8", [GPU_TOLERATION]),
        (
            {"gpusPerNode": 2, "placement": {"tolerations": [{"key": "pool", "operator": "Exists"}]}},
            "2",
            [{"key": "pool", "operator": "Exists"}, GPU_TOLERATION],
        ),
        (
            {"gpusPerNode": 2, "placement": {"tolerations": [{"key": GPU, "operator": "Equal", "value": "a100"}]}},
            "2",
            [{"key": GPU, "operator": "Equal", "value": "a100"}],
        ),
    ],
    ids=["cpu", "one-gpu", "eight-gpus-two-nodes", "own-toleration-kept", "own-gpu-toleration-not-doubled"],
)
def test_gpus_are_requested_and_their_taint_tolerated(workers, gpus, tolerations):
    job = build({"workers": workers})
    for replica, pod in pods(job).items():
        resources = pod["containers"][0].get("resources", {})
        assert resources.get("limits", {}).get(GPU) == gpus, replica
        assert resources.get("requests", {}).get(GPU) == gpus, replica
        assert pod.get("tolerations") == tolerations, replica


@pytest.mark.parametrize(("nodes", "workers"), [(1, None), (2, 1), (3, 2), (16, 15)])
def test_nodes_are_one_master_and_the_rest_workers(nodes, workers):
    replicas = build({"workers": {"nodes": nodes}})["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas") == workers
    assert set(replicas) == ({"Master", "Worker"} if workers else {"Master"})
    for replica in replicas.values():
        assert replica["restartPolicy"] == "ExitCode"
    master = replicas["Master"]["template"]
    assert master["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9400",
        "prometheus.io/path": "/metrics",
    }
    port = {"name": "progress", "containerPort": 9400, "protocol": "TCP"}
    assert master["spec"]["containers"][0]["ports"] == [port]
    if workers:  # the same pod, not the same dict, but not scraped: only rank 0 (the master) serves
        worker = replicas["Worker"]["template"]
        assert worker["spec"] == master["spec"] and worker["spec"] is not master["spec"]
        assert "prometheus.io/scrape" not in (worker["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("workers", "nproc"),
    [
        ({}, None),
        ({"procsPerNode": 1}, None),
        ({"procsPerNode": 4}, "4"),
        ({"gpusPerNode": 2}, "2"),
        ({"gpusPerNode": 4, "procsPerNode": 1}, None),
        ({"gpusPerNode": 1, "procsPerNode": 3, "nodes": 2}, "3"),
    ],
    ids=["cpu", "one-proc", "four-procs", "one-per-gpu", "one-proc-many-gpus", "explicit"],
)
def test_processes_per_node_choose_the_launcher(workers, nproc):
    job = build({"workers": workers})
    assert job["spec"].get("nprocPerNode") == nproc
    launcher = ["python", "-m", "torch.distributed.run"] if nproc else ["python"]
    for replica in job["spec"]["pytorchReplicaSpecs"]:
        ctr = container(job, replica)
        assert ctr["command"] == [*launcher, "-m", "modelops_trainer.train"]
        assert ctr["args"] == ["--config-json", f"$({CONFIG_ENV})"]


@pytest.mark.parametrize(
    ("resources", "gpus", "expected"),
    [
        ({}, 0, None),
        (
            {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
            0,
            {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        ),
        (
            {"requests": {"cpu": 4}},
            1,
            {"requests": {"cpu": 4, GPU: "1"}, "limits": {GPU: "1"}},
        ),
    ],
    ids=["none", "cpu-memory", "with-gpu"],
)
def test_resources_of_each_pod(resources, gpus, expected):
    job = build({"workers": {"resources": resources, "gpusPerNode": gpus, "nodes": 2}})
    for replica in ("Master", "Worker"):
        assert container(job, replica).get("resources") == expected


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ({}, {}),
        ({"nodeSelector": {"pool": "train"}}, {"nodeSelector": {"pool": "train"}}),
        (
            {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute"}]},
            {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute"}]},
        ),
        ({"priorityClassName": "batch-low"}, {"priorityClassName": "batch-low"}),
    ],
    ids=["none", "node-selector", "tolerations", "priority-class"],
)
def test_placement_is_passed_to_every_pod(placement, expected):
    job = build({"workers": {"placement": placement, "nodes": 2}})
    for pod in pods(job).values():
        assert {k: pod[k] for k in ("nodeSelector", "tolerations", "priorityClassName") if k in pod} == expected


@pytest.mark.parametrize(
    ("policy", "suspend", "expected"),
    [
        ({}, False, {"backoffLimit": 3, "cleanPodPolicy": "None", "suspend": False}),
        (
            {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 600,
                "cleanPodPolicy": "All",
            },
            True,
            {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 600,
                "cleanPodPolicy": "All",
                "suspend": True,
            },
        ),
        (
            {"ttlSecondsAfterFinished": 0, "cleanPodPolicy": "Running"},
            False,
            {"backoffLimit": 3, "ttlSecondsAfterFinished": 0, "cleanPodPolicy": "Running", "suspend": False},
        ),
    ],
    ids=["defaults", "all-set", "ttl-zero"],
)
def test_run_policy(policy, suspend, expected):
    assert build({"runPolicy": policy}, suspend=suspend)["spec"]["runPolicy"] == expected


@pytest.mark.parametrize(
    ("workers", "scheduling", "queue_label"),
    [
        ({"nodes": 4}, None, None),
        ({"nodes": 4, "gangScheduling": True}, {"minAvailable": 4}, None),
        (
            {"nodes": 3, "gangScheduling": True, "queueName": "team-a", "placement": {"priorityClassName": "hi"}},
            {"minAvailable": 3, "queue": "team-a", "priorityClass": "hi"},
            "team-a",
        ),
        ({"nodes": 2, "queueName": "team-b"}, None, "team-b"),
        ({"queueName": "team-c", "workloadPriorityClass": "high"}, None, "team-c"),
    ],
    ids=["no-gang", "gang", "gang-queue-priority", "queue-only", "queue-workload-priority"],
)
def test_gang_scheduling_and_queues(workers, scheduling, queue_label):
    job = build({"workers": workers})
    assert job["spec"]["runPolicy"].get("schedulingPolicy") == scheduling
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue_label
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/priority-class") == workers.get("workloadPriorityClass")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue_label


def test_the_pods_meet_the_restricted_profile():
    job = build({"workers": {"nodes": 2, "gpusPerNode": 1}})
    for pod in pods(job).values():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] >= 60  # time to write a checkpoint on SIGTERM
        ctr = pod["containers"][0]
        sc = ctr["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
        assert mounts["/tmp"] == "tmp" and mounts["/dev/shm"] == "dshm"  # writable scratch on a read-only root
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_the_job_is_named_labelled_owned_and_its_container_is_pytorch():
    job = build(round_=2, index=5)
    meta = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert meta["name"] == "digits-r2-t5" and meta["namespace"] == "ns"
    assert meta["labels"]["modelops.dev/trainingrun"] == "digits"
    assert meta["labels"][TRIAL_LABEL] == "digits-r2-t5" and meta["labels"][ROUND_LABEL] == "2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelops-operator"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "modelops.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "digits",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    ctr = container(job)
    assert ctr["name"] == "pytorch"  # the training operator finds its container by this name
    assert ctr["image"] == SETTINGS.trainer_image
    assert ctr["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"] == meta["labels"]


@pytest.mark.parametrize(
    ("name", "round_", "index"),
    [("digits", 1, 0), ("a" * 63, 1, 0), ("a" * 63, 123, 999), ("a" * 44 + "-" + "b" * 18, 7, 12), ("x", 1, 0)],
    ids=["short", "63-chars", "63-chars-big-numbers", "cut-at-a-dash", "one-char"],
)
def test_names_leave_room_for_the_pod_suffix(name, round_, index):
    job_name = build(name=name, round_=round_, index=index)["metadata"]["name"]
    assert job_name == trial_name(name, round_, index)
    assert len(job_name) <= MAX_JOB_NAME
    assert len(f"{job_name}-worker-255") <= 63
    assert job_name.endswith(f"-r{round_}-t{index}")
    assert "--" not in job_name and job_name[0].isalnum()
    assert trial_name(name, round_, index) != trial_name(name, round_, index + 1)
    assert trial_name(name, round_, index) != trial_name(name, round_ + 1, index)


@pytest.mark.parametrize(
    "parameters",
    [{}, {"learningRate": "0.002"}, {"architecture": "resnet34", "batchSize": "32", "momentum": "0.95"}],
)
def test_the_parameters_travel_on_the_annotation_and_in_the_config(parameters):
    job = build(parameters=parameters)
    assert json.loads(job["metadata"]["annotations"][PARAMETERS_ANNOTATION]) == parameters
    assert config_of(job)["trial"] == {"name": "digits-r1-t0", "parameters": parameters}


@pytest.mark.parametrize(
    ("settings", "spec", "dataset_uri", "mounts"),
    [
        (SETTINGS, {}, DATASET_URI, {ARTIFACTS: "artifacts"}),
        (OperatorSettings(), {}, DATASET_URI, {}),
        (
            OperatorSettings(artifact_uri="s3://bucket/store", artifact_pvc="modelops-artifacts"),
            {},
            "s3://bucket/store/datasets/ns/digits/v1",
            {},
        ),
        (SETTINGS, {"checkpointing": {"uri": "s3://bucket/ckpt"}}, DATASET_URI, {ARTIFACTS: "artifacts"}),
        (
            OperatorSettings(),
            {"checkpointing": {"uri": "file:///ckpt/store", "pvc": "ckpt"}},
            DATASET_URI,
            {"/ckpt/store": "checkpoints"},
        ),
    ],
    ids=["pvc-file", "no-pvc", "s3", "s3-output-file-dataset", "checkpoint-pvc"],
)
def test_the_artifact_pvc_is_mounted_for_file_uris(settings, spec, dataset_uri, mounts):
    job = build(spec, settings=settings, dataset_uri=dataset_uri)
    for pod in pods(job).values():
        got = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert {p: n for p, n in got.items() if n not in ("tmp", "dshm")} == mounts
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        expected = {"artifacts": settings.artifact_pvc} if "artifacts" in mounts.values() else {}
        if "checkpoints" in mounts.values():
            expected["checkpoints"] = "ckpt"
        assert claims == expected


@pytest.mark.parametrize(
    ("settings", "spec", "output"),
    [
        (SETTINGS, {}, f"file://{ARTIFACTS}/runs/ns/digits/r1/digits-r1-t0"),
        (OperatorSettings(artifact_uri="s3://b/store/"), {}, "s3://b/store/runs/ns/digits/r1/digits-r1-t0"),
        (SETTINGS, {"checkpointing": {"uri": "s3://c/k"}}, "s3://c/k/runs/ns/digits/r1/digits-r1-t0"),
    ],
    ids=["default", "store-with-slash", "checkpoint-uri"],
)
def test_the_config_says_where_to_read_and_write(settings, spec, output):
    config = config_of(build(spec, settings=settings))
    assert config["apiVersion"] == "modelops.dev/train-config/v1"
    assert config["output"] == {"uri": output}
    assert config["dataset"] == {"uri": DATASET_URI, "digest": DATASET_DIGEST}
    assert config["lineage"] == {"dataset": "digits", "trainingRun": "digits"}


@pytest.mark.parametrize(
    ("spec", "objective"),
    [
        ({}, None),
        ({"search": search(LR)}, {"metric": "val_accuracy", "direction": "maximize"}),
        (
            {"search": search(LR, objective={"metric": "val_loss", "direction": "minimize"})},
            {"metric": "val_loss", "direction": "minimize"},
        ),
    ],
    ids=["plain", "search", "val-loss"],
)
def test_the_config_carries_the_objective_of_a_search(spec, objective):
    config = config_of(build(spec))
    assert config.get("objective") == objective
    assert config["hyperparameters"] == spec_of(run_obj(spec)).hyperparameters.wire()


@pytest.mark.parametrize(
    ("change", "new_round"),
    [
        ({"hyperparameters": {"learningRate": 0.01}}, True),
        ({"model": {"architecture": "resnet34"}}, True),
        ({"datasetRef": {"name": "digits", "version": "v2"}}, True),
        ({"search": search(LR)}, True),
        ({"workers": {"gpusPerNode": 1}}, False),
        ({"runPolicy": {"backoffLimit": 9}}, False),
        ({"suspend": True}, False),
        ({"checkpointing": {"everyEpochs": 5}}, False),
        ({"hyperparameters": {"learningRate": 0.001}}, False),  # the default, written out
    ],
)
def test_only_model_fields_change_the_hash(change, new_round):
    base = model_hash(spec_of(run_obj()))
    assert (model_hash(spec_of(run_obj(change))) != base) is new_round


# --- reconcile: the dataset -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "spec", "reason"),
    [
        (None, {}, c.DATASET_NOT_FOUND),
        ({"status": {}}, {}, c.DATASET_NOT_READY),
        ({}, {}, c.DATASET_NOT_READY),
        (ready_dataset(ready=False), {}, c.DATASET_NOT_READY),
        ({"status": {**ready_dataset()["status"], "digest": None}}, {}, c.DATASET_NOT_READY),
        (ready_dataset("v1"), {"datasetRef": {"name": "digits", "version": "v2"}}, c.DATASET_VERSION_UNAVAILABLE),
    ],
    ids=["missing", "no-status", "empty", "not-ready", "no-digest", "other-version"],
)
def test_the_run_waits_for_its_dataset(dataset, spec, reason):
    sim = Sim(spec)
    sim.dataset = dataset
    out = sim.step()
    st = out.status
    assert out.actions == []
    assert st.phase == "WaitingForDataset"
    for type_ in (c.READY, c.DATASET_READY, c.PROGRESSING):
        assert (cond(st, type_).status, cond(st, type_).reason) == (F, reason), type_
    assert '"digits"' in cond(st).message
    assert st.dataset_digest is None and st.trials == []
    assert st.observed_generation == 1


def test_a_waiting_run_starts_when_the_dataset_becomes_ready():
    sim = Sim()
    sim.dataset = None
    sim.step()
    sim.dataset = ready_dataset(ready=False)
    sim.step()
    assert sim.verbs == [] and cond(sim.status).reason == c.DATASET_NOT_READY
    sim.dataset = ready_dataset()
    sim.step()
    assert sim.verbs == [("create", "digits-r1-t0")]
    assert sim.status.phase == "Running"
    assert (cond(sim.status, c.DATASET_READY).status, cond(sim.status, c.DATASET_READY).reason) == (
        T,
        c.DATASET_VERSION_PINNED,
    )


@pytest.mark.parametrize(
    ("spec", "dataset"),
    [({}, ready_dataset("v1")), ({"datasetRef": {"name": "digits", "version": "v1"}}, ready_dataset("v1"))],
    ids=["current", "named-version"],
)
def test_the_dataset_version_is_pinned_and_survives_a_new_one(spec, dataset):
    sim = Sim(spec, dataset=dataset)
    sim.step()
    pinned = (sim.status.dataset_version, sim.status.dataset_uri, sim.status.dataset_digest)
    assert pinned == ("v1", DATASET_URI, DATASET_DIGEST)
    assert config_of(sim.jobs["digits-r1-t0"])["dataset"] == {"uri": DATASET_URI, "digest": DATASET_DIGEST}
    for later in (ready_dataset("v2"), ready_dataset("v3", ready=False), None):
        sim.dataset = later
        sim.step()
        assert (sim.status.dataset_version, sim.status.dataset_uri, sim.status.dataset_digest) == pinned
        assert sim.status.phase == "Running" and sim.verbs == []


# --- reconcile: a plain run -----------------------------------------------------------------------


def test_a_plain_run_creates_exactly_one_job():
    sim = Sim()
    out = sim.step()
    assert sim.verbs == [("create", "digits-r1-t0")]
    assert out.actions[0].body == build()
    st = out.status
    assert st.phase == "Running" and st.round == 1 and st.spec_hash == model_hash(spec_of(sim.run))
    assert [(t.name, t.state, t.parameters, t.epochs) for t in st.trials] == [("digits-r1-t0", "Pending", {}, 10)]
    assert (cond(st).status, cond(st).reason) == (F, c.TRIALS_RUNNING)
    assert cond(st, c.PROGRESSING).status == T and cond(st, c.TRAINING_RUNNING).status == T
    assert sim.reasons == ["TrialStarted"]
    assert "round 1: 1/1 trials started" in st.progress


def test_reconciling_again_creates_nothing_and_changes_nothing():
    sim = Sim()
    first = sim.step()
    stored = first.status.wire()  # what the API server hands back
    for state in (None, "Running"):
        if state:
            sim.set("digits-r1-t0", state)
        again = sim.step()
        assert again.actions == [], state
        assert len(sim.jobs) == 1
    # the very same inputs, from the stored status: an empty patch (no write, no loop)
    sim.status = TrainingRunStatus.model_validate(stored)
    sim.jobs["digits-r1-t0"] = with_state(sim.jobs["digits-r1-t0"], None)
    second = sim.step()
    assert second.actions == [] and second.events == []
    assert merge_patch(stored, second.status.wire()) == {}


@pytest.mark.parametrize(
    ("metric", "values", "objective", "shown"),
    [
        ("val_accuracy", [0.5, 0.61], 0.61, "val_accuracy=0.61"),
        ("val_accuracy", [0.7, 0.6, 0.65], 0.7, "val_accuracy=0.65"),
        ("val_loss", [1.5, 0.9, 1.1], 0.9, "val_loss=1.1"),
    ],
    ids=["rising", "best-is-earlier", "loss-minimised"],
)
def test_a_running_trial_reports_its_epochs(metric, values, objective, shown):
    objective_spec = {"metric": metric, "direction": "minimize" if metric == "val_loss" else "maximize"}
    sim = Sim(searching(maxTrials=1, objective=objective_spec))
    sim.step()
    name = sim.status.trials[0].name
    sim.set(name, "Running", progress=reported(*values, metric=metric))
    sim.step()
    trial = sim.trial(name)
    assert (trial.state, trial.history, trial.epoch, trial.objective) == ("Running", values, len(values), objective)
    assert sim.status.best_trial == name and sim.status.best_objective == objective
    assert f"{name} running epoch {len(values)}/10 {shown}" in sim.status.progress
    assert sim.status.progress == cond(sim.status).message
    assert sim.verbs == []


def test_a_pod_that_cannot_start_is_reported_on_its_trial():
    sim = Sim()
    sim.step()
    sim.seen["digits-r1-t0"] = TrialObservation(pod_problem="pod digits-r1-t0-master-0: Unschedulable: 0/3 nodes")
    sim.step()
    assert sim.trial("digits-r1-t0").message == "pod digits-r1-t0-master-0: Unschedulable: 0/3 nodes"
    assert sim.status.phase == "Running"
    ready = c.get_condition(sim.status.conditions, c.READY)
    assert ready is not None and (ready.status, ready.reason) == ("False", c.POD_PENDING)
    assert ready.message.endswith("; trial digits-r1-t0: pod digits-r1-t0-master-0: Unschedulable: 0/3 nodes")
    sim.seen["digits-r1-t0"] = TrialObservation()  # it started
    sim.set("digits-r1-t0", "Running")
    sim.step()
    ready = c.get_condition(sim.status.conditions, c.READY)
    assert ready is not None and ready.reason == c.TRIALS_RUNNING


def test_a_successful_trial_registers_model_version_1():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.5, 0.7))
    sim.step()
    summary = ok(0.93, trial="r1")
    sim.set("digits-r1-t0", "Succeeded", result=summary)
    out = sim.step()
    st = out.status
    assert st.phase == "Succeeded"
    assert (cond(st).status, cond(st).reason) == (T, c.MODEL_REGISTERED)
    assert cond(st, c.PROGRESSING).status == F and cond(st, c.TRAINING_RUNNING).status == F
    assert cond(st, c.DEGRADED).status == F
    assert "model version 1" in cond(st).message and "goal" not in cond(st).message
    assert st.model_version == 1 and len(st.models) == 1 and st.models[0] == st.model
    m = st.model
    assert (m.version, m.uri, m.digest, m.model_card_uri) == (
        1,
        summary["model"]["uri"],
        summary["model"]["digest"],
        summary["model"]["modelCardUri"],
    )
    assert (m.dataset, m.dataset_version, m.trial, m.parameters, m.objective) == (
        "digits",
        "v1",
        "digits-r1-t0",
        {},
        0.93,
    )
    assert m.metrics == summary["metrics"] and m.code_version
    trial = sim.trial("digits-r1-t0")
    assert (trial.state, trial.reason, trial.objective, trial.epoch) == ("Succeeded", "Succeeded", 0.93, 3)
    assert trial.history == [0.5, 0.7]
    assert out.actions == []
    assert sim.reasons == ["TrialSucceeded"]
    # settled: nothing happens again, whatever becomes of the job
    for jobs in (sim.jobs, {}):
        sim.jobs = jobs
        again = sim.step()
        assert again.actions == [] and merge_patch(st.wire(), again.status.wire()) == {}


@pytest.mark.parametrize(
    ("change", "model_fields"),
    [
        (("hyperparameters.learningRate", 0.01), True),
        (("model.architecture", "resnet50"), True),
        (("workers.gpusPerNode", 1), False),
        (("runPolicy.backoffLimit", 0), False),
    ],
    ids=["learning-rate", "architecture", "gpus", "backoff"],
)
def test_a_spec_change_after_success_trains_version_2(change, model_fields):
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Succeeded", result=ok(0.9, trial="r1"))
    sim.step()
    assert sim.status.model_version == 1
    sim.change(*change)
    sim.step()
    if not model_fields:
        assert sim.verbs == [] and sim.status.phase == "Succeeded" and sim.status.round == 1
        assert sim.status.observed_generation == 2
        return
    assert sim.verbs == [("create", "digits-r2-t0")]  # the finished job of round 1 stays
    assert "NewRound" in sim.reasons
    st = sim.status
    assert (st.round, st.phase, [t.name for t in st.trials]) == (2, "Running", ["digits-r2-t0"])
    assert st.model_version == 1 and st.model.trial == "digits-r1-t0"  # still served meanwhile
    assert (cond(st).status, cond(st).reason) == (F, c.TRIALS_RUNNING)
    assert st.dataset_version == "v1" and st.observed_generation == 2
    sim.set("digits-r2-t0", "Succeeded", result=ok(0.8, trial="r2"))
    sim.step()
    st = sim.status
    assert st.phase == "Succeeded" and st.model_version == 2 and st.model.version == 2
    assert st.model.trial == "digits-r2-t0" and st.model.uri == ok(trial="r2")["model"]["uri"]
    assert [m.version for m in st.models] == [1, 2]
    assert st.models[0].trial == "digits-r1-t0"


@pytest.mark.parametrize(
    ("state", "job_reason", "job_message", "result", "reason", "in_message"),
    [
        ("Failed", "PyTorchJobFailed", "", failed(), c.PARITY_CHECK_FAILED, "ONNX logits differ"),
        ("Failed", "DeadlineExceeded", "ran too long", None, c.DEADLINE_EXCEEDED, "activeDeadlineSeconds"),
        (
            "Failed",
            "PyTorchJobFailed",
            "PyTorchJob digits-r1-t0 has failed because it was active longer than specified deadline",
            None,
            c.DEADLINE_EXCEEDED,
            "active longer",
        ),
        (
            "Failed",
            "PyTorchJobFailed",
            "PyTorchJob digits-r1-t0 has failed because it has reached the specified backoff limit",
            None,
            c.TRAINING_FAILED,
            "backoff limit",
        ),
        ("Failed", "", "", "Traceback (most recent call last):\nKeyError: 'x'", c.TRAINING_FAILED, "KeyError"),
        ("Failed", "", "", failed("DigestMismatch", "manifest digest differs"), "DigestMismatch", "digest differs"),
        ("Succeeded", "", "", None, c.RESULT_UNREADABLE, "no readable result"),
        ("Succeeded", "", "", "not json", c.RESULT_UNREADABLE, "no readable result"),
        ("Succeeded", "", "", {**ok(), "model": {}}, c.RESULT_UNREADABLE, "no readable result"),
    ],
    ids=[
        "parity",
        "deadline-reason",
        "deadline-kubeflow-message",
        "backoff",
        "crash-log",
        "trainer-reason",
        "succeeded-no-result",
        "succeeded-garbage",
        "succeeded-no-model",
    ],
)
def test_a_failed_plain_run_says_why(state, job_reason, job_message, result, reason, in_message):
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", state, reason=job_reason, message=job_message, result=result)
    out = sim.step()
    st = out.status
    assert st.phase == "Failed" and out.actions == []
    assert (cond(st).status, cond(st).reason) == (F, reason)
    assert (cond(st, c.DEGRADED).status, cond(st, c.DEGRADED).reason) == (T, reason)
    assert cond(st, c.PROGRESSING).status == F
    assert in_message in cond(st).message
    trial = sim.trial("digits-r1-t0")
    assert (trial.state, trial.reason) == ("Failed", reason)
    assert st.model is None and st.model_version is None
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "TrialFailed")]
    assert sim.step().actions == [] and sim.status.phase == "Failed"  # settled: no retry


def test_a_job_deleted_while_running_fails_its_trial():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Running")
    sim.step()
    del sim.jobs["digits-r1-t0"]
    sim.step()
    assert sim.verbs == []
    assert sim.trial("digits-r1-t0").reason == c.JOB_DELETED and sim.status.phase == "Failed"


def test_a_new_round_after_a_failure_is_not_degraded():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Failed", result=failed())
    sim.step()
    assert cond(sim.status, c.DEGRADED).status == T
    sim.change("hyperparameters.learningRate", 0.0005)
    sim.step()
    assert sim.status.phase == "Running" and sim.verbs == [("create", "digits-r2-t0")]
    assert cond(sim.status, c.DEGRADED).status != T


# --- reconcile: searches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "values", "best"),
    [
        ({"metric": "val_accuracy"}, [0.7, 0.9, 0.8], 1),
        ({"metric": "val_loss", "direction": "minimize"}, [0.3, 0.5, 0.2], 2),
        ({"metric": "val_top5"}, [0.99, 0.95, 0.99], 0),  # a tie keeps the earlier trial
    ],
    ids=["accuracy", "loss", "tie"],
)
def test_a_random_search_runs_parallel_trials_and_registers_the_best(objective, values, best):
    sim = Sim(searching(maxTrials=3, parallelism=2, objective=objective, seed=7))
    metric = objective["metric"]
    sim.step()
    assert sim.verbs == [("create", "digits-r1-t0"), ("create", "digits-r1-t1")]
    params = {t.name: t.parameters for t in sim.status.trials}
    assert params["digits-r1-t0"] != params["digits-r1-t1"] and all("learningRate" in p for p in params.values())
    for name, p in params.items():
        assert json.loads(sim.jobs[name]["metadata"]["annotations"][PARAMETERS_ANNOTATION]) == p
        assert config_of(sim.jobs[name])["trial"]["parameters"] == p
    sim.set("digits-r1-t0", "Running", progress=reported(0.1, metric=metric))
    sim.set("digits-r1-t1", "Running")
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Running"
    sim.set("digits-r1-t0", "Succeeded", result=ok(values[0], metric, "t0"))
    sim.step()
    assert sim.verbs == [("create", "digits-r1-t2")]  # the third once one of two finished
    assert "3/3 trials started (1 succeeded)" in sim.status.progress
    sim.set("digits-r1-t1", "Succeeded", result=ok(values[1], metric, "t1"))
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Running"
    sim.set("digits-r1-t2", "Succeeded", result=ok(values[2], metric, "t2"))
    sim.step()
    st = sim.status
    winner = f"digits-r1-t{best}"
    assert st.phase == "Succeeded" and cond(st).reason == c.MODEL_REGISTERED
    assert (st.best_trial, st.best_objective) == (winner, values[best])
    assert (st.model.trial, st.model.objective) == (winner, values[best])
    assert st.model.parameters == sim.trial(winner).parameters and "learningRate" in st.model.parameters
    assert st.model.uri == ok(trial=f"t{best}")["model"]["uri"]
    assert len(sim.jobs) == 3 and sim.verbs == []


@pytest.mark.parametrize(
    ("max_failed", "phase", "verbs"),
    [
        (0, "Failed", [("delete", "digits-r1-t1")]),
        (1, "Running", [("create", "digits-r1-t2")]),
    ],
    ids=["budget-spent", "budget-left"],
)
def test_the_failure_budget(max_failed, phase, verbs):
    sim = Sim(searching(maxTrials=4, parallelism=2, maxFailedTrials=max_failed))
    sim.step()
    sim.set("digits-r1-t0", "Failed", result=failed())
    sim.set("digits-r1-t1", "Running", progress=reported(0.5))
    out = sim.step()
    assert sim.verbs == verbs
    st = out.status
    assert st.phase == phase
    assert sim.trial("digits-r1-t0").reason == c.PARITY_CHECK_FAILED
    if phase == "Failed":
        stopped = sim.trial("digits-r1-t1")
        assert (stopped.state, stopped.reason) == ("Stopped", c.TRIALS_EXHAUSTED)
        assert (cond(st).status, cond(st).reason) == (F, c.TRIALS_EXHAUSTED)
        assert cond(st, c.DEGRADED).status == T
        assert "maxFailedTrials (0)" in cond(st).message and "ParityCheckFailed" in cond(st).message
        assert "digits-r1-t1" not in sim.jobs
        assert sim.step().actions == []  # settled
    else:
        assert sim.trial("digits-r1-t1").state == "Running"


def test_no_successful_trial_fails_the_search():
    sim = Sim(searching(maxTrials=2, parallelism=2, maxFailedTrials=2))
    sim.step()
    sim.set("digits-r1-t0", "Failed", result=failed())
    sim.set("digits-r1-t1", "Failed", reason="PyTorchJobFailed", message="backoff limit")
    sim.step()
    assert sim.status.phase == "Failed" and cond(sim.status).reason == c.TRIALS_EXHAUSTED
    assert "no trial of round 1 succeeded" in cond(sim.status).message


def test_reaching_the_goal_stops_the_others_and_registers():
    sim = Sim(searching(maxTrials=6, parallelism=3, objective={"metric": "val_accuracy", "goal": 0.95}))
    sim.step()
    assert len(sim.jobs) == 3
    sim.set("digits-r1-t0", "Running", progress=reported(0.5))
    sim.set("digits-r1-t1", "Succeeded", result=ok(0.97, trial="t1"))
    out = sim.step()
    assert sim.verbs == [("delete", "digits-r1-t0"), ("delete", "digits-r1-t2")]
    for name in ("digits-r1-t0", "digits-r1-t2"):
        assert (sim.trial(name).state, sim.trial(name).reason) == ("Stopped", c.GOAL_REACHED)
    st = out.status
    assert st.phase == "Succeeded" and st.model.trial == "digits-r1-t1" and st.model_version == 1
    assert len(st.trials) == 3  # no trial started after the goal
    assert (cond(st).status, cond(st).reason) == (T, c.MODEL_REGISTERED)
    assert "the search stopped at the goal: trial digits-r1-t1 reached val_accuracy >= 0.95" in cond(st).message
    assert "after 3 of 6 trials (GoalReached)" in cond(st).message


def median_sim(early_stopping: str = "median", min_epochs: int = 2) -> Sim:
    """Two finished trials that did well (0.8, 0.9 after epochs 1, 2), a third running."""
    sim = Sim(searching(maxTrials=3, parallelism=2, earlyStopping=early_stopping, earlyStoppingMinEpochs=min_epochs))
    sim.step()
    for name in ("digits-r1-t0", "digits-r1-t1"):
        sim.set(name, "Running", progress=reported(0.8, 0.9))
    sim.step()
    assert sim.verbs == []  # equal curves: a tie continues
    sim.set("digits-r1-t0", "Succeeded", result=ok(0.9, trial="t0"))
    sim.set("digits-r1-t1", "Succeeded", result=ok(0.91, trial="t1"))
    sim.step()
    assert sim.verbs == [("create", "digits-r1-t2")]
    return sim


@pytest.mark.parametrize(
    ("early_stopping", "min_epochs", "values", "stopped"),
    [
        ("median", 2, [0.1, 0.2], True),
        ("median", 2, [0.1], False),  # before earlyStoppingMinEpochs
        ("median", 3, [0.1, 0.2], False),
        ("median", 2, [0.1, 0.9], False),  # as good as the median: ties continue
        ("median", 2, [0.1, 0.2, 0.3], False),  # judged at epoch 3, which no other trial reached
        ("none", 2, [0.1, 0.2], False),
    ],
    ids=["worse", "too-early", "min-epochs", "tie", "past-the-others", "off"],
)
def test_median_stopping(early_stopping, min_epochs, values, stopped):
    sim = median_sim(early_stopping, min_epochs)
    sim.set("digits-r1-t2", "Running", progress=reported(*values))
    out = sim.step()
    trial = sim.trial("digits-r1-t2")
    if stopped:
        assert sim.verbs == [("delete", "digits-r1-t2")]
        assert (trial.state, trial.reason) == ("Stopped", c.MEDIAN_STOPPED)
        assert "worse than the median" in trial.message
        assert out.status.phase == "Succeeded" and out.status.model.trial == "digits-r1-t1"
        assert "TrialStopped" in [e.reason for e in out.events]
    else:
        assert sim.verbs == [] and trial.state == "Running" and out.status.phase == "Running"


# --- reconcile: suspend, restarts, rounds ---------------------------------------------------------


def test_suspend_and_resume():
    sim = Sim(searching(maxTrials=3, parallelism=1))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.4))
    sim.step()
    sim.change("suspend", True)
    out = sim.step()
    assert sim.verbs == [("suspend", "digits-r1-t0")]
    assert sim.jobs["digits-r1-t0"]["spec"]["runPolicy"]["suspend"] is True
    st = out.status
    assert st.phase == "Suspended" and st.round == 1
    for type_ in (c.READY, c.PROGRESSING, c.TRAINING_RUNNING):
        assert (cond(st, type_).status, cond(st, type_).reason) == (F, c.SUSPENDED)
    # the training operator suspends it; the run launches nothing while suspended, not even when it ends
    sim.set("digits-r1-t0", "Suspended", reason="PyTorchJobSuspended")
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Suspended"
    assert (sim.trial("digits-r1-t0").state, sim.trial("digits-r1-t0").message) == ("Pending", "suspended")
    assert sim.trial("digits-r1-t0").history == [0.4]
    sim.change("suspend", False)
    sim.step()
    assert sim.verbs == [("resume", "digits-r1-t0")] and sim.status.phase == "Running"
    assert sim.jobs["digits-r1-t0"]["spec"]["runPolicy"]["suspend"] is False


def test_a_run_suspended_from_the_start_launches_nothing():
    sim = Sim({**searching(maxTrials=2), "suspend": True})
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Suspended"
    sim.change("suspend", False)
    sim.step()
    assert sim.verbs == [("create", "digits-r1-t0")]
    assert sim.jobs["digits-r1-t0"]["spec"]["runPolicy"]["suspend"] is False


def test_suspending_stops_launches_after_a_trial_finishes():
    sim = Sim(searching(maxTrials=3, parallelism=1))
    sim.step()
    sim.change("suspend", True)
    sim.set("digits-r1-t0", "Succeeded", result=ok(trial="t0"))
    sim.step()
    assert sim.verbs == [] and sim.status.phase == "Suspended"


@pytest.mark.parametrize("created", [1, 2], ids=["first-create-only", "both-creates"])
def test_jobs_whose_status_write_was_lost_are_adopted(created):
    sim = Sim(searching(maxTrials=3, parallelism=2))
    first = sim.step(apply=False)
    sim.apply(first, only=created)
    for name in list(sim.jobs):
        sim.set(name, "Running")
    wanted = {t.name: t.parameters for t in first.status.trials}
    sim.status = TrainingRunStatus()  # the operator restarted before the status was written
    out = sim.step()
    creates = [name for verb, name in sim.verbs if verb == "create"]
    assert creates == [f"digits-r1-t{i}" for i in range(created, 2)]  # never a second create for an index
    assert {t.name: t.parameters for t in out.status.trials} == wanted
    assert [t.state for t in out.status.trials][:created] == ["Running"] * created
    assert [a.body for a in out.actions if a.verb == "create"] == [a.body for a in first.actions[created:]]
    assert out.status.round == 1


def test_a_pending_trial_whose_job_is_missing_is_created_again():
    sim = Sim(searching(maxTrials=3, parallelism=2))
    first = sim.step(apply=False)  # the creates were lost, the status written
    again = sim.step()
    assert [(a.verb, a.name) for a in again.actions] == [(a.verb, a.name) for a in first.actions]
    assert [a.body for a in again.actions] == [a.body for a in first.actions]
    assert [(t.name, t.parameters) for t in again.status.trials] == [
        (t.name, t.parameters) for t in first.status.trials
    ]
    assert sim.step().actions == []


@pytest.mark.parametrize(
    ("old_state", "deleted"),
    [(None, True), ("Running", True), ("Suspended", True), ("Succeeded", False), ("Failed", False)],
)
def test_jobs_of_an_older_round_are_deleted_unless_finished(old_state, deleted):
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", old_state, progress=reported(0.3))
    sim.step()
    sim.change("hyperparameters.learningRate", 0.02)
    out = sim.step()
    expected = [("delete", "digits-r1-t0")] if deleted else []
    assert sim.verbs == [*expected, ("create", "digits-r2-t0")]
    assert out.status.round == 2 and [t.name for t in out.status.trials] == ["digits-r2-t0"]
    assert out.status.trials[0].history == []
    if not deleted:  # a finished job of the old round is left alone, also on later passes
        sim.step()
        assert sim.verbs == []


def test_a_deleting_job_of_an_older_round_is_not_deleted_again():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Running")
    sim.jobs["digits-r1-t0"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    sim.change("model.architecture", "resnet34")
    sim.step()
    assert sim.verbs == [("create", "digits-r2-t0")]


# --- pure helpers ---------------------------------------------------------------------------------


def test_a_diverged_trial_keeps_the_status_json():
    sim = Sim(searching(maxTrials=2, objective={"metric": "val_loss", "direction": "minimize"}))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(None, 0.5, metric="val_loss"))
    out = sim.step()
    json.dumps(out.status.wire(), allow_nan=False)  # the API server accepts no NaN


def test_a_running_trials_objective_ignores_nan():
    sim = Sim(searching(maxTrials=2))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(None, 0.5))
    sim.step(apply=False)
    assert sim.trial("digits-r1-t0").objective == 0.5


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (None, ("Pending", "", "")),
        ([{"type": "Created", "status": "True"}], ("Pending", "", "")),
        ([{"type": "Running", "status": "True", "reason": "R"}], ("Running", "R", "")),
        ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}], ("Succeeded", "", "")),
        (
            [
                {"type": "Running", "status": "True"},
                {"type": "Failed", "status": "True", "reason": "X", "message": "m"},
            ],
            ("Failed", "X", "m"),
        ),
        ([{"type": "Running", "status": "False"}, {"type": "Suspended", "status": "True"}], ("Suspended", "", "")),
        ([{"type": "Succeeded", "status": "False"}, {"type": "Restarting", "status": "True"}], ("Pending", "", "")),
    ],
    ids=["none", "created", "running", "succeeded", "failed-wins", "suspended", "restarting"],
)
def test_job_state(conditions, expected):
    job = {"metadata": {"name": "j"}}
    if conditions is not None:
        job["status"] = {"conditions": conditions}
    assert job_state(job) == expected


def _pod(state=None, last=None):
    status: dict[str, Any] = {"name": "pytorch"}
    if state is not None:
        status["state"] = state
    if last is not None:
        status["lastState"] = last
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [status]}}


@pytest.mark.parametrize(
    ("pods_", "expected"),
    [
        ([], None),
        ([_pod({"running": {}})], None),
        ([_pod({"terminated": {"finishedAt": "t1", "message": "now"}})], "now"),
        (
            [
                _pod(
                    {"waiting": {"reason": "CrashLoopBackOff"}},
                    {"terminated": {"finishedAt": "t1", "message": "before"}},
                )
            ],
            "before",
        ),
        (
            [
                _pod({"running": {}}, {"terminated": {"finishedAt": "2026-01-01T00:00:01Z", "message": "old"}}),
                _pod({"waiting": {}}, {"terminated": {"finishedAt": "2026-01-01T00:00:09Z", "message": "new"}}),
            ],
            "new",
        ),
        ([_pod({"terminated": {"finishedAt": "t2"}}, {"terminated": {"finishedAt": "t1", "message": "x"}})], ""),
    ],
    ids=["no-pods", "running", "terminated", "last-state", "latest-last-state", "current-wins"],
)
def test_master_result(pods_, expected):
    assert master_result(pods_) == expected


def test_inspected_names_the_current_rounds_unfinished_jobs():
    status = TrainingRunStatus(
        round=2,
        trials=[
            TrialStatus(name="digits-r2-t0", state="Succeeded"),
            TrialStatus(name="digits-r2-t1", state="Running"),
            TrialStatus(name="digits-r2-t2", state="Stopped"),
        ],
    )
    jobs = [build(round_=r, index=i) for r, i in ((1, 0), (2, 0), (2, 1), (2, 2), (2, 3))]
    assert inspected(status, jobs) == ["digits-r2-t1", "digits-r2-t3"]


def test_a_job_adopted_after_a_lost_first_status_write_has_its_result_read():
    sim = Sim()
    sim.step()
    sim.set("digits-r1-t0", "Succeeded", result=ok(trial="r1"))
    sim.status = TrainingRunStatus()  # the first status write was lost; the job finished meanwhile
    sim.step()
    assert sim.status.phase == "Succeeded" and sim.status.model_version == 1


def test_asha_stops_a_trial_at_a_rung_and_a_restart_decides_the_same():
    """ASHA with eta 2 from epoch 1: the second trial at rung 0 must beat the first to carry on.
    Every reconcile reads its status back from JSON; a second operator started from that status
    alone (a restart) makes the same decisions, and a trial past a rung is never judged there again."""
    spec = searching(
        maxTrials=3,
        parallelism=2,
        earlyStopping="asha",
        earlyStoppingMinEpochs=1,
        successiveHalving={"reductionFactor": 2},
    )
    sim = Sim(spec)
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.8))
    sim.step()
    assert sim.verbs == [] and sim.trial("digits-r1-t0").rung_epochs == [1]
    sim.set("digits-r1-t1", "Running", progress=reported(0.5))
    restarted = Sim(spec)
    restarted.status, restarted.jobs, restarted.seen = (
        TrainingRunStatus.model_validate_json(sim.status.model_dump_json()),
        copy.deepcopy(sim.jobs),
        dict(sim.seen),
    )
    out = sim.step()
    assert sim.verbs == [("delete", "digits-r1-t1"), ("create", "digits-r1-t2")]
    stopped = sim.trial("digits-r1-t1")
    assert (stopped.state, stopped.reason, stopped.rung_epochs) == ("Stopped", c.SUCCESSIVE_HALVING_STOPPED, [1])
    assert "val_accuracy 0.5 at epoch 1 (rung 0 of asha) is not in the top 1 of the 2 trials" in stopped.message
    assert "TrialStopped" in [e.reason for e in out.events]
    again = restarted.step()
    assert restarted.verbs == sim.verbs and again.status.wire() == out.status.wire()
    # t0 goes on to rung 1 (epoch 2) alone; t2 then beats it at rung 0, which does not undo t0's promotion.
    sim.set("digits-r1-t0", "Running", progress=reported(0.8, 0.3))
    sim.set("digits-r1-t2", "Running", progress=reported(0.9))
    sim.step()
    assert sim.verbs == []
    assert sim.trial("digits-r1-t0").rung_epochs == [1, 2] and sim.trial("digits-r1-t2").rung_epochs == [1]
    # At rung 1 the second arrival must beat 0.3: 0.2 does not.
    sim.set("digits-r1-t2", "Running", progress=reported(0.9, 0.2))
    sim.step()
    assert sim.verbs == [("delete", "digits-r1-t2")]
    assert sim.trial("digits-r1-t2").reason == c.SUCCESSIVE_HALVING_STOPPED
    assert sim.trial("digits-r1-t0").state == "Running"


@pytest.mark.parametrize(
    ("epochs", "extra", "halving", "rungs"),
    [
        # Seed 0 puts trial 0 in bracket 1 of 3 (max 9 epochs): its first rung is epoch 3.
        (9, None, None, [3]),
        (2, {"name": "epochs", "type": "choice", "values": ["9", "10"]}, None, [3]),
        # maxEpochs 1 leaves one bracket, which starts at epoch 1.
        (9, None, {"maxEpochs": 1}, [1, 3]),
    ],
    ids=["hyperparameters-epochs", "searched-epochs", "max-epochs"],
)
def test_hyperband_brackets_span_the_largest_epochs_a_trial_may_get(epochs, extra, halving, rungs):
    spec = searching(maxTrials=2, parallelism=2, earlyStopping="hyperband", earlyStoppingMinEpochs=1)
    spec["hyperparameters"] = {"epochs": epochs}
    if extra:
        spec["search"]["parameters"].append(extra)
    if halving:
        spec["search"]["successiveHalving"] = halving
    sim = Sim(spec)
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(*[0.5] * 8))
    sim.step()
    assert sim.trial("digits-r1-t0").rung_epochs == rungs
    assert sim.trial("digits-r1-t0").state == "Running" and sim.verbs == []
