"""Pods that cannot run, in Kubernetes' own words, and pod settings the admin has not allowed.

A pod the API server refuses (a ServiceAccount that does not exist, a ResourceQuota, Pod Security)
is never created, so there is no pod to read a reason from: the controller that tried says so in a
Warning Event on its object (`FailedCreate` from the Job controller, `FailedCreatePod` from the
training operator) and, for a Deployment, in its `ReplicaFailure` condition. A pod that exists but
cannot pull its image (a missing or wrong pull Secret) says so in its container state
(`reconcile.dataset.pod_problem`). Each becomes a message that names the cause and what to do.
"""

from __future__ import annotations

from typing import Any

from modelops_operator.api.common import ApiModel, PodSettings
from modelops_operator.builders.common import pod_settings
from modelops_operator.settings import OperatorSettings

#: Reasons of the Warning Events a controller records when the API server refuses its pod.
CREATE_FAILED = frozenset({"FailedCreate", "FailedCreatePod"})

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


def replica_failure(deployments: list[dict[str, Any] | None]) -> str | None:
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
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": the pods would lend this object's author their access; ask the admin, or leave them out"
    )
