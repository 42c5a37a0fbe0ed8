"""What Kueue says about a trial: its Workload's conditions read as one admission state.

Kueue (`kueue.x-k8s.io`) holds a job suspended until its Workload is admitted by a ClusterQueue's
quota, and suspends it again when the Workload is evicted (preempted by a higher-priority workload,
deactivated). The operator therefore never un-suspends a PyTorchJob that Kueue manages; it reads
the Workload to tell the user why a trial waits, and for its own `spec.suspend` it deactivates the
Workload (`spec.active: false`, marked with `DEACTIVATED_ANNOTATION` so that only a Workload it
deactivated is activated again).

The conditions read (Kueue v1beta2, the same in v1beta1): `Admitted`, `QuotaReserved` (False with
reason `Inadmissible` when the LocalQueue or ClusterQueue does not exist or is inactive, `Pending`
with the flavor assigner's message otherwise), `Evicted` (reason `Preempted`, `Deactivated`, ...),
`Preempted`, `Finished`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modelops_operator.api.names import DEACTIVATED_ANNOTATION

AdmissionState = Literal["Admitted", "Queued", "Preempted", "QueueNotFound", "QuotaExceeded", "Deactivated", "Finished"]

#: Phrases of Kueue's flavor assigner for a request that no flavor of the ClusterQueue can ever hold
#: (more than its quota plus what it may borrow, a resource it has no quota for, a node selector no
#: flavor matches), as opposed to "insufficient unused quota" (wait, or preempt).
_NEVER_FITS = ("> maximum capacity", "unavailable in ClusterQueue", "doesn't match node affinity")


@dataclass(frozen=True)
class Admission:
    """A trial's Workload as the operator reads it."""

    name: str
    """The Workload's name."""
    state: AdmissionState
    reason: str
    """Kueue's reason, from the condition that decided `state`."""
    message: str
    """Kueue's message."""
    active: bool
    """`spec.active` (False: deactivated, never admitted until activated again)."""
    ours: bool
    """Deactivated by the operator (`DEACTIVATED_ANNOTATION`)."""
    cluster_queue: str | None = None
    """The ClusterQueue that admitted it, when admitted."""


def _said(cond: dict[str, Any] | None) -> tuple[str, str]:
    return (str((cond or {}).get("reason") or ""), str((cond or {}).get("message") or ""))


def _state(conds: dict[str, dict[str, Any]], active: bool) -> tuple[AdmissionState, str, str]:
    """(state, Kueue's reason, Kueue's message) from a Workload's conditions."""
    true = {t: x for t, x in conds.items() if x.get("status") == "True"}
    pending = conds.get("QuotaReserved") if "QuotaReserved" not in true else None
    p_reason, p_message = _said(pending)
    evicted = true.get("Evicted")
    found: tuple[AdmissionState, str, str]
    if "Finished" in true:
        found = ("Finished", *_said(true["Finished"]))
    elif "Admitted" in true:
        found = ("Admitted", *_said(true["Admitted"]))
    elif not active:
        reason, message = _said(evicted)
        found = ("Deactivated", reason or "Deactivated", message)
    elif evicted is not None and evicted.get("reason") == "Preempted":
        why = _said(true.get("Preempted") or evicted)[1]
        found = ("Preempted", "Preempted", f"{why}; {p_message}" if p_message and p_message != why else why)
    elif p_reason == "Inadmissible":
        found = ("QueueNotFound", p_reason, p_message)
    elif any(p in p_message for p in _NEVER_FITS) and "insufficient unused quota" not in p_message:
        found = ("QuotaExceeded", p_reason, p_message)
    elif "QuotaReserved" in true:  # quota held, admission checks not passed yet
        found = ("Queued", "QuotaReserved", _said(true["QuotaReserved"])[1])
    else:
        found = ("Queued", p_reason or "Pending", p_message)
    return found


def admission(workload: dict[str, Any]) -> Admission:
    """The admission state of a Kueue Workload."""
    meta, spec, status = workload.get("metadata") or {}, workload.get("spec") or {}, workload.get("status") or {}
    conds = {str(x.get("type")): x for x in status.get("conditions") or []}
    active = spec.get("active") is not False
    state, reason, message = _state(conds, active)
    return Admission(
        name=str(meta.get("name") or ""),
        state=state,
        reason=reason,
        message=message,
        active=active,
        ours=(meta.get("annotations") or {}).get(DEACTIVATED_ANNOTATION) == "true",
        cluster_queue=(status.get("admission") or {}).get("clusterQueue") if state == "Admitted" else None,
    )


def owned_by(workloads: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Workload of each job (by job name), matched by the owner reference Kueue sets."""
    uids = {j["metadata"].get("uid"): j["metadata"]["name"] for j in jobs if j["metadata"].get("uid")}
    found: dict[str, dict[str, Any]] = {}
    for wl in workloads:
        for ref in (wl.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("uid") in uids:
                found[uids[ref["uid"]]] = wl
    return found
