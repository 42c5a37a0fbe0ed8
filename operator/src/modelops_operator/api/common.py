"""Types shared by the three custom resources.

Every model here is also a piece of the CRD schema (see `modelops_operator.api.crdgen`): field
docstrings become the schema's descriptions, `Field` bounds become its bounds, and the
`x-kubernetes-validations` attached with `cel()` are enforced by the API server.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "modelops"

#: A Kubernetes resource quantity ("500m", "2Gi", 4): the CRD schema marks it int-or-string.
Quantity = int | str

#: Label keys and values follow Kubernetes' rules; the API server checks them where they are used.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: An fsspec URI with an explicit scheme: file://, s3://, gs://, http(s)://.
URI_PATTERN = r"^(file|s3|gs|gcs|az|abfs|https?)://.+$"
#: A SHA-256 digest as written by the programs: "sha256:" and 64 lowercase hex digits.
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
#: A Go-style duration as the API server and Prometheus write them: "30s", "5m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"


#: A `file://` URI at the root or in a system folder: a PersistentVolumeClaim mounted there (the
#: mount path is the URI's path) would hide the image's own programs and libraries.
SYSTEM_FOLDER_URI = (
    r"^file:///*((bin|boot|dev|etc|lib|lib32|lib64|libx32|opt|proc|root|run|sbin|sys|tmp|usr|var/run)(/.*)?)?/*$"
)
MOUNT_MESSAGE = (
    "a PVC is never mounted over / or a system folder (/etc, /usr, /tmp, ...): choose a uri under /mnt or /data"
)


def check_mount(uri: str | None, pvc: str | None) -> None:
    """The Python side of `mount_rule()`: ValueError when `pvc` would be mounted at a system folder."""
    if pvc and uri and re.match(SYSTEM_FOLDER_URI, uri):
        raise ValueError(MOUNT_MESSAGE)


def mount_rule() -> dict[str, str]:
    """The CEL rule for a model with `uri` and `pvc`: the PVC is mounted at the URI's path."""
    return cel(f"!has(self.pvc) || !has(self.uri) || !self.uri.matches('{SYSTEM_FOLDER_URI}')", MOUNT_MESSAGE, ".uri")


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the API server enforces, and its message."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, for a model's config or a field."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, docstrings as descriptions.

    Unknown fields are refused: the API server prunes them with the structural schema, so one
    arriving here means the CRD and these models are out of sync, which must not pass silently.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        use_enum_values=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConditionStatus(StrEnum):
    """The three states of a condition, as in `metav1.Condition`."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the object's state (the shape of `metav1.Condition`)."""

    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    """What this condition is about, in CamelCase: Ready, Progressing, Degraded, ..."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """A CamelCase word a program can match on; the constants live in `api.conditions`."""
    message: str = Field(default="", max_length=32768)
    """What happened and, when something is wrong, what the user can do about it."""
    last_transition_time: datetime
    """When the status last changed (not when the condition was last written)."""
    observed_generation: int = Field(default=0, ge=0)
    """The `metadata.generation` this condition was computed from."""


def conditions_field() -> Any:
    """The `status.conditions` field: a list-map keyed by `type`, as Kubernetes API conventions ask."""
    return Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Toleration(ApiModel):
    """A pod toleration (the subset of `core/v1.Toleration` the operator passes on)."""

    key: str | None = None
    """The taint key the toleration matches; empty with operator Exists matches every taint."""
    operator: str = Field(default="Equal", pattern=r"^(Equal|Exists)$")
    """Equal (key and value must match) or Exists (any value)."""
    value: str | None = None
    """The taint value to match when operator is Equal."""
    effect: str | None = Field(default=None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    """The taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a NoExecute taint is tolerated before eviction; unset means forever."""


class Placement(ApiModel):
    """Where the pods of a child workload may run."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels a pod's node must have (for example a GPU product or a node pool)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate, for example `nvidia.com/gpu` on dedicated GPU nodes."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """A PriorityClass for the pods, so training can yield to serving (or the reverse)."""


class Resources(ApiModel):
    """CPU and memory for each pod of a child workload (accelerators are asked for separately)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Resources the scheduler reserves, for example `{cpu: "1", memory: 2Gi}`."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Upper bounds enforced on the pod; memory above its limit gets the container killed."""


class StatusBase(ApiModel):
    """What every kind's status has: the generation it describes and its conditions."""

    observed_generation: int = Field(default=0, ge=0)
    """The `metadata.generation` this status describes; older than the object's means the
    operator has not caught up with the latest spec yet."""
    conditions: list[Condition] = conditions_field()
    """Ready, Progressing and kind-specific conditions, each with a reason a program can match on
    and a message a person can act on (see docs/reference/conditions.md)."""
