"""The TrainingRun controller: observe the Dataset, the trial jobs (PyTorchJobs and TrainJobs),
the current trials' rank-0 pods and their trainers' progress endpoints, decide
(`reconcile.trainingrun`), carry out the job calls and the MLflow registration.

A trial's job gets `spec.registry.credentialsSecret` (as MLflow's variables, on rank 0's container)
only once the Secret's annotation names the tracking server: the create action is completed here,
after reading the Secret, so the pure reconcile never sees one."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from modelops_operator import kube, mlflow, progress
from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.kinds import DATASET
from modelops_operator.api.names import CLUSTER_TRAINING_RUNTIME, TRAINING_RUNTIME
from modelops_operator.api.trainingrun import Registry, TrainingRunSpec, TrainingRunStatus
from modelops_operator.builders import trainingrun as bt
from modelops_operator.builders.backends import BACKENDS, TRAINJOB_BACKEND, backend_of, chosen
from modelops_operator.builders.trainjob import runtime_ref
from modelops_operator.controllers.common import (
    Log,
    execute,
    names_taken,
    not_created,
    owned,
    secret_reader,
    still_there,
)
from modelops_operator.reconcile import kueue
from modelops_operator.reconcile import trainingrun as rt
from modelops_operator.reconcile.actions import Action, Event, Registration
from modelops_operator.reconcile.pods import eviction, master_result, pod_problem
from modelops_operator.reconcile.progress import TrainerProgress, parse_progress
from modelops_operator.reconcile.status import refused
from modelops_operator.settings import OperatorSettings

_BACKOFF = progress.Backoff()


def read_progress(pod: dict[str, Any], backoff: progress.Backoff = _BACKOFF) -> TrainerProgress | None:
    """What the trainer in `pod` reports on its progress endpoint; None when the pod is not Running
    with an IP, the endpoint cannot be read or answers no progress document, or it did not answer
    at all a moment ago (kwok's simulated pods have addresses nothing answers on): the status then
    keeps what it had."""
    url = progress.endpoint(pod)
    if url is None or backoff.waiting(url):
        return None
    try:
        body = progress.fetch(url)
    except progress.ProgressUnavailable as e:
        backoff.record(url, answered=not e.unreachable)
        return None
    backoff.record(url, answered=True)
    return parse_progress(body)


def observe_trial(namespace: str, job: dict[str, Any]) -> rt.TrialObservation:
    """A trial's rank-0 pod: its result, why it cannot start, and its trainer's progress while the
    job runs."""
    pods = kube.list_pods(namespace, backend_of(job).master_selector(job["metadata"]["name"]))
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    state = rt.job_state(job, bool(running))[0]
    problem = pod_problem(pods)
    if state in ("Pending", "Running"):
        problem = problem or not_created(pods, job)
    seen = rt.TrialObservation(
        result_message=master_result(pods), eviction=eviction(pods), pod_problem=problem, master_running=bool(running)
    )
    if running and state == "Running":
        seen.progress = read_progress(running[0])
    return seen


def list_trial_jobs(namespace: str, run: str) -> tuple[list[dict[str, Any]], set[str]]:
    """A run's trial jobs of every backend, and the kinds of job the cluster serves."""
    jobs: list[dict[str, Any]] = []
    served = set()
    for kind, backend in BACKENDS.items():
        found = kube.list_trial_jobs(backend.api, namespace, f"{names.TRAINING_RUN_LABEL}={run}")
        if found is not None:
            served.add(kind)
            jobs += [{**j, "kind": j.get("kind") or kind} for j in found]
    return jobs, served


def observe(
    body: dict[str, Any], spec: TrainingRunSpec, old: TrainingRunStatus, settings: OperatorSettings, now: datetime
) -> rt.TrainingRunObserved:
    """The Dataset, the run's trial jobs, the master pods of the trials not final yet, and whether
    the chosen backend (and its runtime) can take new trials."""
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    dataset = kube.get_object(DATASET, ns, spec.dataset_ref.name)
    found, served = list_trial_jobs(ns, name)
    jobs = owned(meta.get("uid"), found)
    backend = chosen(spec, settings)
    observed = rt.TrainingRunObserved(dataset=dataset, jobs=jobs, now=now, backend_served=backend.api.kind in served)
    if backend is TRAINJOB_BACKEND and observed.backend_served and rt.may_launch(old):
        ref = runtime_ref(spec, settings)
        # Without the RBAC to read runtimes (an older chart), Trainer v2's webhook has the last word.
        with contextlib.suppress(kube.Forbidden):
            if ref.kind == TRAINING_RUNTIME.kind:
                observed.runtime_found = kube.runtime_exists(TRAINING_RUNTIME, ns, ref.name)
            else:
                observed.runtime_found = kube.runtime_exists(CLUSTER_TRAINING_RUNTIME, None, ref.name)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    wanted = rt.inspected(old, jobs)
    if len(wanted) > 1:  # side by side: each progress read may wait up to its timeout
        with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
            seen = list(pool.map(lambda n: observe_trial(ns, by_name[n]), wanted))
    else:
        seen = [observe_trial(ns, by_name[n]) for n in wanted]
    observed.trials.update(zip(wanted, seen, strict=True))
    observed.workloads, observed.kueue = observe_workloads(ns, [by_name[n] for n in wanted])
    return observed


def observe_workloads(namespace: str, jobs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], bool]:
    """The Kueue Workload of each of `jobs` (by job name), and whether the cluster serves Kueue's
    Workload API. Read for every unfinished trial, queue or not: a Kueue that manages jobs without
    a queue name holds them too, and the operator must not resume what Kueue holds."""
    uids = sorted(str(j["metadata"]["uid"]) for j in jobs if j["metadata"].get("uid"))
    if not uids:
        return {}, True
    found = kube.list_workloads(namespace, f"{names.KUEUE_JOB_UID_LABEL} in ({','.join(uids)})")
    if found is None:
        return {}, False
    return kueue.owned_by(found, jobs), True


def reconcile(
    body: dict[str, Any], spec: TrainingRunSpec, old: TrainingRunStatus, settings: OperatorSettings, now: datetime
) -> tuple[TrainingRunStatus, list[Event]]:
    """Observe, decide, act; the new status and the Events to post."""
    at = now.replace(microsecond=0)  # conditions keep the second, as Kubernetes stores them
    ns = body["metadata"].get("namespace") or ""
    outcome = rt.reconcile_training_run(body, spec, old, observe(body, spec, old, settings, at), settings)
    if taken := names_taken(outcome.actions):
        return refused(old, outcome.status.observed_generation, c.NAME_CONFLICT, taken, old.phase, at=at), []
    status, events = outcome.status, list(outcome.events)
    actions, warned = with_trial_credentials(outcome.actions, spec, secret_reader(ns))
    events += warned
    still_there(body, actions)
    for action in actions:
        if action.verb == "register" and action.registration is not None:
            status, registered = register(ns, status, action.registration, at)
            events += registered
        else:
            execute(ns, action)
    return status, events


def register(
    namespace: str, status: TrainingRunStatus, registration: Registration, now: datetime
) -> tuple[TrainingRunStatus, list[Event]]:
    """Record the model version in MLflow; the status says how it went (a failure is tried again
    at the next reconcile)."""
    try:
        version = mlflow.register_model_version(
            registration.tracking_uri,
            registration.model_name,
            registration.uri,
            digest=registration.digest,
            description=registration.description,
            tags=registration.tags,
            run_id=registration.run_id,
            **_mlflow_connection(namespace, registration),
        )
    except mlflow.RegistryError as e:
        return rt.registration_failed(status, str(e), now), []
    done = rt.registered(status, registration, version, now)
    return done.status, done.events


def _mlflow_connection(namespace: str, registration: Registration) -> dict[str, Any]:
    """`authorization` and `context` for the mlflow client from `spec.registry`'s Secrets;
    RegistryError when a Secret is missing, not for this server, or not readable by the operator."""
    registry = Registry(
        mlflow_tracking_uri=registration.tracking_uri,
        credentials_secret=registration.credentials_secret,
        ca_secret=registration.ca_secret,
    )
    conn = mlflow.connect(registry, secret_reader(namespace))
    return {"authorization": conn.authorization, "context": conn.context}


def with_trial_credentials(
    actions: list[Action], spec: TrainingRunSpec, read_secret: mlflow.SecretReader
) -> tuple[list[Action], list[Event]]:
    """`actions` with each trial job to create given `spec.registry.credentialsSecret` (on its
    rank-0 container, see `builders.trainingrun.with_mlflow_credentials`) when trials are tracked and the
    Secret names this tracking server in its annotation (see `mlflow.credentials_from_secret`): the
    tenant chooses the URL, and the trainer sends what it gets there. The Secret is read only when
    a trial is to be created; when it may not be used, the trials are tracked without credentials
    and a Warning Event says why (registration reports the same in its condition)."""
    reg = spec.registry
    if (
        not any(_creates_trial(a) for a in actions)
        or not reg.credentials_secret
        or not reg.mlflow_tracking_uri
        or not reg.track_trials
    ):
        return actions, []
    try:
        secret = read_secret(reg.credentials_secret, "spec.registry.credentialsSecret")
        mlflow.credentials_from_secret(secret, reg.mlflow_tracking_uri)
    except mlflow.RegistryError as e:
        return actions, [Event("Warning", c.MLFLOW_REGISTRATION_FAILED, f"trials get no MLflow credentials: {e}")]
    return [_with_credentials(a, spec) for a in actions], []


def _with_credentials(action: Action, spec: TrainingRunSpec) -> Action:
    if not _creates_trial(action) or action.body is None:
        return action
    rank0 = BACKENDS[action.kind].rank0_container
    return replace(action, body=bt.with_mlflow_credentials(action.body, spec, rank0))


def _creates_trial(action: Action) -> bool:
    return action.verb == "create" and action.kind in BACKENDS and action.body is not None


def delete_trials(namespace: str, name: str, log: Log) -> None:
    """Stop a deleted TrainingRun's trials now (their checkpoints are written on SIGTERM) rather
    than when garbage collection gets to them; jobs already gone are fine."""
    for job in list_trial_jobs(namespace, name)[0]:
        kube.delete_trial_job(backend_of(job).api, namespace, job["metadata"]["name"])
        log.info("deleted %s %s", job["kind"], job["metadata"]["name"])
