"""What every controller shares: carrying out actions, the ownership checks around them, and the
mapping of the API server's and Prometheus' errors onto one retry-later error.

    RetryLater      the call failed in a way that passes: the handler retries after `delay` s
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from modelops_operator import kube, mlflow, observability, prometheus
from modelops_operator.api.kinds import KINDS
from modelops_operator.api.names import HTTPROUTE, WORKLOAD
from modelops_operator.builders.backends import BACKENDS
from modelops_operator.reconcile import ownership
from modelops_operator.reconcile.actions import Action, creates
from modelops_operator.reconcile.pods import creation_problem

#: kopf's per-object logger, or any standard logger.
Log = logging.Logger | logging.LoggerAdapter[Any]


class RetryLater(Exception):
    """Reconcile again after `delay` seconds: someone else changed the object (409), or the API
    server or Prometheus did not answer."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@contextlib.contextmanager
def retry_later() -> Iterator[None]:
    """Turn the errors that pass into `RetryLater`: a conflict soon, an unavailable server later."""
    try:
        yield
    except kube.Conflict as e:
        raise RetryLater(str(e), delay=1) from e
    except (kube.Unavailable, prometheus.PrometheusError) as e:
        raise RetryLater(str(e), delay=10) from e


def owned(uid: str | None, children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The children the object of `uid` controls: a Job that merely carries our labels (anyone who
    may create Jobs can) is not read, so it can neither feed a result nor be deleted."""
    return [child for child in children if ownership.controller_uid(child) == uid]


def names_taken(actions: list[Action]) -> list[str]:
    """Why a Job or trial job about to be created cannot be: its name is held by an object this
    owner does not control (created by someone else; the listing by label did not show it)."""
    return ownership.conflicts([ownership.claim(body, kube.get_like(body)) for body in creates(actions)])


_KINDS = {kind.kind: kind for kind in KINDS}

#: Actions that send nothing to the API server or a registry.
_LOCAL_VERBS = frozenset({"gauge"})


def still_there(body: dict[str, Any], actions: list[Action]) -> None:
    """Before a reconcile carries out `actions` that write (any but a gauge): `RetryLater` unless
    the object `body` was read from still exists, is the same object (its uid) and is not being
    deleted. One deleted while it was observed may have its children in the garbage collector's
    hands already: writing them now would create them again, owned by an object that is gone, for
    the collector to delete a second time (and a Job so created starts work nobody wants). The
    retry then finds the object gone and stops."""
    if all(action.verb in _LOCAL_VERBS for action in actions):
        return
    meta = body["metadata"]
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    now = kube.get_object(_KINDS[body["kind"]], namespace, name)
    current = (now or {}).get("metadata") or {}
    if now is None or current.get("uid") != meta.get("uid") or current.get("deletionTimestamp"):
        raise RetryLater(f"{body['kind']} {namespace}/{name} was deleted while it was reconciled: nothing written", 1)


def execute_all(body: dict[str, Any], actions: list[Action]) -> None:
    """Carry out `actions` for the object `body`, in order, once `still_there` says it may."""
    still_there(body, actions)
    for action in actions:
        execute(body["metadata"].get("namespace") or "", action)


def execute(namespace: str, action: Action) -> None:
    """Carry out one action in `namespace` (`register` is the TrainingRun controller's)."""
    body = action.body or {}
    match action.verb, action.kind:
        case "create", "Job":
            kube.create_job(body)
        case "create", kind if kind in BACKENDS:
            kube.create_trial_job(BACKENDS[kind].api, body)
        case "create", _:
            kube.create(body)
        case "apply", _:
            kube.apply(body, first=action.fields)
        case "delete", "Job":
            kube.delete_job(namespace, action.name)
        case "delete", kind if kind in BACKENDS:
            kube.delete_trial_job(BACKENDS[kind].api, namespace, action.name)
        case (("suspend" | "resume"), kind) if kind in BACKENDS:
            backend = BACKENDS[kind]
            kube.patch_trial_job(backend.api, namespace, action.name, backend.suspend_patch(action.verb == "suspend"))
        case "patch", HTTPROUTE.kind:
            kube.patch_http_route(namespace, action.name, body)
        case "patch", WORKLOAD.kind:
            kube.patch_workload(namespace, action.name, body)
        case "annotate", kind if kind in _KINDS:
            kube.annotate(_KINDS[kind], namespace, action.name, body)
        case "gauge", "ModelDeployment":
            observability.ROLLOUT_ABORTED.labels(namespace, action.name).set(action.value or 0.0)
        case _:
            raise ValueError(f"no way to {action.verb} a {action.kind}")


def secret_reader(namespace: str) -> mlflow.SecretReader:
    """Reads a Secret of `namespace` for the mlflow module (which may not call the API itself):
    RegistryError when it does not exist or the operator may not read it; an API server that does
    not answer passes on (`retry_later` turns it into a retry)."""

    def read(name: str, field: str) -> dict[str, Any]:
        try:
            secret = kube.get_secret(namespace, name)
        except kube.Forbidden as e:
            raise mlflow.RegistryError(
                f"the operator may not read Secret {namespace}/{name}: install the chart with "
                f"rbac.readSecrets=true to use {field}"
            ) from e
        if secret is None:
            raise mlflow.RegistryError(f"Secret {namespace}/{name} ({field}) does not exist")
        return secret

    return read


def not_created(pods: list[dict[str, Any]], owner: dict[str, Any]) -> str | None:
    """While `owner` (a Job, a trial job) has no pod: why its controller could not create one.
    Events are a hint, not a need: without the RBAC to list them (an older chart) this says nothing."""
    if pods:
        return None
    try:
        events = kube.list_events(owner["metadata"]["namespace"], owner["metadata"]["uid"])
    except kube.Forbidden:
        return None
    return creation_problem(events)
