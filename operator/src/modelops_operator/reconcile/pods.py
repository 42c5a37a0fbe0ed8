"""What the operator reads from the pods of its children, for every kind: why a pod cannot start,
and the result a program left in its termination message."""

from __future__ import annotations

from typing import Any

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


def pod_problem(pods: list[dict[str, Any]]) -> str | None:
    """Why a child pod cannot start, from its conditions and container states; None when it can."""
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message') or cond.get('reason')}"
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


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
