"""The data-preparation Job of a Dataset, and the config it hands the program.

Naming: `<dataset>-prepare-<hash>`, the hash taken over the parts of the spec that change the data
(sources, classes, cleaning, preprocessing, split, augmentation, output) — so a new Job exactly
when a new dataset version may result, and none for a change of resources or placement. The Job
carries the hash as label `modelops.dev/spec-hash`, which is how the reconciler finds it again
after a restart. The pod runs `python -m modelops_trainer.prepare` with the config in the
environment variable `MODELOPS_PREPARE_CONFIG` (the contract `modelops.dev/prepare-config/v1`,
validated by the program), under the restricted Pod Security profile with a read-only root
filesystem (scratch space is an emptyDir at /tmp).

The pod always has resource limits (`DEFAULT_RESOURCES` fills the ones the spec leaves out) and its
scratch volume a `sizeLimit` (room for the archives at `spec.limits.archiveMaxBytes` each, plus
`SCRATCH_SPARE`): the sources are untrusted, and a pod without limits that meets a bomb takes its
node's memory or disk with it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from modelops_operator.api.dataset import DatasetSpec, SourceLimits
from modelops_operator.api.names import SPEC_HASH_LABEL, child_name
from modelops_operator.builders.common import (
    apply_pod_settings,
    artifact_mounts,
    labels,
    owner_reference,
    place,
    pod_settings,
    restricted_container_security,
    restricted_pod_security,
    spec_hash,
)
from modelops_operator.settings import OperatorSettings

CONFIG_ENV = "MODELOPS_PREPARE_CONFIG"
CONFIG_VERSION = "modelops.dev/prepare-config/v1"
DATA_FIELDS = ("sources", "classes", "cleaning", "preprocessing", "split", "augmentation", "output")
COMPONENT = "dataset-prepare"
#: Requests and limits of the preparation container where the spec sets none.
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "1Gi"},
    "limits": {"cpu": "4", "memory": "4Gi"},
}
#: Scratch space beside extracted archives (temporary files of readers, Python's own).
SCRATCH_SPARE = 1 << 30


def data_hash(spec: DatasetSpec) -> str:
    """Hash of the spec fields that determine the dataset's content."""
    wire = spec.wire()
    fields = {k: wire.get(k) for k in DATA_FIELDS}
    if spec.limits != SourceLimits():  # only when set: the default must not change existing hashes
        fields["limits"] = wire["limits"]
    return spec_hash(fields)


def scratch_size(spec: DatasetSpec) -> int:
    """Bytes of the pod's scratch volume: every archive at its limit, and some spare."""
    archives = sum(1 for s in spec.sources if s.format == "archive")
    return archives * spec.limits.archive_max_bytes + SCRATCH_SPARE


def prepare_resources(spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """The container's resources: the spec's, with `DEFAULT_RESOURCES` for the CPU and memory it
    leaves out, kept a valid pair (a request never above its limit)."""
    wire = spec.resources.wire()
    requests, limits = dict(wire.get("requests", {})), dict(wire.get("limits", {}))
    for name, default_limit in DEFAULT_RESOURCES["limits"].items():
        default_request = DEFAULT_RESOURCES["requests"][name]
        request, limit = requests.get(name), limits.get(name)
        if limit is None:
            limits[name] = default_limit if request is None else max(request, default_limit, key=_amount)
        if request is None:
            requests[name] = min(default_request, limits[name], key=_amount)
    return {"requests": requests, "limits": limits}


_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 1e-3,
}


def _amount(quantity: Any) -> float:
    """A Kubernetes quantity as a number, for comparing two of the same resource."""
    text = str(quantity)
    for suffix, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


def output_uri(spec: DatasetSpec, namespace: str, name: str, settings: OperatorSettings) -> str:
    """Where this Dataset's versions go: `<base>/datasets/<namespace>/<name>`."""
    base = (spec.output.uri or settings.artifact_uri).rstrip("/")
    return f"{base}/datasets/{namespace}/{name}"


def prepare_config(dataset: dict[str, Any], spec: DatasetSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The JSON the preparation program receives (contract `modelops.dev/prepare-config/v1`)."""
    meta = dataset["metadata"]
    wire = spec.wire()
    return {
        "apiVersion": CONFIG_VERSION,
        "dataset": {"name": meta["name"], "namespace": meta["namespace"]},
        "sources": [{k: v for k, v in s.items() if k != "credentialsSecret"} for s in wire["sources"]],
        "classes": wire.get("classes", []),
        "cleaning": wire["cleaning"],
        "preprocessing": wire["preprocessing"],
        "split": wire["split"],
        "augmentation": wire["augmentation"],
        "limits": wire["limits"],
        "output": {"uri": output_uri(spec, meta["namespace"], meta["name"], settings)},
        "specHash": data_hash(spec),
    }


def build_prepare_job(dataset: dict[str, Any], spec: DatasetSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The `batch/v1` Job that prepares the version of `dataset`'s current spec."""
    meta = dataset["metadata"]
    name, digest = meta["name"], data_hash(spec)
    config = prepare_config(dataset, spec, settings)
    job_labels = {**labels("Dataset", name, COMPONENT), SPEC_HASH_LABEL: digest}
    volumes, mounts = artifact_mounts([config["output"]["uri"], *(s.uri for s in spec.sources)], settings)
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": str(scratch_size(spec))}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    if spec.output.pvc:
        path = urlparse(config["output"]["uri"]).path
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc}})
        mounts.append({"name": "output", "mountPath": path})
    container: dict[str, Any] = {
        "name": "prepare",
        "image": settings.trainer_image,
        "command": ["python", "-m", "modelops_trainer.prepare"],
        "env": [
            {"name": CONFIG_ENV, "value": json.dumps(config, sort_keys=True)},
            {"name": "MODELOPS_LOG_FORMAT", "value": "json"},
        ],
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    secrets = sorted({s.credentials_secret for s in spec.sources if s.credentials_secret})
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in secrets]
    container["resources"] = prepare_resources(spec)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
    }
    place(pod_spec, spec.placement)
    template = {"metadata": {"labels": job_labels}, "spec": pod_spec}
    apply_pod_settings(template, pod_settings(settings.workload_defaults, spec.pod_settings), "prepare")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": child_name(name, "prepare", digest[:8]),
            "namespace": meta["namespace"],
            "labels": job_labels,
            "ownerReferences": [owner_reference(dataset)],
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "template": template,
        },
    }
