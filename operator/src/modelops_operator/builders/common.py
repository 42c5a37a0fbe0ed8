"""What every child object shares: names, labels, owner references, the restricted security profile.

Naming: a child is named `<owner>-<role>[-<hash>]` by `api.names.child_name`, where the hash
identifies the spec it was built from; the owner part is truncated so the whole fits Kubernetes'
63-character label-value limit (Job names become pod labels). Labels follow the
`app.kubernetes.io/*` recommendations, plus `modelops.dev/<kind>: <owner>` so children are listed by
their owner with one selector; every key is in `api.names`.

Pod settings (ServiceAccount, pull Secrets, extra labels, annotations and environment) are the
operator-wide `workload_defaults` with the spec's `podSettings` over them (`pod_settings`), laid on a
built pod template by `apply_pod_settings`: the operator's own labels, annotations and variables are
written last, so they win over anything a user could add.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlparse

from modelops_operator.api import names
from modelops_operator.api.common import Placement, PodSettings
from modelops_operator.settings import OperatorSettings

MANAGED_BY = names.MANAGED_BY


def spec_hash(value: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-able value (sorted keys), for names and change detection."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def labels(kind: str, owner: str, component: str) -> dict[str, str]:
    """The labels of every child of `owner` (a `kind` object)."""
    return {
        names.APP_NAME_LABEL: "modelops",
        names.APP_INSTANCE_LABEL: names.label_value(owner),
        names.APP_COMPONENT_LABEL: component,
        names.APP_MANAGED_BY_LABEL: MANAGED_BY,
        names.owner_label(kind): names.label_value(owner),
    }


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to `obj`: the child is deleted with it (garbage collection)."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level settings of the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    """Container-level settings of the `restricted` Pod Security Standard, read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def place(pod_spec: dict[str, Any], placement: Placement) -> None:
    """Copy a spec's placement (node selector, tolerations, priority class) onto a pod spec."""
    wire = placement.wire()
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        if wire.get(key):
            pod_spec[key] = wire[key]


def artifact_mounts(uris: list[str], settings: OperatorSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The artifact PVC at the store's path, when any of `uris` is a `file://` path and the
    operator is configured with one; (volumes, volumeMounts)."""
    if not settings.artifact_pvc or not any(urlparse(u).scheme == "file" for u in uris):
        return [], []
    base = urlparse(settings.artifact_uri).path or "/"
    return (
        [{"name": "artifacts", "persistentVolumeClaim": {"claimName": settings.artifact_pvc}}],
        [{"name": "artifacts", "mountPath": base}],
    )


def pod_settings(defaults: PodSettings, own: PodSettings) -> PodSettings:
    """The spec's `podSettings` over the operator-wide defaults: a ServiceAccount set in the spec
    wins; labels and annotations merge key by key and `env` by name, the spec's winning; pull
    Secrets and `envFrom` sources are the defaults' followed by the spec's (a later `envFrom`
    source wins a shared key), without repeats."""
    env = {var.name: var for var in defaults.env}
    env.update({var.name: var for var in own.env})
    pulls = {ref.name: ref for ref in [*defaults.image_pull_secrets, *own.image_pull_secrets]}
    env_from = []
    for source in [*defaults.env_from, *own.env_from]:
        if source not in env_from:
            env_from.append(source)
    return PodSettings(
        service_account_name=own.service_account_name or defaults.service_account_name,
        image_pull_secrets=list(pulls.values()),
        labels={**defaults.labels, **own.labels},
        annotations={**defaults.annotations, **own.annotations},
        env=list(env.values()),
        env_from=env_from,
    )


def apply_pod_settings(template: dict[str, Any], settings: PodSettings, container: str) -> None:
    """Lay `settings` on a pod template (`{"metadata": ..., "spec": ...}`) in place. The template's
    own labels, annotations and the named container's variables are kept over the settings' (they
    are the operator's: selectors, the served model's digest, the programs' config)."""
    meta, spec = template.setdefault("metadata", {}), template["spec"]
    if settings.labels:
        meta["labels"] = {**settings.labels, **meta.get("labels", {})}
    if settings.annotations:
        meta["annotations"] = {**settings.annotations, **meta.get("annotations", {})}
    if settings.service_account_name:
        spec["serviceAccountName"] = settings.service_account_name
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [ref.wire() for ref in settings.image_pull_secrets]
    target = next(c for c in spec["containers"] if c["name"] == container)
    ours = {var["name"] for var in target.get("env", [])}
    extra = [var.wire() for var in settings.env if var.name not in ours]
    if extra:
        target["env"] = [*target.get("env", []), *extra]
    if settings.env_from:
        # Before the container's own sources (a Dataset's credentials Secret), which then win a
        # shared key; `env` wins over every source.
        target["envFrom"] = [*(s.wire() for s in settings.env_from), *target.get("envFrom", [])]
