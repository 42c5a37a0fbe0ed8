"""kopf registration: the only place that knows about kopf.

Every kind gets the same level-based handling: create, update (of the spec), resume (operator
start) and the schedule (`controllers.schedule`: a periodic resync, and a progress poll while work
is under way, run by one task instead of kopf's per-object timers) all call one idempotent
`controllers.reconcile`, which validates the body into the pydantic model at the boundary,
observes, asks the pure `reconcile` layer for the status and the actions, and carries the actions
out; the handler writes status only when it changed and posts the Events. An object whose spec
cannot be acted on gets `Ready=False, reason=InvalidSpec` with the validation message; it never
crashes the operator.

`register(settings)` registers everything; `modelops-operator` (`__main__`) calls it with the
settings it read once from the environment.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import aiohttp
import kopf

from modelops_operator import controllers, kube, observability
from modelops_operator.api import names
from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.kinds import DATASET, KINDS, MODEL_DEPLOYMENT, TRAINING_RUN, Kind
from modelops_operator.controllers.schedule import Key, Schedule, key_of
from modelops_operator.reconcile.actions import Event
from modelops_operator.settings import OperatorSettings


@contextmanager
def _retrying() -> Iterator[None]:
    """A controller's `RetryLater` becomes kopf's retry after its delay."""
    try:
        yield
    except controllers.RetryLater as e:
        raise kopf.TemporaryError(str(e), delay=e.delay) from e


_T = TypeVar("_T")

#: kopf's thread pool (`settings.execution`), where its sync handlers run: set at startup.
_pool: list[Executor] = []


async def _blocking(fn: Callable[[], _T]) -> _T:
    """Run `fn` (blocking API calls) in kopf's thread pool with the handler's context, as kopf runs
    a sync handler. The event handlers are async and call this only to act: most events change
    nothing that wakes anyone, and kopf hands an object's events to its handlers one at a time, each
    a whole body, so a thread per event (queued behind the reconciles that hold the pool) kept
    events waiting. At 1,000 objects: RSS peak 307 against 347 MiB, Datasets converged in 57 against
    105 s (the run of 2026-12-05 in CHANGELOG.md's history). Cancelled, it waits for the thread first,
    as kopf does."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_pool[0] if _pool else None, contextvars.copy_context().run, fn)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as e:
            cancelled = e
    if cancelled is not None:
        raise cancelled
    return future.result()


def _post(body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _after(schedule: Schedule, kind: Kind, body: kopf.Body, done: controllers.Reconciled, logger: kopf.Logger) -> None:
    """What follows every reconcile, from an event or the schedule: the object's next time on the
    schedule, the status change logged, the Events posted."""
    schedule.reconciled(kind, body, done.status, time.monotonic())
    if done.status_patch:
        logger.info("status updated: %s", ", ".join(sorted(done.status_patch)))
    _post(body, done.events)


#: A scheduled reconcile that raised something other than `RetryLater` is tried again this much later.
ERROR_RETRY_SECONDS = 60.0
#: The schedule's task looks for due objects at least this often.
SCHEDULE_TICK_SECONDS = 0.2


def register(settings: OperatorSettings) -> None:
    """Register every handler with kopf, with `settings`."""
    ours = settings  # kopf hands the startup handler its own settings, under the same name
    scheduler = _Scheduler(Schedule(settings), settings)

    @kopf.on.startup(id="schedule")
    def keep_settings(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        scheduler.kopf_settings = settings

    @kopf.on.cleanup(id="schedule")
    async def stop_schedule(**_: Any) -> None:
        if scheduler.task is not None:
            scheduler.task.cancel()

    @kopf.on.startup(id="configure")
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
        settings.watching.server_timeout = ours.watch_server_timeout_seconds
        settings.watching.client_timeout = ours.watch_client_timeout_seconds
        settings.networking.request_timeout = 30
        settings.execution.max_workers = ours.workers
        _pool[:] = [settings.execution.executor]
        kube.login()
        observability.publish_build_info()
        logger.info("modelops operator configured: %s", ours.model_dump_json())

    @kopf.on.login(id="login")
    async def login(
        *, settings: kopf.OperatorSettings, logger: kopf.Logger, **kwargs: Any
    ) -> kopf.ConnectionInfo | kopf.AiohttpSession | None:
        """The kube layer's credentials (in-cluster, else the kubeconfig; read anew each time kopf
        logs in again), on a connection pool of `api_connections` beyond the watch streams."""
        info = connection_info(kube.credentials.load(), settings.networking.trust_env)
        if not ours.api_connections:
            return info
        return bounded_session(info, ours.api_connections + watch_streams(ours.namespaces))

    for kind in KINDS:
        _register_kind(kind, settings, scheduler)
    _register_dependencies()


class _Scheduler:
    """The task that reconciles objects as they come due (`controllers.schedule`)."""

    def __init__(self, schedule: Schedule, settings: OperatorSettings) -> None:
        self.schedule, self.settings = schedule, settings
        self.kopf_settings: kopf.OperatorSettings | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task, once, from a watch-event handler: kopf sets its Event poster's queue in
        the context of its handling of an object, not in the startup handlers', and the task (and
        the threads it hands reconciles to) post Events and log through it."""
        if self.task is None and self.kopf_settings is not None:
            self.task = asyncio.create_task(self._run(self.kopf_settings), context=contextvars.copy_context())

    async def _run(self, kopf_settings: kopf.OperatorSettings) -> None:
        running: set[asyncio.Task[None]] = set()
        while True:
            for key in self.schedule.due(time.monotonic()):
                task = asyncio.create_task(_scheduled(key, self.schedule, self.settings, kopf_settings))
                running.add(task)
                task.add_done_callback(running.discard)
            next_at = self.schedule.next_at()
            wait = SCHEDULE_TICK_SECONDS if next_at is None else next_at - time.monotonic()
            await asyncio.sleep(min(max(wait, 0.0), SCHEDULE_TICK_SECONDS))


async def _scheduled(
    key: Key, schedule: Schedule, settings: OperatorSettings, kopf_settings: kopf.OperatorSettings
) -> None:
    """One scheduled reconcile of `key`: the object as it is now, its status written, its Events
    posted, and its next time set; tried again later when it fails."""
    kind = next(k for k in KINDS if k.kind == key[0])
    namespace, name = key[1], key[2]

    def log_for(body: dict[str, Any]) -> kopf.ObjectLogger:
        return kopf.ObjectLogger(body=kopf.Body(cast(kopf.RawBody, body)), settings=kopf_settings)

    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind.kind, "metadata": {"namespace": namespace, "name": name}}
    logger = log_for(ref)
    try:
        reconcile = functools.partial(controllers.reconcile_by_name, kind, namespace, name, settings, log_for)
        found = await _blocking(reconcile)
    except controllers.RetryLater as e:
        logger.warning("scheduled reconcile failed, retrying in %s s: %s", e.delay, e)
        schedule.retry(key, time.monotonic() + e.delay)
        return
    except Exception:
        logger.exception("scheduled reconcile failed, retrying in %s s", ERROR_RETRY_SECONDS)
        schedule.retry(key, time.monotonic() + ERROR_RETRY_SECONDS)
        return
    if found is None:
        schedule.forget(key)
        return
    body, done = found
    _after(schedule, kind, kopf.Body(cast(kopf.RawBody, body)), done, log_for(body))


def watch_streams(namespaces: list[str]) -> int:
    """The watch connections kopf holds open: one per watched resource in each namespace, or one
    per resource when watching the whole cluster (each handler names one group, version and plural)."""
    registry = kopf.get_default_registry()
    selectors: set[object] = set()
    for part in (registry._indexing, registry._watching, registry._spawning, registry._changing):
        selectors |= part.get_all_selectors()
    return len(selectors) * max(1, len(namespaces))


def connection_info(creds: kube.credentials.Credentials, trust_env: bool) -> kopf.ConnectionInfo:
    """kopf's form of the kube layer's credentials: kopf watches with what the operator calls with."""
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        ca_data=creds.ca_data,
        insecure=creds.insecure,
        certificate_path=creds.certificate_path,
        certificate_data=creds.certificate_data,
        private_key_path=creds.private_key_path,
        private_key_data=creds.private_key_data,
        token=creds.token,
        username=creds.username,
        password=creds.password,
        proxy_url=creds.proxy_url,
        default_namespace=creds.default_namespace,
        trust_env=trust_env,
    )


def bounded_session(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """The session kopf would make for `info`, with at most `limit` connections. kopf's own has no
    limit: at 1,000 objects created at once it opened 350 TLS connections to the API server, one per
    request in flight, each with its buffers. Requests beyond the limit wait for a free connection
    (within kopf's request timeout, then retried); kopf closes the session when it logs in again."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def _register_kind(kind: Kind, settings: OperatorSettings, scheduler: _Scheduler) -> None:
    schedule = scheduler.schedule

    def handle(*, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
        with _retrying():
            done = controllers.reconcile(kind, dict(body), settings, logger)
        memo["woken"] = controllers.woken_by(body)
        if done.status_patch:
            patch.status.update(done.status_patch)  # kopf writes it after the handler
        _after(schedule, kind, body, done, logger)

    async def on_event(
        *, type: str | None, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any
    ) -> None:
        """Reconcile at once when woken by a dependency's change or given a manual command. The
        deletion is seen here too: kopf runs no delete handler for an object without our finalizer.
        On the event loop; only a reconcile goes to a thread."""
        if type == "DELETED":
            controllers.forget(kind, body)
            schedule.forget(key_of(kind, body))
            return
        schedule.seen(kind, body, time.monotonic())
        scheduler.start()
        if controllers.on_event(kind, body, memo):
            await _blocking(functools.partial(handle, body=body, patch=patch, logger=logger, memo=memo))

    def forget(*, body: kopf.Body, **_: Any) -> None:
        controllers.forget(kind, body)

    resource = (GROUP, VERSION, kind.plural)
    kopf.on.resume(*resource, id="reconcile")(handle)
    kopf.on.create(*resource, id="reconcile")(handle)
    kopf.on.update(*resource, id="reconcile", field="spec")(handle)
    kopf.on.event(*resource, id="wake")(on_event)
    kopf.on.delete(*resource, id="forget", optional=True)(forget)
    # No kopf timers: `schedule` resyncs and polls (kopf keeps each timed object's latest body).


def _register_dependencies() -> None:
    @kopf.index(GROUP, VERSION, TRAINING_RUN.plural, id="runs_by_dataset")  # type: ignore[arg-type]
    def runs_by_dataset(*, namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[Any, Any]:
        """(namespace, Dataset name) -> (TrainingRun name, phase), for waking the runs of a Dataset."""
        ref = (spec.get("datasetRef") or {}).get("name")
        return {(namespace, ref): (name, status.get("phase"))} if ref else {}

    @kopf.index(GROUP, VERSION, MODEL_DEPLOYMENT.plural, id="deployments_by_run")  # type: ignore[arg-type]
    def deployments_by_run(*, namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        """(namespace, TrainingRun name) -> ModelDeployment name, for waking the deployments of a run."""
        ref = ((spec.get("model") or {}).get("trainingRunRef") or {}).get("name")
        return {(namespace, ref): name} if ref else {}

    _register_wake(DATASET, "runs_by_dataset", controllers.runs_waiting_for, TRAINING_RUN)
    _register_wake(TRAINING_RUN, "deployments_by_run", controllers.deployments_following, MODEL_DEPLOYMENT)

    @kopf.on.event(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        id="wake-modeldeployments-autoscaled",
        labels={names.APP_MANAGED_BY_LABEL: names.MANAGED_BY},
    )
    async def wake_autoscaled(
        *, type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
    ) -> None:
        """An autoscaler of ours changed what its ModelDeployment reports: wake that ModelDeployment."""
        wake = controllers.autoscaler_wake(
            None if type == "DELETED" else body,
            memo,
            name=body.metadata.name or "",
            namespace=body.metadata.namespace or "",
            listed=type is None,
        )
        if wake is not None:
            await _blocking(functools.partial(controllers.wake, wake, logger))

    @kopf.on.delete(GROUP, VERSION, TRAINING_RUN.plural, id="cleanup", retries=5, backoff=2)
    def delete_trials(*, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        """Stop a deleted TrainingRun's trials now. Never blocks: after five failed attempts kopf
        releases the finalizer and owner references finish the work."""
        with _retrying():
            controllers.delete_trials(body.metadata.namespace or "", body.metadata.name or "", logger)


def _register_wake(
    kind: Kind, index: str, dependants: Callable[[Any, str, str], list[str]], dependant_kind: Kind
) -> None:
    """Watch `kind` and wake its dependants (found in the kopf index named `index`)."""

    async def wake(*, type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
        ns, name = body.metadata.namespace or "", body.metadata.name or ""
        wake = controllers.dependants_wake(
            kind,
            None if type == "DELETED" else body,
            memo,
            name=name,
            namespace=ns,
            listed=type is None,
            dependants=lambda: dependants(kwargs[index], ns, name),
        )
        if wake is not None:
            await _blocking(functools.partial(controllers.wake, wake, logger))

    kopf.on.event(GROUP, VERSION, kind.plural, id=f"wake-{dependant_kind.plural}")(wake)
