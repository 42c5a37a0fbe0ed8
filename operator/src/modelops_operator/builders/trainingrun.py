"""The PyTorchJob of one TrainingRun trial, and the training config it hands the program.

Naming: `<run>-r<round>-t<index>` (the run's name truncated so that the pods the training operator
names after the job, `<job>-worker-<n>`, stay within 63 characters). The name is a pure function
of the run, the round and the trial number, so a retried create after an operator restart finds
the job it made before instead of launching the trial twice.

Each trial writes to `<artifact store>/runs/<namespace>/<run>/r<round>/<trial>/`; a trial that is
suspended and resumed (or whose pod is preempted) resumes from the checkpoint found there.

The pods run `python -m modelops_trainer.train --config-json $(MODELOPS_TRAIN_CONFIG)` (under
`torch.distributed.run` when a pod runs several processes), with the config validated by the
program (`modelops.dev/train-config/v1`), under the restricted Pod Security profile with a
read-only root filesystem: scratch space is an emptyDir at /tmp and shared memory for the data
loader an in-memory emptyDir at /dev/shm. With `spec.registry.mlflowTrackingUri` and `trackTrials`,
the container gets MLflow's own environment variables (`add_mlflow_tracking`), the CA Secret's
`ca.crt` mounted read-only, and, once the controller has checked the credentials Secret's annotation,
the credentials as `secretKeyRef`s (`with_mlflow_credentials`). `restartPolicy: ExitCode` lets the training operator
retry a pod killed by a signal (preemption, OOM: exit codes above 127) and fail fast on the
program's own errors (exit 1 or 2), where a retry would only fail again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from modelops_operator.api.names import (
    GPU,
    JOB_NAME_LABEL,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    PARAMETERS_ANNOTATION,
    PROGRESS_PORT,
    PROGRESS_PORT_ENV,
    PROGRESS_PORT_NAME,
    PYTORCHJOB,
    REPLICA_TYPE_LABEL,
    ROUND_LABEL,
    TRIAL_LABEL,
)
from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders.common import (
    apply_pod_settings,
    artifact_mounts,
    labels,
    owner_reference,
    place,
    pod_settings,
    restricted_container_security,
    restricted_pod_security,
    spec_hash,
)
from modelops_operator.settings import OperatorSettings

CONFIG_ENV = "MODELOPS_TRAIN_CONFIG"
CONFIG_VERSION = "modelops.dev/train-config/v1"
COMPONENT = "training-trial"
#: Spec fields that change the model a run produces; a change starts a new round of trials.
MODEL_FIELDS = ("datasetRef", "model", "hyperparameters", "search")
#: Room left in a 63-character name for what the training operator appends (`-worker-NNN`).
MAX_JOB_NAME = 52
#: Seconds a pod has after SIGTERM: the trainer writes a checkpoint before it exits.
GRACE_SECONDS = 120


def model_hash(spec: TrainingRunSpec) -> str:
    """Hash of the spec fields that determine the model."""
    wire = spec.wire()
    return spec_hash({k: wire.get(k) for k in MODEL_FIELDS})


def trial_name(run: str, round_: int, index: int) -> str:
    """`<run>-r<round>-t<index>`, the run's name truncated to fit."""
    tail = f"-r{round_}-t{index}"
    # Service and pod host names derive from it: a DNS label, so no dots (legal in a run's name).
    return run.replace(".", "-")[: MAX_JOB_NAME - len(tail)].rstrip("-") + tail


def run_output_uri(spec: TrainingRunSpec, namespace: str, name: str, settings: OperatorSettings) -> str:
    """Where this TrainingRun's trials write: `<base>/runs/<namespace>/<name>`."""
    base = (spec.checkpointing.uri or settings.artifact_uri).rstrip("/")
    return f"{base}/runs/{namespace}/{name}"


def trial_output_uri(base: str, round_: int, trial: str) -> str:
    return f"{base}/r{round_}/{trial}"


def train_config(
    run: dict[str, Any],
    spec: TrainingRunSpec,
    *,
    trial: str,
    parameters: dict[str, str],
    output_uri: str,
    dataset_uri: str,
    dataset_digest: str,
) -> dict[str, Any]:
    """The JSON the trainer receives (contract `modelops.dev/train-config/v1`)."""
    wire = spec.wire()
    objective = (spec.search.objective if spec.search else None) or None
    model = {k: v for k, v in wire["model"].items() if v is not None}
    config: dict[str, Any] = {
        "apiVersion": CONFIG_VERSION,
        "dataset": {"uri": dataset_uri, "digest": dataset_digest},
        "model": model,
        "hyperparameters": wire["hyperparameters"],
        "output": {"uri": output_uri},
        "checkpointing": {"everyEpochs": spec.checkpointing.every_epochs},
        "trial": {"name": trial, "parameters": parameters},
        "lineage": {"dataset": spec.dataset_ref.name, "trainingRun": run["metadata"]["name"]},
        "logging": {"format": "json"},
    }
    if objective is not None:
        config["objective"] = {"metric": objective.metric, "direction": objective.direction}
    return config


def _nproc(spec: TrainingRunSpec) -> int:
    w = spec.workers
    return w.procs_per_node or max(1, w.gpus_per_node)


@dataclass(frozen=True)
class TrialParts:
    """What every backend puts in a trial's job: its name, labels, parameters annotation, the
    training container's command and variables, the pods' resources, storage and placement."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    program: list[str]
    """The trainer's module, after the Python launcher each backend chooses."""
    args: list[str]
    env: list[dict[str, Any]]
    resources: dict[str, Any]
    volumes: list[dict[str, Any]]
    """The artifact store's and the checkpoint PVC's volumes (scratch space is each backend's)."""
    mounts: list[dict[str, Any]]
    tolerations: list[dict[str, Any]]
    nproc: int


def trial_parts(
    run: dict[str, Any],
    spec: TrainingRunSpec,
    settings: OperatorSettings,
    *,
    round_: int,
    index: int,
    parameters: dict[str, str],
    dataset_uri: str,
    dataset_digest: str,
) -> TrialParts:
    """The backend-neutral parts of trial `index` of round `round_`."""
    meta = run["metadata"]
    name = trial_name(meta["name"], round_, index)
    output = trial_output_uri(run_output_uri(spec, meta["namespace"], meta["name"], settings), round_, name)
    config = train_config(
        run,
        spec,
        trial=name,
        parameters=parameters,
        output_uri=output,
        dataset_uri=dataset_uri,
        dataset_digest=dataset_digest,
    )
    job_labels = {**labels("TrainingRun", meta["name"], COMPONENT), TRIAL_LABEL: name, ROUND_LABEL: str(round_)}
    w = spec.workers
    if w.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = w.queue_name
    if w.workload_priority_class:
        job_labels[KUEUE_PRIORITY_LABEL] = w.workload_priority_class
    volumes, mounts = artifact_mounts([config["output"]["uri"], config["dataset"]["uri"]], settings)
    if spec.checkpointing.pvc:
        path = urlparse(config["output"]["uri"]).path
        base = path.split("/runs/")[0] or "/"
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpointing.pvc}})
        mounts.append({"name": "checkpoints", "mountPath": base})
    nproc = _nproc(spec)
    resources: dict[str, Any] = {k: dict(v) for k, v in w.resources.wire().items() if v}
    tolerations = [t.wire() for t in w.placement.tolerations]
    if w.gpus_per_node:
        resources.setdefault("limits", {})[GPU] = str(w.gpus_per_node)
        resources.setdefault("requests", {})[GPU] = str(w.gpus_per_node)
        # What the ExtendedResourceToleration admission plugin would add: GPU nodes are usually
        # tainted so that only pods asking for GPUs land there.
        if not any(t.get("key") == GPU for t in tolerations):
            tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    return TrialParts(
        name=name,
        labels=job_labels,
        annotations={PARAMETERS_ANNOTATION: json.dumps(parameters, sort_keys=True)},
        program=["-m", "modelops_trainer.train"],
        args=["--config-json", f"$({CONFIG_ENV})"],
        env=[
            {"name": CONFIG_ENV, "value": json.dumps(config, sort_keys=True)},
            {"name": "MODELOPS_CACHE_DIR", "value": "/tmp/modelops-cache"},
            {"name": PROGRESS_PORT_ENV, "value": str(PROGRESS_PORT)},
        ],
        resources=resources,
        volumes=volumes,
        mounts=mounts,
        tolerations=tolerations,
        nproc=nproc,
    )


def _pod_template(spec: TrainingRunSpec, parts: TrialParts, settings: OperatorSettings) -> dict[str, Any]:
    volumes = [*parts.volumes, {"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [*parts.mounts, {"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    container: dict[str, Any] = {
        "name": "pytorch",  # the training operator finds the training container by this name
        "image": settings.trainer_image,
        # The training operator sets RANK, WORLD_SIZE and MASTER_ADDR for one process per pod;
        # torch.distributed.run starts several.
        "command": [*(["python", "-m", "torch.distributed.run"] if parts.nproc > 1 else ["python"]), *parts.program],
        "args": list(parts.args),
        "env": [dict(var) for var in parts.env],
        # Rank 0 (in the master pod) serves GET /progress (the operator) and /metrics (Prometheus).
        "ports": [{"name": PROGRESS_PORT_NAME, "containerPort": PROGRESS_PORT, "protocol": "TCP"}],
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if parts.resources:
        container["resources"] = parts.resources
    pod: dict[str, Any] = {
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
    }
    place(pod, spec.workers.placement)
    if parts.tolerations:
        pod["tolerations"] = parts.tolerations
    return pod


def build_pytorchjob(
    run: dict[str, Any],
    spec: TrainingRunSpec,
    settings: OperatorSettings,
    *,
    round_: int,
    index: int,
    parameters: dict[str, str],
    dataset_uri: str,
    dataset_digest: str,
    suspend: bool = False,
) -> dict[str, Any]:
    """The `kubeflow.org/v1` PyTorchJob of trial `index` of round `round_`."""
    meta = run["metadata"]
    parts = trial_parts(
        run,
        spec,
        settings,
        round_=round_,
        index=index,
        parameters=parameters,
        dataset_uri=dataset_uri,
        dataset_digest=dataset_digest,
    )
    w, policy = spec.workers, spec.run_policy
    template = {"metadata": {"labels": dict(parts.labels)}, "spec": _pod_template(spec, parts, settings)}
    add_mlflow_tracking(template["spec"], spec, meta["namespace"], meta["name"])  # before: ours win
    apply_pod_settings(template, pod_settings(settings.workload_defaults, spec.pod_settings), "pytorch")
    replica = {"restartPolicy": "ExitCode", "template": template}
    replicas: dict[str, Any] = {}
    if w.nodes > 1:
        replicas["Worker"] = {"replicas": w.nodes - 1, **json.loads(json.dumps(replica))}
    # Only the master pod holds rank 0, the one process that serves progress: Prometheus scrapes it.
    template["metadata"]["annotations"] = {
        **template["metadata"].get("annotations", {}),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PROGRESS_PORT),
        "prometheus.io/path": "/metrics",
    }
    replicas = {"Master": {"replicas": 1, **replica}, **replicas}
    run_policy: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        "cleanPodPolicy": policy.clean_pod_policy,
        "suspend": suspend,
    }
    if policy.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    if w.gang_scheduling:
        gang: dict[str, Any] = {"minAvailable": w.nodes}
        if w.queue_name:
            gang["queue"] = w.queue_name
        if w.placement.priority_class_name:
            gang["priorityClass"] = w.placement.priority_class_name
        run_policy["schedulingPolicy"] = gang
    job_spec: dict[str, Any] = {"runPolicy": run_policy, "pytorchReplicaSpecs": replicas}
    if parts.nproc > 1:
        job_spec["nprocPerNode"] = str(parts.nproc)
    return {
        "apiVersion": PYTORCHJOB.api_version,
        "kind": PYTORCHJOB.kind,
        "metadata": {
            "name": parts.name,
            "namespace": meta["namespace"],
            "labels": parts.labels,
            "annotations": parts.annotations,
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }


def pytorchjob_state(job: dict[str, Any], master_running: bool = False) -> tuple[str, str, str]:
    """(`Succeeded` | `Failed` | `Suspended` | `Running` | `Pending`, reason, message) of a PyTorchJob,
    from its conditions alone (`master_running` is not needed: the training operator says Running)."""
    conds = {x.get("type"): x for x in (job.get("status") or {}).get("conditions") or [] if x.get("status") == "True"}
    for state in ("Succeeded", "Failed", "Suspended", "Running"):
        if state in conds:
            return state, conds[state].get("reason") or "", conds[state].get("message") or ""
    return "Pending", "", ""


def pytorchjob_master_selector(name: str) -> str:
    """The label selector of the pod that holds rank 0 of PyTorchJob `name` (its Master)."""
    return f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}=master"


def pytorchjob_rank0_container(job: dict[str, Any]) -> dict[str, Any]:
    """The training container of a PyTorchJob's Master, the pod that holds rank 0."""
    container: dict[str, Any] = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return container


#: Where a CA Secret's `ca.crt` is mounted in trial pods.
MLFLOW_CA_DIR = "/etc/modelops/mlflow-ca"
#: Credentials Secret keys -> MLflow's environment variables (each optional: a Secret holds a
#: token or a user name and password).
MLFLOW_CREDENTIAL_ENV = {
    "token": "MLFLOW_TRACKING_TOKEN",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}


def add_mlflow_tracking(pod: dict[str, Any], spec: TrainingRunSpec, namespace: str, run: str) -> None:
    """Give the training container of `pod` MLflow's tracking settings (a no-op unless
    `spec.registry.mlflowTrackingUri` is set and `trackTrials` on): `MLFLOW_TRACKING_URI`,
    `MLFLOW_EXPERIMENT_NAME` (default `<namespace>/<run>`), the namespace for the run's tags
    (`MODELOPS_NAMESPACE`, from the downward API), and with `caSecret` its key `ca.crt` mounted
    read-only (only that key) under MLFLOW_TRACKING_SERVER_CERT_PATH. No credentials: see
    `with_mlflow_credentials`."""
    reg = spec.registry
    if not reg.mlflow_tracking_uri or not reg.track_trials:
        return
    container = pod["containers"][0]
    env = container.setdefault("env", [])
    env += [
        {"name": "MLFLOW_TRACKING_URI", "value": reg.mlflow_tracking_uri},
        {"name": "MLFLOW_EXPERIMENT_NAME", "value": reg.experiment_name or f"{namespace}/{run}"},
        {"name": "MODELOPS_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if reg.ca_secret:
        items = [{"key": "ca.crt", "path": "ca.crt"}]
        pod.setdefault("volumes", []).append(
            {"name": "mlflow-ca", "secret": {"secretName": reg.ca_secret, "items": items}}
        )
        container.setdefault("volumeMounts", []).append(
            {"name": "mlflow-ca", "mountPath": MLFLOW_CA_DIR, "readOnly": True}
        )
        env.append({"name": "MLFLOW_TRACKING_SERVER_CERT_PATH", "value": f"{MLFLOW_CA_DIR}/ca.crt"})


def with_mlflow_credentials(
    job: dict[str, Any], spec: TrainingRunSpec, rank0: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """A copy of the trial job `job` whose rank-0 container (`rank0` finds it in a job: the
    backend's) reads `spec.registry.credentialsSecret` as MLflow's credential variables
    (`secretKeyRef`, each key optional). The controller calls it only after checking that the
    Secret names this tracking server in its annotation `modelops.dev/mlflow-tracking-uri`: the
    tenant chooses the URL, and the trainer sends what it gets there. `job` unchanged when there
    is no Secret or no tracking."""
    reg = spec.registry
    if not reg.credentials_secret or not reg.mlflow_tracking_uri or not reg.track_trials:
        return job
    out: dict[str, Any] = json.loads(json.dumps(job))
    refs = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": reg.credentials_secret, "key": key, "optional": True}}}
        for key, env in MLFLOW_CREDENTIAL_ENV.items()
    ]
    # Only rank 0 tracks (the Master pod of a PyTorchJob): workers of a PyTorchJob never get the
    # credentials. A TrainJob has one container template for all its nodes, so they all get them.
    # The operator's variables win over spec.podSettings' of the same name, as in the builders.
    container = rank0(out)
    theirs = [var for var in container.get("env", []) if var["name"] not in MLFLOW_CREDENTIAL_ENV.values()]
    container["env"] = [*theirs, *refs]
    return out
