"""The TrainJob of one TrainingRun trial (Kubeflow Trainer v2, `trainer.kubeflow.org/v1alpha1`).

A TrainJob names a runtime (`spec.workers.runtimeRef`, default the operator's
`training_runtime`, the ClusterTrainingRuntime the chart installs) that holds the pod template:
the restricted security contexts, the scratch and shared-memory volumes, the progress port, the
grace period and the JobSet's failure policy. Per trial, the operator adds what `trial_parts` gives
every backend: the trainer image and command, the training config, resources per node, the node
and process counts, the artifact and checkpoint volumes, node selector and tolerations.

Trainer v2 runs the TrainJob as a JobSet of the same name whose `node` Job has one pod per node,
and gives each the `PET_*` variables that `torch.distributed.run` reads (nodes, processes per
node, this node's rank, the master's address): the command is therefore always that launcher.
Rank 0 is the pod of completion index 0 (`master_selector`).

What Trainer v2.0's `podSpecOverrides` cannot carry is refused by `unsupported` with the fields
named, rather than dropped without a word.
"""

from __future__ import annotations

from typing import Any

from modelops_operator.api.names import (
    CLUSTER_TRAINING_RUNTIME,
    JOB_COMPLETION_INDEX_LABEL,
    JOBSET_NAME_LABEL,
    TRAINJOB,
)
from modelops_operator.api.trainingrun import RuntimeRef, TrainingRunSpec
from modelops_operator.builders.common import owner_reference, pod_settings
from modelops_operator.builders.trainingrun import add_mlflow_tracking, trial_parts
from modelops_operator.settings import OperatorSettings

#: The replicated Job of a torch runtime whose pods run the trainer, and its container (Trainer
#: v2's convention: `constants.Node`).
NODE = "node"


def runtime_ref(spec: TrainingRunSpec, settings: OperatorSettings) -> RuntimeRef:
    """The runtime a run's TrainJobs name: the spec's, else the operator's default."""
    return spec.workers.runtime_ref or RuntimeRef(name=settings.training_runtime, kind=CLUSTER_TRAINING_RUNTIME.kind)


def unsupported(spec: TrainingRunSpec, settings: OperatorSettings) -> list[str]:
    """The spec fields (and operator defaults) a TrainJob of Trainer v2.0 cannot carry per trial:
    its pod overrides have no priority class, pull Secrets, pod labels or annotations, or envFrom,
    and its runtime (not the trial) sets the failure and time limits. Empty when it fits."""
    w, policy = spec.workers, spec.run_policy
    ps = pod_settings(settings.workload_defaults, spec.pod_settings)
    found = []
    if w.gang_scheduling:
        found.append("spec.workers.gangScheduling (the runtime's podGroupPolicy does it)")
    if w.placement.priority_class_name:
        found.append("spec.workers.placement.priorityClassName")
    if ps.image_pull_secrets:
        found.append("podSettings.imagePullSecrets")
    if ps.labels:
        found.append("podSettings.labels")
    if ps.annotations:
        found.append("podSettings.annotations")
    if ps.env_from:
        found.append("podSettings.envFrom")
    if policy.active_deadline_seconds is not None:
        found.append("spec.runPolicy.activeDeadlineSeconds")
    if policy.ttl_seconds_after_finished is not None:
        found.append("spec.runPolicy.ttlSecondsAfterFinished")
    return found


def build_trainjob(
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
    """The `trainer.kubeflow.org/v1alpha1` TrainJob of trial `index` of round `round_`."""
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
    # MLflow's variables and CA volume, laid on the trainer's container as on a pod.
    pod: dict[str, Any] = {
        "containers": [{"name": NODE, "env": [dict(v) for v in parts.env], "volumeMounts": list(parts.mounts)}],
        "volumes": list(parts.volumes),
    }
    add_mlflow_tracking(pod, spec, meta["namespace"], meta["name"])
    container = pod["containers"][0]
    ps = pod_settings(settings.workload_defaults, spec.pod_settings)
    ours = {v["name"] for v in container["env"]}
    env = [*container["env"], *(v.wire() for v in ps.env if v.name not in ours)]
    trainer: dict[str, Any] = {
        "image": settings.trainer_image,
        "command": ["python", "-m", "torch.distributed.run", *parts.program],
        "args": list(parts.args),
        "env": env,
        "numNodes": spec.workers.nodes,
        "numProcPerNode": parts.nproc,
    }
    if parts.resources:
        trainer["resourcesPerNode"] = parts.resources
    override: dict[str, Any] = {"targetJobs": [{"name": NODE}]}
    if pod["volumes"]:
        override["volumes"] = pod["volumes"]
    if container["volumeMounts"]:
        override["containers"] = [{"name": NODE, "volumeMounts": container["volumeMounts"]}]
    if spec.workers.placement.node_selector:
        override["nodeSelector"] = dict(spec.workers.placement.node_selector)
    if parts.tolerations:
        override["tolerations"] = parts.tolerations
    if ps.service_account_name:
        override["serviceAccountName"] = ps.service_account_name
    ref = runtime_ref(spec, settings)
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": ref.name, "apiGroup": TRAINJOB.group, "kind": ref.kind},
        "trainer": trainer,
        "suspend": suspend,
    }
    if len(override) > 1:
        job_spec["podSpecOverrides"] = [override]
    return {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "metadata": {
            "name": parts.name,
            "namespace": meta["namespace"],
            "labels": parts.labels,
            "annotations": parts.annotations,
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }


def trainjob_state(job: dict[str, Any], master_running: bool) -> tuple[str, str, str]:
    """(`Succeeded` | `Failed` | `Suspended` | `Running` | `Pending`, reason, message) of a TrainJob:
    its conditions `Complete`, `Failed` and `Suspended`; otherwise Running while its rank-0 pod runs
    (`master_running`: Trainer v2.0 leaves `status.jobsStatus` empty, so the pod tells)."""
    status = job.get("status") or {}
    conds = {x.get("type"): x for x in status.get("conditions") or [] if x.get("status") == "True"}
    for kind, state in (("Complete", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended")):
        if kind in conds:
            return state, conds[kind].get("reason") or "", conds[kind].get("message") or ""
    return ("Running", "", "") if master_running else ("Pending", "", "")


def trainjob_rank0_container(job: dict[str, Any]) -> dict[str, Any]:
    """The trainer of a TrainJob (one template for every node, rank 0 among them)."""
    trainer: dict[str, Any] = job["spec"]["trainer"]
    return trainer


def master_selector(name: str) -> str:
    """The label selector of the pod that holds rank 0 of TrainJob `name`."""
    return f"{JOBSET_NAME_LABEL}={name},{JOB_COMPLETION_INDEX_LABEL}=0"
