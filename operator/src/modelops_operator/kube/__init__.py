"""The only code that talks to the Kubernetes API server (besides kopf's own watching).

Everything above this layer works on plain dicts and pydantic models; this module turns API
errors into the operator's exception hierarchy:

    KubeError
    ├── Conflict        409: someone else changed the object; retry soon
    └── Unavailable     5xx, timeouts, connection errors: the API server is away; retry later
        └── Forbidden   403: the operator's RBAC does not allow the call (a Secret, by default); a 403 for a
                        namespace being deleted is a plain Unavailable

It speaks the API's JSON over urllib3 (the client library's own transport) and hands the decoded
objects on as they came: the Kubernetes client library is not imported (`kube.credentials` says
why). An object's kind is mapped to its path by the API server's discovery, once per group and
version, as the client's dynamic client does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from modelops_operator import __version__
from modelops_operator.api.common import FIELD_MANAGER, GROUP, VERSION
from modelops_operator.api.kinds import Kind
from modelops_operator.api.names import HTTPROUTE, WORKLOAD, ExternalAPI
from modelops_operator.kube import credentials
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

#: Connections kept to the API server: one per reconcile thread, and some for the leader's Lease
#: and the log reads (`configure` sets it from the settings before the first call).
_POOL = {"connections": OperatorSettings.model_fields["workers"].get_default() + 8}


def configure(settings: OperatorSettings) -> None:
    """Size the client's connection pool for `settings.workers` (before the first `login`)."""
    _POOL["connections"] = settings.workers + 8


class Client:
    """One API server, its credentials and a pool of kept-alive connections to it."""

    def __init__(self, creds: credentials.Credentials, connections: int) -> None:
        self.server = creds.server.rstrip("/")
        pool: dict[str, Any] = {
            "num_pools": 2,
            # With fewer connections than threads, connections are dropped and opened again, a TLS
            # handshake each time.
            "maxsize": connections,
            "ssl_context": creds.ssl_context(),
        }
        if creds.insecure:
            pool.update(cert_reqs="CERT_NONE", assert_hostname=False)
        if creds.tls_server_name:
            pool["server_hostname"] = creds.tls_server_name
        self.http: urllib3.PoolManager = (
            urllib3.ProxyManager(creds.proxy_url, **pool) if creds.proxy_url else urllib3.PoolManager(**pool)
        )
        self.headers = {
            "Accept": "application/json",
            "User-Agent": f"modelops-operator/{__version__}",
            **creds.headers(),
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> urllib3.BaseHTTPResponse:
        url = self.server + path + ("?" + urlencode(query) if query else "")
        headers = self.headers if body is None else {**self.headers, "Content-Type": content_type}
        return self.http.request(
            method,
            url,
            body=None if body is None else json.dumps(body, separators=(",", ":")).encode(),
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            retries=False,
        )


@functools.cache
def login() -> Client:
    """The API client: in-cluster credentials in a pod, else the kubeconfig ($KUBECONFIG). Made once,
    and again after the API server refuses the credentials (401)."""
    try:
        return Client(credentials.load(), _POOL["connections"])
    except credentials.LoginError as e:
        raise Unavailable(f"log in to the API server: {e}") from e


def _request(what: str, method: str, path: str, **call: Any) -> Any:
    """One call (`call`: `Client.request`'s keywords), its JSON answer decoded (404 -> None), its
    refusals mapped onto this module's errors."""
    try:
        for attempt in (1, 2):
            res = login().request(method, path, **call)
            if res.status == 401 and attempt == 1:
                # A rotated ServiceAccount token or an expired exec token: read the credentials again.
                login.cache_clear()
                continue
            break
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise Unavailable(f"{what}: {e}") from e
    if res.status < 400:
        try:
            return json.loads(res.data) if res.data else {}
        except ValueError as e:
            raise Unavailable(f"{what}: the API server's answer is not JSON") from e
    if res.status == 404:
        return None
    if res.status == 409:
        raise Conflict(f"{what}: {res.reason}")
    if res.status == 403 and b"NamespaceTerminating" in res.data:
        # The API server's 403 for a namespace being deleted: no permission is missing.
        raise Unavailable(f"{what}: its namespace is being deleted")
    if res.status == 403:
        raise Forbidden(f"{what}: forbidden by the operator's RBAC")
    raise Unavailable(f"{what}: {res.status} {res.reason}")


def _base(api_version: str) -> str:
    """The path of a group/version: `/api/v1` for the core group, else `/apis/<group>/<version>`."""
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def _path(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    path = _base(api_version)
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    return path + f"/{quote(name, safe='')}" if name is not None else path


def _items(res: Any) -> list[dict[str, Any]]:
    return list(res.get("items") or []) if res is not None else []


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Jobs in `namespace` matching a label selector, as plain dicts."""
    what = f"list jobs {namespace} {selector}"
    return _items(_request(what, "GET", _path("batch/v1", "jobs", namespace), query={"labelSelector": selector}))


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods in `namespace` matching a label selector, as plain dicts."""
    what = f"list pods {namespace} {selector}"
    return _items(_request(what, "GET", _path("v1", "pods", namespace), query={"labelSelector": selector}))


def list_events(namespace: str, uid: str) -> list[dict[str, Any]]:
    """The Events recorded about the object with `uid` (core/v1, which also lists events.k8s.io
    ones), as plain dicts: how a controller says it could not create a pod."""
    selector = f"involvedObject.uid={uid}"
    what = f"list events {namespace} {selector}"
    return _items(_request(what, "GET", _path("v1", "events", namespace), query={"fieldSelector": selector}))


def create_job(body: dict[str, Any]) -> None:
    """Create a Job; one that exists already (a retried create) is fine."""
    # A conflict means an earlier attempt created it and its answer was lost: the name is deterministic.
    with contextlib.suppress(Conflict):
        path = _path("batch/v1", "jobs", body["metadata"]["namespace"])
        _request(f"create job {body['metadata']['name']}", "POST", path, body=body)


def delete_job(namespace: str, name: str) -> None:
    """Delete a Job and its pods (background propagation); a missing one is fine."""
    path = _path("batch/v1", "jobs", namespace, name)
    _request(f"delete job {namespace}/{name}", "DELETE", path, query={"propagationPolicy": "Background"})


_OURS = f"{GROUP}/{VERSION}"
_MERGE = "application/merge-patch+json"


def get_object(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our custom objects, or None when it does not exist."""
    path = _path(_OURS, kind.plural, namespace, name)
    obj = _request(f"get {kind.plural} {namespace}/{name}", "GET", path)
    return dict(obj) if obj is not None else None


def patch_status(kind: Kind, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge `patch` into one of our objects' status (its status subresource), as kopf writes a
    handler's status patch."""
    path = _path(_OURS, kind.plural, namespace, name) + "/status"
    _request(
        f"patch {kind.plural}/status {namespace}/{name}", "PATCH", path, body={"status": patch}, content_type=_MERGE
    )


def _external(api: ExternalAPI) -> str:
    return f"{api.group}/{api.version}"


def list_trial_jobs(api: ExternalAPI, namespace: str, selector: str) -> list[dict[str, Any]] | None:
    """Trial jobs of kind `api` (PyTorchJobs, TrainJobs) in `namespace` matching a label selector;
    None when the cluster does not serve that API."""
    path = _path(_external(api), api.plural, namespace)
    res = _request(f"list {api.plural} {namespace} {selector}", "GET", path, query={"labelSelector": selector})
    return _items(res) if res is not None else None


def create_trial_job(api: ExternalAPI, body: dict[str, Any]) -> None:
    """Create a trial job; one that exists already (a retried create: the name is deterministic) is fine."""
    ns = body["metadata"]["namespace"]
    with contextlib.suppress(Conflict):
        path = _path(_external(api), api.plural, ns)
        _request(f"create {api.kind} {ns}/{body['metadata']['name']}", "POST", path, body=body)


def delete_trial_job(api: ExternalAPI, namespace: str, name: str) -> None:
    """Delete a trial job and its pods (background propagation); a missing one is fine."""
    path = _path(_external(api), api.plural, namespace, name)
    _request(f"delete {api.kind} {namespace}/{name}", "DELETE", path, query={"propagationPolicy": "Background"})


def patch_trial_job(api: ExternalAPI, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a trial job (its suspend flag: the training operator or Trainer v2 stops or
    restarts its pods)."""
    path = _path(_external(api), api.plural, namespace, name)
    _request(f"patch {api.kind} {namespace}/{name}", "PATCH", path, body=patch, content_type=_MERGE)


def runtime_exists(api: ExternalAPI, namespace: str | None, name: str) -> bool:
    """Whether a Trainer v2 runtime exists: a ClusterTrainingRuntime (`namespace` None) or a
    TrainingRuntime in `namespace`."""
    where = name if namespace is None else f"{namespace}/{name}"
    path = _path(_external(api), api.plural, namespace, name)
    return _request(f"get {api.kind} {where}", "GET", path) is not None


#: How soon a group/version's discovery is asked again for a kind it did not list (a CRD installed since).
DISCOVERY_RETRY_SECONDS = 30.0
_discovered: dict[str, tuple[float, dict[str, tuple[str, bool]]]] = {}
_discovery_lock = threading.Lock()


def _resource(body: dict[str, Any], what: str) -> tuple[str, bool]:
    """The plural and namespacedness of `body`'s kind, from the API server's discovery."""
    api_version, kind = body["apiVersion"], body["kind"]
    with _discovery_lock:
        at, kinds = _discovered.get(api_version, (0.0, {}))
        if kind in kinds:
            return kinds[kind]
        if time.monotonic() - at >= DISCOVERY_RETRY_SECONDS or not at:
            listed = _request(f"{what}: discover {api_version}", "GET", _base(api_version))
            kinds = {
                r["kind"]: (r["name"], bool(r.get("namespaced")))
                for r in (listed or {}).get("resources", [])
                if "/" not in r["name"]
            }
            _discovered[api_version] = (time.monotonic(), kinds)
        if kind in kinds:
            return kinds[kind]
    raise Unavailable(f"{what}: the API server does not serve {api_version} {kind}")


def _path_of(body: dict[str, Any], what: str, *, named: bool = True) -> str:
    plural, namespaced = _resource(body, what)
    meta = body["metadata"]
    return _path(
        body["apiVersion"], plural, meta.get("namespace") if namespaced else None, meta["name"] if named else None
    )


def get_like(body: dict[str, Any]) -> dict[str, Any] | None:
    """The object of `body`'s kind, namespace and name as it is now, or None when there is none."""
    meta = body["metadata"]
    what = f"get {body['kind']} {meta.get('namespace')}/{meta['name']}"
    res = _request(what, "GET", _path_of(body, what))
    return dict(res) if res is not None else None


def create(body: dict[str, Any]) -> None:
    """Create `body`, absent when last read, by server-side apply as the operator's field manager,
    without forcing: one made by someone else in between with any field of another value is a
    `Conflict` (retried: the next reconcile sees whose it is), never taken over.

    Not a plain create (POST): the fields of a POST belong to the manager's `Update` entry, which a
    later apply does not own, so a field dropped from the spec afterwards (a limit, a toleration)
    would stay on the object for good (`reconcile.ownership.upgrade` mends objects made so)."""
    _apply(body, force=False)


def apply(body: dict[str, Any], *, first: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Server-side apply `body` as the operator's field manager, taking over conflicting fields
    (a manual edit of a field the operator sets is reverted), after the JSON patch `first` when
    there is one (`reconcile.ownership.upgrade`). Only for the operator's own objects:
    `reconcile.ownership.claim` says which those are, and keeps (does not send) one that already
    holds `body`."""
    if first:
        json_patch(body, first)
    return _apply(body, force=True)


def _apply(body: dict[str, Any], *, force: bool) -> dict[str, Any]:
    meta = body["metadata"]
    what = f"apply {body['kind']} {meta.get('namespace')}/{meta['name']}"
    res = _request(
        what,
        "PATCH",
        _path_of(body, what),
        query={"fieldManager": FIELD_MANAGER, "force": str(force).lower()},
        body=body,
        content_type="application/apply-patch+yaml",  # JSON is YAML
    )
    return dict(res) if res is not None else {}


def json_patch(like: dict[str, Any], patch: list[dict[str, Any]]) -> None:
    """Apply a JSON patch (RFC 6902) to the object of `like`'s kind, namespace and name."""
    meta = like["metadata"]
    what = f"patch {like['kind']} {meta.get('namespace')}/{meta['name']}"
    _request(what, "PATCH", _path_of(like, what), body=patch, content_type="application/json-patch+json")


def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret (`data` base64-encoded, as the API gives it), or None. `Forbidden` unless the chart
    grants the operator `get` on Secrets (`rbac.readSecrets`)."""
    res = _request(f"get secret {namespace}/{name}", "GET", _path("v1", "secrets", namespace, name))
    return dict(res) if res is not None else None


def get_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """A Deployment as a plain dict, or None."""
    res = _request(f"get deployment {namespace}/{name}", "GET", _path("apps/v1", "deployments", namespace, name))
    return dict(res) if res is not None else None


_API_SEEN: dict[str, tuple[float, bool]] = {}


def crd_exists(name: str, ttl: float = 60.0) -> bool:
    """Whether the CustomResourceDefinition `name` (e.g. `servicemonitors.monitoring.coreos.com`)
    is installed; remembered for `ttl` seconds."""
    now = time.monotonic()
    if name in _API_SEEN and now - _API_SEEN[name][0] < ttl:
        return _API_SEEN[name][1]
    path = _path("apiextensions.k8s.io/v1", "customresourcedefinitions", None, name)
    found = _request(f"get crd {name}", "GET", path) is not None
    _API_SEEN[name] = (now, found)
    return found


def annotate(kind: Kind, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """Set (a value) or delete (None) annotations of one of our objects: a consumed manual command,
    or the wake-up of a dependant. Setting a value it already has writes nothing."""
    path = _path(_OURS, kind.plural, namespace, name)
    patch = {"metadata": {"annotations": annotations}}
    _request(f"patch {kind.plural} {namespace}/{name}", "PATCH", path, body=patch, content_type=_MERGE)


def get_http_route(namespace: str, name: str) -> dict[str, Any] | None:
    """A Gateway API HTTPRoute, or None when it does not exist."""
    res = _request(
        f"get httproute {namespace}/{name}", "GET", _path(_external(HTTPROUTE), HTTPROUTE.plural, namespace, name)
    )
    return dict(res) if res is not None else None


def patch_http_route(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a Gateway API HTTPRoute (its rules' backend weights)."""
    path = _path(_external(HTTPROUTE), HTTPROUTE.plural, namespace, name)
    _request(f"patch httproute {namespace}/{name}", "PATCH", path, body=patch, content_type=_MERGE)


def list_workloads(namespace: str, selector: str) -> list[dict[str, Any]] | None:
    """Kueue Workloads in `namespace` matching a label selector; None when the cluster does not
    serve Kueue's Workload API."""
    path = _path(_external(WORKLOAD), WORKLOAD.plural, namespace)
    res = _request(f"list workloads {namespace} {selector}", "GET", path, query={"labelSelector": selector})
    return _items(res) if res is not None else None


def patch_workload(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a Kueue Workload (`spec.active` and the operator's annotation saying it set it)."""
    path = _path(_external(WORKLOAD), WORKLOAD.plural, namespace, name)
    _request(f"patch workload {namespace}/{name}", "PATCH", path, body=patch, content_type=_MERGE)


_LEASES = "coordination.k8s.io/v1"


def get_lease(namespace: str, name: str, timeout: tuple[float, float]) -> dict[str, Any] | None:
    """A coordination.k8s.io Lease, or None."""
    res = _request(f"get lease {namespace}/{name}", "GET", _path(_LEASES, "leases", namespace, name), timeout=timeout)
    return dict(res) if res is not None else None


def create_lease(body: dict[str, Any], timeout: tuple[float, float]) -> None:
    """Create a Lease (`Conflict` when one exists)."""
    ns = body["metadata"]["namespace"]
    _request(
        f"create lease {ns}/{body['metadata']['name']}",
        "POST",
        _path(_LEASES, "leases", ns),
        body=body,
        timeout=timeout,
    )


def replace_lease(body: dict[str, Any], timeout: tuple[float, float]) -> None:
    """Replace a Lease; `Conflict` when its `resourceVersion` is not the latest."""
    meta = body["metadata"]
    path = _path(_LEASES, "leases", meta["namespace"], meta["name"])
    _request(f"replace lease {meta['namespace']}/{meta['name']}", "PUT", path, body=body, timeout=timeout)
