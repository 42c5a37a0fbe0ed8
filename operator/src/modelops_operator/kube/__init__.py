"""The only code that talks to the Kubernetes API server (besides kopf's own watching).

Everything above this layer works on plain dicts and pydantic models; this module turns API
errors into the operator's exception hierarchy:

    KubeError
    ├── Conflict        409: someone else changed the object; retry soon
    └── Unavailable     5xx, timeouts, connection errors: the API server is away; retry later
        └── Forbidden   403: the operator's RBAC does not allow the call (a Secret, by default); a 403 for a
                        namespace being deleted is a plain Unavailable
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import kubernetes
import kubernetes.dynamic
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.kinds import Kind
from modelops_operator.api.names import HTTPROUTE, WORKLOAD, ExternalAPI
from modelops_operator.settings import OperatorSettings


class KubeError(Exception):
    """Base of the errors this module raises."""


class Conflict(KubeError):
    """The object changed under us (HTTP 409)."""


class Unavailable(KubeError):
    """The API server did not answer usefully (5xx, timeout, refused connection)."""


class Forbidden(Unavailable):
    """The operator may not make the call (HTTP 403): its RBAC leaves it out."""


#: (connect, read) seconds for every call that does not set its own. Without it a connection that
#: went silent (a load balancer or NAT dropping the flow without a reset) hangs the call, and the
#: handler thread making it, forever; with it the call fails as `Unavailable` and is retried.
REQUEST_TIMEOUT = (5.0, 30.0)


class _TimedApiClient(kubernetes.client.ApiClient):  # type: ignore[misc]
    """The Kubernetes client, with `REQUEST_TIMEOUT` on every request (generated, dynamic, logs)."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().request(*args, **kwargs)


#: Connections kept to the API server: one per reconcile thread, and some for the leader's Lease
#: and the log reads (`configure` sets it from the settings before the first call).
_POOL = {"connections": OperatorSettings.model_fields["workers"].get_default() + 8}


def configure(settings: OperatorSettings) -> None:
    """Size the client's connection pool for `settings.workers` (before the first `login`)."""
    _POOL["connections"] = settings.workers + 8


@functools.cache
def login() -> kubernetes.client.ApiClient:
    """The API client: in-cluster credentials in a pod, else the kubeconfig ($KUBECONFIG). Made once."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    # With fewer connections than threads (the client's default is 5 per core) connections are
    # dropped and opened again, a TLS handshake each time.
    config.connection_pool_maxsize = _POOL["connections"]
    kubernetes.client.Configuration.set_default(config)
    return _TimedApiClient(config)


def _api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(login())


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the client, mapping its errors onto this module's (404 -> None)."""
    try:
        return fn(*args, **kwargs)
    except ApiException as e:
        if e.status == 404:
            return None
        if e.status == 409:
            raise Conflict(f"{what}: {e.reason}") from e
        if e.status == 403 and "NamespaceTerminating" in str(e.body):
            # The API server's 403 for a namespace being deleted: no permission is missing.
            raise Unavailable(f"{what}: its namespace is being deleted") from e
        if e.status == 403:
            raise Forbidden(f"{what}: forbidden by the operator's RBAC") from e
        raise Unavailable(f"{what}: {e.status} {e.reason}") from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise Unavailable(f"{what}: {e}") from e


def _plain(obj: Any) -> Any:
    return login().sanitize_for_serialization(obj)


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Jobs in `namespace` matching a label selector, as plain dicts."""
    batch = kubernetes.client.BatchV1Api(login())
    res = _call(f"list jobs {namespace} {selector}", batch.list_namespaced_job, namespace, label_selector=selector)
    return list(_plain(res.items)) if res is not None else []


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods in `namespace` matching a label selector, as plain dicts."""
    core = kubernetes.client.CoreV1Api(login())
    res = _call(f"list pods {namespace} {selector}", core.list_namespaced_pod, namespace, label_selector=selector)
    return list(_plain(res.items)) if res is not None else []


def list_events(namespace: str, uid: str) -> list[dict[str, Any]]:
    """The Events recorded about the object with `uid` (core/v1, which also lists events.k8s.io
    ones), as plain dicts: how a controller says it could not create a pod."""
    core = kubernetes.client.CoreV1Api(login())
    selector = f"involvedObject.uid={uid}"
    res = _call(f"list events {namespace} {selector}", core.list_namespaced_event, namespace, field_selector=selector)
    return list(_plain(res.items)) if res is not None else []


def create_job(body: dict[str, Any]) -> None:
    """Create a Job; one that exists already (a retried create) is fine."""
    batch = kubernetes.client.BatchV1Api(login())
    # A conflict means an earlier attempt created it and its answer was lost: the name is deterministic.
    with contextlib.suppress(Conflict):
        _call(
            f"create job {body['metadata']['name']}", batch.create_namespaced_job, body["metadata"]["namespace"], body
        )


def delete_job(namespace: str, name: str) -> None:
    """Delete a Job and its pods (background propagation); a missing one is fine."""
    batch = kubernetes.client.BatchV1Api(login())
    _call(
        f"delete job {namespace}/{name}", batch.delete_namespaced_job, name, namespace, propagation_policy="Background"
    )


def get_object(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our custom objects, or None when it does not exist."""
    obj = _call(
        f"get {kind.plural} {namespace}/{name}",
        _api().get_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        kind.plural,
        name,
    )
    return dict(obj) if obj is not None else None


def patch_status(kind: Kind, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge `patch` into one of our objects' status (its status subresource), as kopf writes a
    handler's status patch."""
    _call(
        f"patch {kind.plural}/status {namespace}/{name}",
        _api().patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        kind.plural,
        name,
        {"status": patch},
    )


def list_trial_jobs(api: ExternalAPI, namespace: str, selector: str) -> list[dict[str, Any]] | None:
    """Trial jobs of kind `api` (PyTorchJobs, TrainJobs) in `namespace` matching a label selector;
    None when the cluster does not serve that API."""
    res = _call(
        f"list {api.plural} {namespace} {selector}",
        _api().list_namespaced_custom_object,
        api.group,
        api.version,
        namespace,
        api.plural,
        label_selector=selector,
    )
    return list(res["items"]) if res is not None else None


def create_trial_job(api: ExternalAPI, body: dict[str, Any]) -> None:
    """Create a trial job; one that exists already (a retried create: the name is deterministic) is fine."""
    ns = body["metadata"]["namespace"]
    with contextlib.suppress(Conflict):
        _call(
            f"create {api.kind} {ns}/{body['metadata']['name']}",
            _api().create_namespaced_custom_object,
            api.group,
            api.version,
            ns,
            api.plural,
            body,
        )


def delete_trial_job(api: ExternalAPI, namespace: str, name: str) -> None:
    """Delete a trial job and its pods (background propagation); a missing one is fine."""
    _call(
        f"delete {api.kind} {namespace}/{name}",
        _api().delete_namespaced_custom_object,
        api.group,
        api.version,
        namespace,
        api.plural,
        name,
        propagation_policy="Background",
    )


def patch_trial_job(api: ExternalAPI, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a trial job (its suspend flag: the training operator or Trainer v2 stops or
    restarts its pods)."""
    _call(
        f"patch {api.kind} {namespace}/{name}",
        _api().patch_namespaced_custom_object,
        api.group,
        api.version,
        namespace,
        api.plural,
        name,
        patch,
    )


def runtime_exists(api: ExternalAPI, namespace: str | None, name: str) -> bool:
    """Whether a Trainer v2 runtime exists: a ClusterTrainingRuntime (`namespace` None) or a
    TrainingRuntime in `namespace`."""
    if namespace is None:
        res = _call(
            f"get {api.kind} {name}", _api().get_cluster_custom_object, api.group, api.version, api.plural, name
        )
    else:
        res = _call(
            f"get {api.kind} {namespace}/{name}",
            _api().get_namespaced_custom_object,
            api.group,
            api.version,
            namespace,
            api.plural,
            name,
        )
    return res is not None


FIELD_MANAGER = "modelops-operator"


@functools.cache
def _dynamic() -> kubernetes.dynamic.DynamicClient:
    return kubernetes.dynamic.DynamicClient(login())


def _resource(body: dict[str, Any], what: str) -> Any:
    try:
        return _dynamic().resources.get(api_version=body["apiVersion"], kind=body["kind"])
    except kubernetes.dynamic.exceptions.ResourceNotFoundError as e:
        raise Unavailable(f"{what}: the API server does not serve {body['apiVersion']} {body['kind']}") from e


def get_like(body: dict[str, Any]) -> dict[str, Any] | None:
    """The object of `body`'s kind, namespace and name as it is now, or None when there is none."""
    meta = body["metadata"]
    what = f"get {body['kind']} {meta.get('namespace')}/{meta['name']}"
    res = _call(what, _resource(body, what).get, name=meta["name"], namespace=meta.get("namespace"))
    return dict(res.to_dict()) if res is not None else None


def create(body: dict[str, Any]) -> None:
    """Create `body` as the operator's field manager. One created by someone else in between is a
    `Conflict` (retried: the next reconcile sees whose it is); it is never taken over."""
    meta = body["metadata"]
    what = f"create {body['kind']} {meta.get('namespace')}/{meta['name']}"
    _call(what, _resource(body, what).create, body=body, namespace=meta.get("namespace"), field_manager=FIELD_MANAGER)


def apply(body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `body` as the operator's field manager, taking over conflicting fields
    (a manual edit of a field the operator sets is reverted). Only for the operator's own objects:
    `reconcile.ownership.claim` says which those are, and keeps (does not send) one that already
    holds `body`."""
    meta = body["metadata"]
    what = f"apply {body['kind']} {meta.get('namespace')}/{meta['name']}"
    res = _call(
        what,
        _resource(body, what).server_side_apply,
        body=body,
        name=meta["name"],
        namespace=meta.get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
    )
    return dict(res.to_dict()) if res is not None else {}


def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret (`data` base64-encoded, as the API gives it), or None. `Forbidden` unless the chart
    grants the operator `get` on Secrets (`rbac.readSecrets`)."""
    core = kubernetes.client.CoreV1Api(login())
    res = _call(f"get secret {namespace}/{name}", core.read_namespaced_secret, name, namespace)
    return dict(_plain(res)) if res is not None else None


def get_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """A Deployment as a plain dict, or None."""
    apps = kubernetes.client.AppsV1Api(login())
    res = _call(f"get deployment {namespace}/{name}", apps.read_namespaced_deployment, name, namespace)
    return dict(_plain(res)) if res is not None else None


_API_SEEN: dict[str, tuple[float, bool]] = {}


def crd_exists(name: str, ttl: float = 60.0) -> bool:
    """Whether the CustomResourceDefinition `name` (e.g. `servicemonitors.monitoring.coreos.com`)
    is installed; remembered for `ttl` seconds."""
    now = time.monotonic()
    if name in _API_SEEN and now - _API_SEEN[name][0] < ttl:
        return _API_SEEN[name][1]
    ext = kubernetes.client.ApiextensionsV1Api(login())
    found = _call(f"get crd {name}", ext.read_custom_resource_definition, name) is not None
    _API_SEEN[name] = (now, found)
    return found


def annotate(kind: Kind, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """Set (a value) or delete (None) annotations of one of our objects: a consumed manual command,
    or the wake-up of a dependant. Setting a value it already has writes nothing."""
    _call(
        f"patch {kind.plural} {namespace}/{name}",
        _api().patch_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        kind.plural,
        name,
        {"metadata": {"annotations": annotations}},
    )


def get_http_route(namespace: str, name: str) -> dict[str, Any] | None:
    """A Gateway API HTTPRoute, or None when it does not exist."""
    res = _call(
        f"get httproute {namespace}/{name}",
        _api().get_namespaced_custom_object,
        HTTPROUTE.group,
        HTTPROUTE.version,
        namespace,
        HTTPROUTE.plural,
        name,
    )
    return dict(res) if res is not None else None


def patch_http_route(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a Gateway API HTTPRoute (its rules' backend weights)."""
    _call(
        f"patch httproute {namespace}/{name}",
        _api().patch_namespaced_custom_object,
        HTTPROUTE.group,
        HTTPROUTE.version,
        namespace,
        HTTPROUTE.plural,
        name,
        patch,
    )


def list_workloads(namespace: str, selector: str) -> list[dict[str, Any]] | None:
    """Kueue Workloads in `namespace` matching a label selector; None when the cluster does not
    serve Kueue's Workload API."""
    res = _call(
        f"list workloads {namespace} {selector}",
        _api().list_namespaced_custom_object,
        WORKLOAD.group,
        WORKLOAD.version,
        namespace,
        WORKLOAD.plural,
        label_selector=selector,
    )
    return list(res["items"]) if res is not None else None


def patch_workload(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a Kueue Workload (`spec.active` and the operator's annotation saying it set it)."""
    _call(
        f"patch workload {namespace}/{name}",
        _api().patch_namespaced_custom_object,
        WORKLOAD.group,
        WORKLOAD.version,
        namespace,
        WORKLOAD.plural,
        name,
        patch,
    )
