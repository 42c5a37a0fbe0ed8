"""kopf registration: the only place that knows about kopf.

Every kind gets the same level-based handling: create, update (of the spec), resume (operator
start) and a periodic timer all call one idempotent `reconcile`, which validates the body into
the pydantic model at the boundary, asks the pure `reconcile` layer for the status it should have,
and writes status only when it changed. An object whose spec cannot be acted on gets
`Ready=False, reason=InvalidSpec` with the validation message; it never crashes the operator.

    kopf run -m modelops_operator.handlers --all-namespaces     # or: modelops-operator
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from modelops_operator import kube
from modelops_operator.api.common import GROUP, VERSION, StatusBase
from modelops_operator.api.kinds import DATASET, KINDS, MODEL_DEPLOYMENT, TRAINING_RUN, Kind
from modelops_operator.reconcile import dataset as rd
from modelops_operator.reconcile import kinds as rk
from modelops_operator.reconcile import trainingrun as rt
from modelops_operator.reconcile.status import describe_error, invalid_spec, merge_patch, parse_status, ready_events
from modelops_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
T = TypeVar("T")
#: Phases in which an object has work under way; it is reconciled every `progress_seconds` then.
ACTIVE_PHASES = ("Pending", "Running", "WaitingForDataset", "Progressing")
#: Prefix of the annotations kopf keeps its bookkeeping in (status stays ours alone).
ANNOTATION_PREFIX = GROUP


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Apply OperatorSettings to kopf and log in the API client."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Our own Events announce state changes; kopf's per-handler chatter stays in the logs.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = SETTINGS.watch_server_timeout_seconds
    settings.watching.client_timeout = SETTINGS.watch_client_timeout_seconds
    settings.networking.request_timeout = 30
    kube.login()
    logger.info("modelops operator configured: %s", SETTINGS.model_dump_json())


def _kube(fn: Callable[..., T], *args: Any) -> T:
    """Call the kube layer; its errors become kopf's retry-later errors."""
    try:
        return fn(*args)
    except kube.Conflict as e:
        raise kopf.TemporaryError(str(e), delay=1) from e
    except kube.Unavailable as e:
        raise kopf.TemporaryError(str(e), delay=10) from e


def _dependency(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    return _kube(kube.get_object, kind, namespace, name)


def _dataset(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    jobs = _kube(kube.list_jobs, ns, f"modelops.dev/dataset={name}")
    observed = rd.Observed(jobs=jobs)
    current = next((j for j in jobs if j["metadata"]["name"] == old.job_name), None)
    if current is not None:
        pods = _kube(kube.list_pods, ns, f"job-name={current['metadata']['name']}")
        if rd.job_state(current)[0] == "Active":
            observed.pod_problem = rd.pod_problem(pods)
        else:
            observed.result_message = rd.termination_message(pods)
    outcome = rd.reconcile_dataset(dict(body), spec, old, observed, SETTINGS)
    for action in outcome.actions:
        if action.verb == "create" and action.body is not None:
            _kube(kube.create_job, action.body)
        elif action.verb == "delete":
            _kube(kube.delete_job, ns, action.name)
    return outcome.status


#: Labels the Kubeflow training operator puts on a PyTorchJob's pods.
JOB_NAME_LABEL, REPLICA_TYPE_LABEL = "training.kubeflow.org/job-name", "training.kubeflow.org/replica-type"


def _training_run(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    dataset = _dependency(DATASET, ns, spec.dataset_ref.name)
    jobs = _kube(kube.list_pytorchjobs, ns, f"modelops.dev/trainingrun={name}")
    observed = rt.Observed(dataset=dataset, jobs=jobs)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    for job_name in rt.inspected(old, jobs):
        pods = _kube(kube.list_pods, ns, f"{JOB_NAME_LABEL}={job_name},{REPLICA_TYPE_LABEL}=master")
        seen = rt.TrialObservation(result_message=rt.master_result(pods), pod_problem=rd.pod_problem(pods))
        running = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
        if running and rt.job_state(by_name[job_name])[0] == "Running":
            seen.log = _kube(kube.pod_log, ns, running[0]["metadata"]["name"], "pytorch")
        observed.trials[job_name] = seen
    outcome = rt.reconcile_training_run(dict(body), spec, old, observed, SETTINGS)
    for action in outcome.actions:
        if action.verb == "create" and action.body is not None:
            _kube(kube.create_pytorchjob, action.body)
        elif action.verb == "delete":
            _kube(kube.delete_pytorchjob, ns, action.name)
        else:
            _kube(kube.suspend_pytorchjob, ns, action.name, action.verb == "suspend")
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return outcome.status


def _model_deployment(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ref = spec.model.training_run_ref
    run = _dependency(TRAINING_RUN, body.metadata.namespace or "", ref.name) if ref else None
    return rk.model_deployment_status(spec, generation, old, run)


STATUS: dict[str, Callable[[Any, int, Any, kopf.Body], StatusBase]] = {
    DATASET.kind: _dataset,
    TRAINING_RUN.kind: _training_run,
    MODEL_DEPLOYMENT.kind: _model_deployment,
}


def reconcile(kind: Kind, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Bring one object's status in line with its spec and what it depends on."""
    generation = int(body.metadata.get("generation") or 0)
    old_raw = dict(body.get("status") or {})
    old = parse_status(kind.status, old_raw)
    try:
        spec = kind.spec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:
        message = describe_error(e)
        logger.warning("invalid spec: %s", message)
        new = invalid_spec(old, generation, message)
    else:
        new = STATUS[kind.kind](spec, generation, old, body)
    changes = merge_patch(old_raw, new.wire())
    if not changes:
        return
    patch.status.update(changes)
    for event in ready_events(old, new):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    logger.info("status updated: %s", ", ".join(sorted(changes)))


def _register(kind: Kind) -> None:
    def handle(*, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        reconcile(kind, body, patch, logger)

    resource = (GROUP, VERSION, kind.plural)
    kopf.on.resume(*resource, id="reconcile")(handle)
    kopf.on.create(*resource, id="reconcile")(handle)
    kopf.on.update(*resource, id="reconcile", field="spec")(handle)
    kopf.timer(*resource, id="resync", interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)(handle)
    kopf.timer(
        *resource,
        id="progress",
        interval=SETTINGS.progress_seconds,
        when=lambda status, **_: status.get("phase") in ACTIVE_PHASES,
    )(handle)


for _kind in KINDS:
    _register(_kind)


@kopf.on.delete(GROUP, VERSION, TRAINING_RUN.plural, id="cleanup", retries=5, backoff=2)
def delete_trials(*, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """Stop a deleted TrainingRun's trials now (their checkpoints are written on SIGTERM) rather
    than when garbage collection gets to them. Never blocks: jobs already gone are fine, and after
    five failed attempts kopf releases the finalizer and owner references finish the work."""
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    for job in _kube(kube.list_pytorchjobs, ns, f"modelops.dev/trainingrun={name}"):
        _kube(kube.delete_pytorchjob, ns, job["metadata"]["name"])
        logger.info("deleted PyTorchJob %s", job["metadata"]["name"])
