"""What the operator reads from the pods of its children, for every kind: why a pod cannot start
(in Kubernetes' own words, with what to do), the result a program left in its termination
message, and pod settings the admin has not allowed.

A pod the API server refuses (a ServiceAccount that does not exist, a ResourceQuota, Pod Security)
is never created, so there is no pod to read a reason from: the controller that tried says so in a
Warning Event on its object (`FailedCreate` from the Job controller, `FailedCreatePod` from the
training operator) and, for a Deployment, in its `ReplicaFailure` condition. A pod that exists but
cannot pull its image (a missing or wrong pull Secret) says so in its container state
(`pod_problem`). Each becomes a message that names the cause and what to do.

A pod the kubelet evicted (its disk or memory limit, or a node short of disk or memory) is left
behind with phase Failed and reason Evicted, and its controller makes another. A recent eviction
whose owner has no Ready pod since is why the workload is short (`pod_problem`); one that ended a
Job is why it failed (`eviction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from modelops_operator.api.common import ApiModel, PodSettings
from modelops_operator.builders.common import pod_settings
from modelops_operator.reconcile.rollout import parse_stamp
from modelops_operator.settings import OperatorSettings

#: Container waiting reasons that mean "this will not start by itself soon".
STUCK = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
        "NoLocalProgram",
        "SecretNotFound",
        "ConfigMapNotFound",
        "MountPathShadowsHost",
    }
)


#: How long an eviction may explain a workload that is short of pods: evicted pods stay until
#: something deletes them, and an old one explains nothing about today.
EVICTION_WINDOW = timedelta(minutes=10)


def pod_problem(pods: list[dict[str, Any]], now: datetime | None = None) -> str | None:
    """Why a child pod cannot start, from its conditions and container states, or why one was
    evicted in the last `EVICTION_WINDOW` before `now` (when its owner has no Ready pod created
    since); None when neither."""
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message') or cond.get('reason')}"
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                said = f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
                return hint(said)
    since = (now or datetime.now(UTC)) - EVICTION_WINDOW
    recent = [p for p in pods if (at := evicted_at(p)) is not None and at >= since and not _replaced(p, at, pods)]
    return eviction(recent)


def evicted_at(pod: dict[str, Any]) -> datetime | None:
    """When the kubelet evicted `pod` (its DisruptionTarget condition's time, else its latest
    condition's: the kubelet turns Ready False as it evicts), or None when it was not evicted."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed" or status.get("reason") != "Evicted":
        return None
    conditions = [x for x in status.get("conditions") or [] if x.get("lastTransitionTime")]
    marked = [x for x in conditions if x.get("type") == "DisruptionTarget"]
    stamp = max((x["lastTransitionTime"] for x in marked or conditions), default=None)
    stamp = stamp or pod["metadata"].get("creationTimestamp")
    return parse_stamp(stamp) or datetime.min.replace(tzinfo=UTC)


def _owner(pod: dict[str, Any]) -> tuple[str, str] | None:
    """The kind and name of the pod's controller; for a ReplicaSet, its Deployment's name (the
    ReplicaSet's without `-<pod-template-hash>`), so that a new ReplicaSet's pod replaces an old one's."""
    meta = pod["metadata"]
    ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if ref is None:
        return None
    suffix = "-" + ((meta.get("labels") or {}).get("pod-template-hash") or "")
    name = ref.get("name") or ""
    if ref.get("kind") == "ReplicaSet" and suffix != "-" and name.endswith(suffix):
        return "Deployment", name.removesuffix(suffix)
    return ref.get("kind") or "", name


def _replaced(evicted: dict[str, Any], at: datetime, pods: list[dict[str, Any]]) -> bool:
    """Whether a Ready pod of the evicted pod's owner (`_owner`) was created after the eviction at `at`."""
    owner = _owner(evicted)
    return owner is not None and any(
        _owner(pod) == owner
        and (parse_stamp(pod["metadata"].get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)) >= at
        and any(
            x.get("type") == "Ready" and x.get("status") == "True"
            for x in (pod.get("status") or {}).get("conditions") or []
        )
        for pod in pods
    )


#: What to do about an eviction, by the words the kubelet's message starts with
#: (pkg/kubelet/eviction/helpers.go).
EVICTION_HINTS = (
    (
        "The node was low on resource",
        "the node ran short and the kubelet evicted pods to recover: free that resource on the node, or give the "
        "pods a request for it in spec.resources.requests so that the scheduler places them where it fits",
    ),
    (
        "Pod ephemeral local storage usage exceeds",
        "the pod wrote more to its node's disk (its /tmp, its logs) than its limit allows: raise "
        "spec.resources.limits.ephemeral-storage",
    ),
    (
        "Container ",  # "Container x exceeded its local ephemeral storage limit", "Container x was using ..."
        "the container used more than its limit or request allows: raise it in spec.resources",
    ),
    (
        "Usage of EmptyDir volume",
        "the pod filled its scratch volume (/tmp), whose size the operator sets: for a Dataset, from "
        "spec.limits.archiveMaxBytes",
    ),
)


def eviction(pods: list[dict[str, Any]]) -> str | None:
    """The latest eviction among `pods`, in the kubelet's words with what to do; None when the
    kubelet evicted none of them."""
    evicted = [(at, pod) for pod in pods if (at := evicted_at(pod)) is not None]
    if not evicted:
        return None
    _, pod = max(evicted, key=lambda found: found[0])
    message = ((pod.get("status") or {}).get("message") or "no message").strip().rstrip(".")
    others = f" (and {len(evicted) - 1} more)" if len(evicted) > 1 else ""
    said = f"pod {pod['metadata']['name']}{others} was evicted by its node: {message}"
    todo = next((what for start, what in EVICTION_HINTS if message.startswith(start)), None)
    return f"{said}; {todo}" if todo else said


def _last_terminated(pods: list[dict[str, Any]], state: str) -> str | None:
    finished = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get(state) or {}).get("terminated")
            if terminated:
                finished.append((terminated.get("finishedAt") or "", terminated.get("message") or ""))
    return max(finished)[1] if finished else None


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The termination message of the most recently finished of `pods` ("" when it left none; None
    while none has finished)."""
    return _last_terminated(pods, "state")


def master_result(pods: list[dict[str, Any]]) -> str | None:
    """A trial's master pod's last termination message (also from a container's last state: a
    restarted container keeps the message of its previous run there)."""
    found = termination_message(pods)
    return found if found is not None else _last_terminated(pods, "lastState")


#: Reasons of the Warning Events a controller records when the API server refuses its pod (the Job
#: controller, the training operator), or when Kubeflow Trainer v2 could not create a TrainJob's
#: JobSet (a webhook or the API server refused what the runtime and the TrainJob make).
CREATE_FAILED = frozenset({"FailedCreate", "FailedCreatePod", "TrainJobResourcesCreationFailed"})

SERVICE_ACCOUNT_HINT = (
    "create that ServiceAccount in this namespace (the controller retries by itself), or name an existing one in "
    "spec.podSettings.serviceAccountName (the operator-wide default is the chart's workloadDefaults.serviceAccountName)"
)
PULL_HINT = (
    "check the image name and that the registry's credentials are in a Secret of this namespace listed in "
    "spec.podSettings.imagePullSecrets (or the chart's workloadDefaults.imagePullSecrets)"
)


def hint(problem: str) -> str:
    """`problem` with what to do about it, where the cause is one of the pod settings."""
    if "error looking up service account" in problem or ("serviceaccount" in problem and "not found" in problem):
        return f"{problem}; {SERVICE_ACCOUNT_HINT}"
    if any(word in problem for word in ("ErrImagePull", "ImagePullBackOff")):
        return f"{problem}; {PULL_HINT}"
    return problem


def creation_problem(events: list[dict[str, Any]]) -> str | None:
    """Why a controller could not create its pods, from the Warning Events on its object (newest
    first); None when it reported no such failure."""
    failed = [e for e in events if e.get("type") == "Warning" and e.get("reason") in CREATE_FAILED]
    if not failed:
        return None
    latest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    message = (latest.get("message") or latest["reason"]).removeprefix("Error creating: ")
    return hint(f"no pod could be created: {message}")


def replica_failure(deployments: Sequence[dict[str, Any] | None]) -> str | None:
    """Why a Deployment's ReplicaSet could not create pods (its `ReplicaFailure` condition)."""
    for deployment in deployments:
        for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                name = deployment["metadata"]["name"] if deployment else ""
                return hint(f"Deployment {name}: no pod could be created: {cond.get('message') or cond.get('reason')}")
    return None


def refused_pod_settings(spec: ApiModel, settings: OperatorSettings) -> str | None:
    """Why a spec's `podSettings` may not be used here, or None: a ServiceAccount or Secret the
    admin has not allowed (the workload defaults' own are always allowed)."""
    own = getattr(spec, "pod_settings", None)
    if not isinstance(own, PodSettings):
        return None
    defaults = settings.workload_defaults
    merged = pod_settings(defaults, own)
    problems = []
    account = merged.service_account_name
    allowed = {*settings.workload_service_accounts, defaults.service_account_name}
    if account and "*" not in allowed and account not in allowed:
        problems.append(
            f"spec.podSettings.serviceAccountName: {account} is not one the operator's admin allows "
            "(settings.workloadServiceAccounts)"
        )
    secrets = sorted(merged.secrets() - defaults.secrets() - set(settings.workload_secrets))
    if secrets and "*" not in settings.workload_secrets:
        problems.append(
            f"spec.podSettings: Secrets {', '.join(secrets)} are not ones the operator's admin allows "
            "(settings.workloadSecrets)"
        )
    jobs = getattr(spec, "jobs", None)  # a ModelDeployment's job queue: its Redis URL's Secret
    job_secrets = sorted(jobs.secrets() - defaults.secrets() - set(settings.workload_secrets)) if jobs else []
    if job_secrets and "*" not in settings.workload_secrets:
        problems.append(
            f"spec.jobs.redisSecretRef: Secret {', '.join(job_secrets)} is not one the operator's admin allows "
            "(settings.workloadSecrets)"
        )
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": the pods would lend this object's author their access; ask the admin, or leave them out"
    )
