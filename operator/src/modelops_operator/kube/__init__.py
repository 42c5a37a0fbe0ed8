"""The only code that talks to the Kubernetes API server (besides kopf's own watching).

Everything above this layer works on plain dicts and pydantic models; this module turns API
errors into the operator's exception hierarchy:

    KubeError
    ├── Conflict        409: someone else changed the object; retry soon
    └── Unavailable     5xx, timeouts, connection errors: the API server is away; retry later
"""

from __future__ import annotations

import functools
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from modelops_operator.api.common import GROUP, VERSION
from modelops_operator.api.kinds import Kind


class KubeError(Exception):
    """Base of the errors this module raises."""


class Conflict(KubeError):
    """The object changed under us (HTTP 409)."""


class Unavailable(KubeError):
    """The API server did not answer usefully (5xx, timeout, refused connection)."""


@functools.cache
def login() -> kubernetes.client.ApiClient:
    """The API client: in-cluster credentials in a pod, else the kubeconfig ($KUBECONFIG). Made once."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(login())


def get_object(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our custom objects, or None when it does not exist."""
    try:
        obj: dict[str, Any] = _api().get_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name)
        return obj
    except ApiException as e:
        if e.status == 404:
            return None
        if e.status == 409:
            raise Conflict(str(e)) from e
        raise Unavailable(f"GET {kind.plural}/{namespace}/{name}: {e.status} {e.reason}") from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise Unavailable(f"GET {kind.plural}/{namespace}/{name}: {e}") from e
