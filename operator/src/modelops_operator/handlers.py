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
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
import prometheus_client
from pydantic import ValidationError

from modelops_operator import kube, mlflow, prometheus
from modelops_operator.api import conditions as c
from modelops_operator.api import names
from modelops_operator.api.common import GROUP, VERSION, ConditionStatus, StatusBase
from modelops_operator.api.kinds import DATASET, KINDS, MODEL_DEPLOYMENT, TRAINING_RUN, Kind
from modelops_operator.api.trainingrun import TrainingRunSpec, TrainingRunStatus
from modelops_operator.builders import alerts as ba
from modelops_operator.builders import modeldeployment as bm
from modelops_operator.builders import trainingrun as bt
from modelops_operator.reconcile import dataset as rd
from modelops_operator.reconcile import dependencies as dep
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile import ownership, rollout
from modelops_operator.reconcile import trainingrun as rt
from modelops_operator.reconcile.status import (
    describe_error,
    invalid_spec,
    merge_patch,
    parse_status,
    ready_events,
    refused,
)
from modelops_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
T = TypeVar("T")


WATCH_STARTS = prometheus_client.Counter(
    "modelops_watch_restarts",
    "Watch streams (re)started against the API server, by reason: start (one per watched kind when "
    "the operator starts), inactive (no event, bookmarks included, for kopf's inactivity timeout or "
    "MODELOPS_WATCH_CLIENT_TIMEOUT_SECONDS: a stalled or cut connection, replaced) and gone (the "
    "resource version expired: re-listed). A watch the server ends on time is renewed silently.",
    ["reason"],
)


WATCH_EVENTS = prometheus_client.Counter(
    "modelops_watch_events", "Watch events handled, by kind (list results at a (re)start included).", ["kind"]
)


class _CountWatchStarts(logging.Filter):
    """kopf announces watch (re)starts only in DEBUG records: count them, and drop the DEBUG records
    unless the operator logs at DEBUG (the logger must let them through to be counted)."""

    #: (how kopf's message starts, how it ends, the reason counted)
    REASONS = (
        ("Starting the watch-stream", "", "start"),
        ("Watch-stream for", "reconnecting.", "inactive"),
        ("Restarting the watch-stream", "", "gone"),
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for prefix, suffix, reason in self.REASONS:
            if message.startswith(prefix) and message.endswith(suffix):
                WATCH_STARTS.labels(reason).inc()
        return record.levelno > logging.DEBUG or SETTINGS.log_level == "DEBUG"


_WATCH_LOGGER = logging.getLogger("kopf._cogs.clients.watching")
_WATCH_LOGGER.addFilter(_CountWatchStarts())
_WATCH_LOGGER.setLevel(logging.DEBUG)


class _DropRoutineSuccess(logging.Filter):
    """kopf logs every handler success at INFO: for the handlers that run on every event or tick
    (waking, the timers) that is a line per object every few seconds. What changed is logged by
    `reconcile` ("status updated: ..."); failures are still logged."""

    ROUTINE = re.compile(r"^(Handler|Timer) '(wake[\w-]*|progress|resync)' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or not self.ROUTINE.match(record.getMessage())


logging.getLogger("kopf.objects").addFilter(_DropRoutineSuccess())


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Apply OperatorSettings to kopf and log in the API client."""
    # kopf keeps its bookkeeping in `modelops.dev/*` annotations (status stays ours alone).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    prefix, key = names.LAST_HANDLED_ANNOTATION.split("/", 1)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix, key=key)
    settings.persistence.finalizer = names.FINALIZER
    # Our own Events announce state changes; kopf's per-handler chatter stays in the logs.
    settings.posting.level = logging.WARNING
    # The operator watches its own three kinds, known in advance: no need to scan CRDs and
    # namespaces (which the chart's least-privilege RBAC does not allow anyway).
    settings.scanning.disabled = True
    settings.watching.server_timeout = SETTINGS.watch_server_timeout_seconds
    settings.watching.client_timeout = SETTINGS.watch_client_timeout_seconds
    settings.networking.request_timeout = 30
    settings.execution.max_workers = SETTINGS.workers
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


def _owned(body: kopf.Body, children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The children `body` controls: a Job that merely carries our labels (anyone who may create
    Jobs can) is not read, so it can neither feed a result nor be deleted."""
    return [child for child in children if ownership.controller_uid(child) == body.metadata.uid]


def _dataset(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    jobs = _owned(body, _kube(kube.list_jobs, ns, f"{names.DATASET_LABEL}={name}"))
    observed = rd.Observed(jobs=jobs)
    current = next((j for j in jobs if j["metadata"]["name"] == old.job_name), None)
    if current is not None:
        pods = _kube(kube.list_pods, ns, f"job-name={current['metadata']['name']}")
        if rd.job_state(current)[0] == "Active":
            observed.pod_problem = rd.pod_problem(pods)
        else:
            observed.result_message = rd.termination_message(pods)
    outcome = rd.reconcile_dataset(dict(body), spec, old, observed, SETTINGS)
    if taken := _names_taken(outcome.actions):
        blocked: StatusBase = refused(old, generation, c.NAME_CONFLICT, taken, old.phase if old.version else "Failed")
        return blocked
    for action in outcome.actions:
        if action.verb == "create" and action.body is not None:
            _kube(kube.create_job, action.body)
        elif action.verb == "delete":
            _kube(kube.delete_job, ns, action.name)
    return outcome.status


def _names_taken(actions: list[Any]) -> list[str]:
    """Why a Job or PyTorchJob about to be created cannot be: its name is held by an object this
    owner does not control (created by someone else; the listing by label did not show it)."""
    creates = [a.body for a in actions if a.verb == "create" and a.body is not None]
    return ownership.conflicts([ownership.claim(body, _kube(kube.get_like, body)) for body in creates])


def _training_run(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    dataset = _dependency(DATASET, ns, spec.dataset_ref.name)
    jobs = _owned(body, _kube(kube.list_pytorchjobs, ns, f"{names.TRAINING_RUN_LABEL}={name}"))
    observed = rt.Observed(dataset=dataset, jobs=jobs)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    for job_name in rt.inspected(old, jobs):
        pods = _kube(kube.list_pods, ns, f"{names.JOB_NAME_LABEL}={job_name},{names.REPLICA_TYPE_LABEL}=master")
        seen = rt.TrialObservation(result_message=rt.master_result(pods), pod_problem=rd.pod_problem(pods))
        running = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
        if running and rt.job_state(by_name[job_name])[0] == "Running":
            seen.log = _kube(kube.pod_log, ns, running[0]["metadata"]["name"], "pytorch")
        observed.trials[job_name] = seen
    outcome = rt.reconcile_training_run(dict(body), spec, old, observed, SETTINGS)
    if taken := _names_taken(outcome.actions):
        blocked: StatusBase = refused(old, generation, c.NAME_CONFLICT, taken, old.phase)
        return blocked
    creates = any(a.verb == "create" for a in outcome.actions)
    tracked = creates and _trial_credentials_checked(spec, ns, body)
    for action in outcome.actions:
        if action.verb == "create" and action.body is not None:
            _kube(kube.create_pytorchjob, bt.with_mlflow_credentials(action.body, spec) if tracked else action.body)
        elif action.verb == "delete":
            _kube(kube.delete_pytorchjob, ns, action.name)
        else:
            _kube(kube.suspend_pytorchjob, ns, action.name, action.verb == "suspend")
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return _register_in_mlflow(spec, outcome.status, body)


def _register_in_mlflow(spec: TrainingRunSpec, status: TrainingRunStatus, body: kopf.Body) -> TrainingRunStatus:
    """Record the latest model version in MLflow when the spec names a tracking server (once per
    version: the registry call is idempotent by digest, and the version lands in status)."""
    reg, model = spec.registry, status.model
    if not reg.mlflow_tracking_uri or model is None or model.mlflow_version is not None:
        return status
    name = reg.model_name or (body.metadata.name or "")
    tags = {
        names.MLFLOW_TRAINING_RUN_TAG: f"{body.metadata.namespace}/{body.metadata.name}",
        names.MLFLOW_VERSION_TAG: str(model.version),
        names.MLFLOW_DATASET_TAG: f"{model.dataset}@{model.dataset_version}",
        names.MLFLOW_TRIAL_TAG: model.trial or "",
    }
    generation = status.observed_generation
    try:
        version = mlflow.register_model_version(
            reg.mlflow_tracking_uri,
            name,
            model.uri,
            digest=model.digest,
            description=f"modelops TrainingRun {body.metadata.namespace}/{body.metadata.name} v{model.version}",
            tags=tags,
            run_id=model.mlflow_run_id,
            **_mlflow_connection(body.metadata.namespace or "", reg),
        )
    except mlflow.RegistryError as e:
        conds = c.set_condition(
            status.conditions,
            c.MLFLOW_REGISTERED,
            ConditionStatus.FALSE,
            c.MLFLOW_REGISTRATION_FAILED,
            str(e),
            generation,
        )
        return status.model_copy(update={"conditions": conds})
    model = model.model_copy(update={"mlflow_version": version})
    models = [model if m.version == model.version else m for m in status.models]
    msg = f'model version {model.version} is version {version} of "{name}" in MLflow'
    conds = c.set_condition(
        status.conditions, c.MLFLOW_REGISTERED, ConditionStatus.TRUE, c.MLFLOW_VERSION_CREATED, msg, generation
    )
    kopf.event(body, type="Normal", reason=c.MLFLOW_VERSION_CREATED, message=msg)
    return status.model_copy(update={"model": model, "models": models, "conditions": conds})


def _mlflow_connection(namespace: str, reg: Any) -> dict[str, Any]:
    """`authorization` and `context` for the mlflow client from `spec.registry`'s Secrets;
    RegistryError when a Secret is missing, not for this server, or not readable by the operator."""
    conn = mlflow.connect(reg, _secret_reader(namespace))
    return {"authorization": conn.authorization, "context": conn.context}


def _secret_reader(namespace: str) -> mlflow.SecretReader:
    """Reads a Secret of `namespace` for the mlflow module (which may not call the API itself)."""

    def read(name: str, field: str) -> dict[str, Any]:
        try:
            secret = kube.get_secret(namespace, name)
        except kube.Forbidden as e:
            raise mlflow.RegistryError(
                f"the operator may not read Secret {namespace}/{name}: install the chart with "
                f"rbac.readSecrets=true to use {field}"
            ) from e
        except kube.Unavailable as e:
            raise kopf.TemporaryError(str(e), delay=10) from e
        if secret is None:
            raise mlflow.RegistryError(f"Secret {namespace}/{name} ({field}) does not exist")
        return secret

    return read


def _trial_credentials_checked(spec: TrainingRunSpec, namespace: str, body: kopf.Body) -> bool:
    """Whether trial pods may get `spec.registry.credentialsSecret`: it names this tracking server
    (see `mlflow.credentials_from_secret`). When not, trials are tracked without credentials (or
    not at all) and a Warning Event says why; registration reports the same in its condition."""
    reg = spec.registry
    if not reg.credentials_secret or not reg.mlflow_tracking_uri or not reg.track_trials:
        return False
    try:
        mlflow.credentials_from_secret(
            _secret_reader(namespace)(reg.credentials_secret, "spec.registry.credentialsSecret"),
            reg.mlflow_tracking_uri,
        )
    except mlflow.RegistryError as e:
        kopf.event(
            body, type="Warning", reason=c.MLFLOW_REGISTRATION_FAILED, message=f"trials get no MLflow credentials: {e}"
        )
        return False
    return True


ROLLOUT_ABORTED = prometheus_client.Gauge(
    "modelops_rollout_aborted",
    "1 while the canary of a ModelDeployment is rolled back (analysis failed or aborted), else 0.",
    ["namespace", "modeldeployment"],
)


def _track(deployment: dict[str, Any] | None) -> rollout.Track | None:
    if deployment is None:
        return None
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return rollout.Track(
        replicas=int(spec.get("replicas") or 0),
        ready=int(st.get("readyReplicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        available=int(st.get("availableReplicas") or 0),
        total=int(st.get("replicas") or 0),
        digest=annotations.get(names.MODEL_DIGEST_ANNOTATION),
        settled=int(st.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 0),
    )


def _measure(spec: Any, analysis: Any, ns: str, name: str) -> list[rollout.Measurement]:
    """Run each analysis metric's query for the canary (and the stable, for comparisons)."""
    out = []
    for metric in analysis.metrics:
        try:
            value = prometheus.query(
                SETTINGS.prometheus_url, rm.metric_query(metric, ns, name, "canary", analysis.interval)
            )
            stable = None
            if metric.compare_to_stable:
                stable_q = rm.metric_query(metric, ns, name, "stable", analysis.interval)
                stable = prometheus.query(SETTINGS.prometheus_url, stable_q)
        except prometheus.PrometheusError as e:
            raise kopf.TemporaryError(str(e), delay=10) from e
        out.append(rollout.Measurement(metric.name, value, stable))
    return out


def _model_deployment(spec: Any, generation: int, old: Any, body: kopf.Body) -> StatusBase:
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    if why_not := rm.refused_queries(spec, SETTINGS.custom_analysis_queries):
        status: StatusBase = invalid_spec(old, generation, why_not)
        return status
    ref = spec.model.training_run_ref
    run = _dependency(TRAINING_RUN, ns, ref.name) if ref else None
    target = rm.resolve_model(spec, run)
    if isinstance(target, rm.Waiting):
        return rm.waiting_status(old, generation, target)
    md = dict(body)
    stable = _track(_kube(kube.get_deployment, ns, bm.deployment_name(name, "stable")))
    canary = _track(_kube(kube.get_deployment, ns, bm.deployment_name(name, "canary")))
    command = rollout.requested_command(body.metadata.annotations or {})
    now = datetime.now(UTC)
    analysis = rollout.due_analysis(spec, old, now)
    measurements = _measure(spec, analysis, ns, name) if analysis is not None else None
    seen = rollout.Observed(target, stable, canary, now, command, measurements)
    plan = rollout.plan(spec, old, seen, generation)
    children = [
        bm.build_deployment(
            md, spec, plan.stable_model, "stable", SETTINGS, None if stable else spec.autoscaling.min_replicas
        ),
        bm.build_deployment(md, spec, plan.canary_model, "canary", SETTINGS, plan.canary_replicas),
        *bm.build_services(md),
        bm.build_pdb(md),
        bm.build_hpa(md, spec),
    ]
    if _kube(kube.crd_exists, names.SERVICEMONITOR.crd):
        children.append(bm.build_service_monitor(md))
    if spec.alerts.enabled and _kube(kube.crd_exists, names.PROMETHEUSRULE.crd):
        children.append(ba.build_prometheus_rule(md, spec))
    claims = [ownership.claim(child, _kube(kube.get_like, child)) for child in children]
    if refused := ownership.conflicts(claims):
        return rm.refused_status(old, generation, c.NAME_CONFLICT, refused)
    route = spec.rollout.traffic_routing.http_route
    if route and (why := ownership.route_delegated(_kube(kube.get_http_route, ns, route), ns, route, name)):
        return rm.refused_status(old, generation, c.ROUTE_NOT_DELEGATED, [why])
    for claim in claims:
        _kube(kube.create if claim.verb == "create" else kube.apply, claim.body)
    if route:
        weight = plan.status.desired_weight if plan.status.canary is not None and not plan.status.aborted else 0
        _kube(kube.patch_http_route, ns, route, bm.http_route_patch(spec, name, weight))
    if command is not None and plan.command_done:
        _kube(kube.annotate, MODEL_DEPLOYMENT, ns, name, {rollout.COMMANDS[command]: None})
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    ROLLOUT_ABORTED.labels(ns, name).set(1 if plan.status.aborted and plan.status.canary else 0)
    status = rm.resolved_condition(plan.status, generation, target)
    if stable is None or stable.available < stable.replicas or plan.status.canary is not None:
        problem = rd.pod_problem(_kube(kube.list_pods, ns, f"{names.MODEL_DEPLOYMENT_LABEL}={name}"))
        if problem:
            status = rm.pods_blocked(status, generation, problem)
    status = mlflow.apply_alias(spec, status, run, _secret_reader(ns))
    return status.model_copy(update={"url": bm.service_url(md)})


STATUS: dict[str, Callable[[Any, int, Any, kopf.Body], StatusBase]] = {
    DATASET.kind: _dataset,
    TRAINING_RUN.kind: _training_run,
    MODEL_DEPLOYMENT.kind: _model_deployment,
}


RECONCILES = prometheus_client.Counter(
    "modelops_reconciles",
    "Reconciles by kind and result: success, invalid (the spec cannot be acted on), error (retried).",
    ["kind", "result"],
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "modelops_reconcile_duration_seconds",
    "Time one reconcile took, API calls included, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECTS = prometheus_client.Gauge(
    "modelops_objects", "Objects the operator reconciles, by kind and phase.", ["kind", "phase"]
)
_PHASES: dict[tuple[str, str, str], str] = {}


def _count_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Keep `modelops_objects` in step with the last phase seen of each object (None: deleted)."""
    key = (kind, namespace, name)
    before = _PHASES.pop(key, None)
    if before is not None:
        OBJECTS.labels(kind, before).dec()
    if phase is not None:
        _PHASES[key] = phase
        OBJECTS.labels(kind, phase).inc()


def reconcile(kind: Kind, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Bring one object's status in line with its spec and what it depends on."""
    with RECONCILE_SECONDS.labels(kind.kind).time():
        try:
            result = _reconcile(kind, body, patch, logger)
        except Exception:
            RECONCILES.labels(kind.kind, "error").inc()
            raise
    RECONCILES.labels(kind.kind, result).inc()


def _reconcile(kind: Kind, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> str:
    generation = int(body.metadata.get("generation") or 0)
    old_raw = dict(body.get("status") or {})
    old = parse_status(kind.status, old_raw)
    result = "success"
    try:
        spec = kind.spec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:
        message = describe_error(e)
        logger.warning("invalid spec: %s", message)
        new = invalid_spec(old, generation, message)
        result = "invalid"
    else:
        new = STATUS[kind.kind](spec, generation, old, body)
    _count_phase(kind.kind, body.metadata.namespace or "", body.metadata.name or "", str(getattr(new, "phase", "")))
    changes = merge_patch(old_raw, new.wire())
    if not changes:
        return result
    patch.status.update(changes)
    for event in ready_events(old, new):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    logger.info("status updated: %s", ", ".join(sorted(changes)))
    return result


def _commanded(kind: Kind, annotations: dict[str, str]) -> bool:
    return kind is MODEL_DEPLOYMENT and rollout.requested_command(annotations) is not None


def _register(kind: Kind) -> None:
    def handle(*, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
        reconcile(kind, body, patch, logger)
        memo["woken"] = (body.metadata.annotations or {}).get(names.DEPENDENCY_CHANGED_ANNOTATION)

    def on_event(*, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
        """Reconcile at once when woken by a dependency's change or given a manual command.
        kopf leaves our own annotations out of its diffs, so these are seen here, in the raw
        events, rather than by an update handler."""
        WATCH_EVENTS.labels(kind.kind).inc()
        annotations = dict(body.metadata.annotations or {})
        woken = annotations.get(names.DEPENDENCY_CHANGED_ANNOTATION)
        seen = memo.setdefault("woken", woken)  # first sight: the create or resume handler runs
        if woken != seen or _commanded(kind, annotations):
            handle(body=body, patch=patch, logger=logger, memo=memo)

    def forget(*, body: kopf.Body, **_: Any) -> None:
        _count_phase(kind.kind, body.metadata.namespace or "", body.metadata.name or "", None)

    resource = (GROUP, VERSION, kind.plural)
    kopf.on.resume(*resource, id="reconcile")(handle)
    kopf.on.create(*resource, id="reconcile")(handle)
    kopf.on.update(*resource, id="reconcile", field="spec")(handle)
    kopf.on.event(*resource, id="wake")(on_event)
    kopf.on.delete(*resource, id="forget", optional=True)(forget)
    kopf.timer(*resource, id="resync", interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)(handle)
    kopf.timer(
        *resource,
        id="progress",
        interval=SETTINGS.progress_seconds,
        when=lambda status, **_: dep.needs_progress(kind.kind, dict(status)),
    )(handle)


for _kind in KINDS:
    _register(_kind)


@kopf.index(GROUP, VERSION, TRAINING_RUN.plural)  # type: ignore[arg-type]
def runs_by_dataset(*, namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    """(namespace, Dataset name) -> (TrainingRun name, phase), for waking the runs of a Dataset."""
    ref = (spec.get("datasetRef") or {}).get("name")
    return {(namespace, ref): (name, status.get("phase"))} if ref else {}


@kopf.index(GROUP, VERSION, MODEL_DEPLOYMENT.plural)  # type: ignore[arg-type]
def deployments_by_run(*, namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """(namespace, TrainingRun name) -> ModelDeployment name, for waking the deployments of a run."""
    ref = ((spec.get("model") or {}).get("trainingRunRef") or {}).get("name")
    return {(namespace, ref): name} if ref else {}


def _wake_dependants(
    kind: Kind,
    fingerprint: Callable[[dict[str, Any] | None], str | None],
    dependants: Callable[[str, str, kopf.Index[Any, Any]], list[str]],
    dependant_kind: Kind,
    index: str,
) -> None:
    """Watch `kind` and wake its dependants (of `dependant_kind`, found in the kopf index named
    `index`) whenever what they read of it changes."""

    def wake(*, type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
        ns, name = body.metadata.namespace or "", body.metadata.name or ""
        after = fingerprint(None if type == "DELETED" else dict(body))
        known, before = "fingerprint" in memo, memo.get("fingerprint")
        memo["fingerprint"] = after
        if not dep.should_wake(before, after, known=known, listed=type is None):
            return
        value = dep.wake_value(kind.kind, name, after)
        for dependant in dependants(ns, name, kwargs[index]):
            try:
                kube.annotate(dependant_kind, ns, dependant, {names.DEPENDENCY_CHANGED_ANNOTATION: value})
            except (kube.Conflict, kube.Unavailable) as e:  # the resync timer catches up later
                logger.warning("could not wake %s %s: %s", dependant_kind.kind, dependant, e)

    kopf.on.event(GROUP, VERSION, kind.plural, id=f"wake-{dependant_kind.plural}")(wake)


_wake_dependants(
    DATASET,
    dep.dataset_fingerprint,
    lambda ns, name, idx: [run for run, phase in idx.get((ns, name), []) if dep.run_waits_for_dataset(phase)],
    TRAINING_RUN,
    "runs_by_dataset",
)
_wake_dependants(
    TRAINING_RUN,
    dep.run_fingerprint,
    lambda ns, name, idx: list(idx.get((ns, name), [])),
    MODEL_DEPLOYMENT,
    "deployments_by_run",
)


@kopf.on.delete(GROUP, VERSION, TRAINING_RUN.plural, id="cleanup", retries=5, backoff=2)
def delete_trials(*, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """Stop a deleted TrainingRun's trials now (their checkpoints are written on SIGTERM) rather
    than when garbage collection gets to them. Never blocks: jobs already gone are fine, and after
    five failed attempts kopf releases the finalizer and owner references finish the work."""
    ns, name = body.metadata.namespace or "", body.metadata.name or ""
    for job in _kube(kube.list_pytorchjobs, ns, f"{names.TRAINING_RUN_LABEL}={name}"):
        _kube(kube.delete_pytorchjob, ns, job["metadata"]["name"])
        logger.info("deleted PyTorchJob %s", job["metadata"]["name"])
