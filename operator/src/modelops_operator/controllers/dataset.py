"""The Dataset controller: observe its Jobs and the current Job's pods, decide (`reconcile.dataset`),
carry out the Job calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelops_operator import kube
from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.controllers.common import execute_all, names_taken, not_created, owned
from modelops_operator.reconcile import dataset as rd
from modelops_operator.reconcile.actions import Event
from modelops_operator.reconcile.pods import eviction, pod_problem, termination_message
from modelops_operator.reconcile.status import refused
from modelops_operator.settings import OperatorSettings


def observe(body: dict[str, Any], old: DatasetStatus, now: datetime) -> rd.DatasetObserved:
    """The Dataset's Jobs, and the pods of the one status names (why it cannot start while it
    runs, its result once it finished)."""
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    jobs = owned(meta.get("uid"), kube.list_jobs(ns, f"{names.DATASET_LABEL}={name}"))
    observed = rd.DatasetObserved(jobs=jobs, now=now)
    current = next((j for j in jobs if j["metadata"]["name"] == old.job_name), None)
    if current is not None:
        pods = kube.list_pods(ns, f"job-name={current['metadata']['name']}")
        if rd.job_state(current)[0] == "Active":
            observed.pod_problem = pod_problem(pods, now) or not_created(pods, current)
        else:
            observed.result_message = termination_message(pods)
            observed.eviction = eviction(pods)
    return observed


def reconcile(
    body: dict[str, Any], spec: DatasetSpec, old: DatasetStatus, settings: OperatorSettings, now: datetime
) -> tuple[DatasetStatus, list[Event]]:
    """Observe, decide, act; the new status and the Events to post."""
    at = now.replace(microsecond=0)  # conditions keep the second, as Kubernetes stores them
    outcome = rd.reconcile_dataset(body, spec, old, observe(body, old, at), settings)
    if taken := names_taken(outcome.actions):
        generation = outcome.status.observed_generation
        phase = old.phase if old.version else "Failed"
        return refused(old, generation, c.NAME_CONFLICT, taken, phase, at=at), []
    execute_all(body, outcome.actions)
    return outcome.status, outcome.events
