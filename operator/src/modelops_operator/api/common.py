"""Types shared by the three custom resources.

Every model here is also a piece of the CRD schema (see `modelops_operator.api.crdgen`): field
docstrings become the schema's descriptions, `Field` bounds become its bounds, and the
`x-kubernetes-validations` attached with `cel()` are enforced by the API server.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "modelops"
#: The field manager of every write the operator sends (`metadata.managedFields`).
FIELD_MANAGER = "modelops-operator"

#: A Kubernetes resource quantity ("500m", "2Gi", 4): the CRD schema marks it int-or-string.
Quantity = int | str

#: Label keys and values follow Kubernetes' rules; the API server checks them where they are used.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS subdomain, the rule for most object names (ServiceAccounts, Secrets): labels joined by dots.
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: The shape of a URI: a scheme and something after `://`. Which schemes work is `SUPPORTED_SCHEMES`'
#: business (a CEL rule with its own message, so that `gs://` is told why, not shown a regex).
URI_PATTERN = r"^[a-z][a-z0-9+.-]*://.+$"
#: The schemes the programs can read and write: the images install fsspec's local, S3 (s3fs) and
#: HTTP file systems, and no other. Google Cloud Storage and Azure would need gcsfs and adlfs.
SUPPORTED_SCHEMES = ("file", "s3", "http", "https")
SCHEME_PATTERN = r"^(file|s3|https?)://"
SCHEME_MESSAGE = (
    "the URI's scheme must be file://, s3://, http:// or https:// "
    "(gs://, gcs://, az:// and abfs:// are not supported: the images have no Google Cloud Storage or Azure client)"
)
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


def check_scheme(uri: str) -> str:
    """The Python side of the scheme rule on `StorageUri`: ValueError naming the supported schemes."""
    if not re.match(SCHEME_PATTERN, uri):
        raise ValueError(SCHEME_MESSAGE)
    return uri


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the API server enforces, and its message."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, for a model's config or a field."""
    return {"x-kubernetes-validations": list(rules)}


#: A URI the programs read or write (sources, outputs, weights, checkpoints, models): the shape
#: by pattern, the scheme by a CEL rule whose message names the supported ones (the API server),
#: and by `check_scheme` with the same message (Python).
StorageUri = Annotated[
    str,
    Field(
        pattern=URI_PATTERN,
        max_length=2048,
        json_schema_extra=validations(cel(f"self.matches('{SCHEME_PATTERN}')", SCHEME_MESSAGE)),
    ),
    AfterValidator(check_scheme),
]


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


#: Label key prefixes the operator and the controllers under it select pods by. A pod label under
#: one of them could move a pod into another object's Service, PodDisruptionBudget or analysis
#: queries, so `podSettings.labels` may not use them (the operator's own labels win anyway).
RESERVED_LABEL_PREFIXES = (
    f"{GROUP}/",
    "app.kubernetes.io/",
    "batch.kubernetes.io/",
    "training.kubeflow.org/",
    "kueue.x-k8s.io/",
)
#: Label keys without a prefix that Kubernetes' own controllers set on the pods they create.
RESERVED_LABEL_KEYS = ("job-name", "controller-uid", "pod-template-hash")
RESERVED_LABELS = (RESERVED_LABEL_PREFIXES, RESERVED_LABEL_KEYS)
#: Annotation key prefixes the operator writes and reads back (the served model's digest).
RESERVED_ANNOTATION_PREFIXES = (f"{GROUP}/",)
#: Environment variables the operator sets for its programs: every one starts with this.
RESERVED_ENV_PREFIX = "MODELOPS_"

#: A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
#: characters that starts and ends with a letter or digit.
KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: An environment variable name as Kubernetes accepts it (a C identifier, or with `-` and `.`).
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

LABELS_MESSAGE = (
    "podSettings.labels may not use the keys the operator and Kubernetes' controllers select pods by: "
    "modelops.dev/*, app.kubernetes.io/*, batch.kubernetes.io/*, training.kubeflow.org/*, kueue.x-k8s.io/*, "
    "job-name, controller-uid, pod-template-hash"
)
ANNOTATIONS_MESSAGE = "podSettings.annotations may not use modelops.dev/* keys: the operator writes and reads them"
ENV_MESSAGE = "podSettings.env may not set MODELOPS_* variables: the operator sets them for its programs"


def _prefix_rule(var: str, prefixes: tuple[str, ...], keys: tuple[str, ...] = ()) -> str:
    tests = [f"!{var}.startsWith('{p}')" for p in prefixes] + [f"{var} != '{k}'" for k in keys]
    return " && ".join(tests)


def reserved_label(key: str) -> bool:
    """Whether a pod label key is one the operator or Kubernetes' controllers select pods by."""
    return key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABEL_KEYS


class LocalObjectReference(ApiModel):
    """A reference to an object by name, in the same namespace (`core/v1.LocalObjectReference`)."""

    name: str = Field(min_length=1, max_length=253)
    """The object's name."""


class KeySelector(ApiModel):
    """One key of a Secret or ConfigMap in the pod's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """The Secret's or ConfigMap's name."""
    key: str = Field(min_length=1, max_length=253)
    """The key whose value becomes the variable's."""
    optional: bool | None = None
    """Start the pod even when the object or key is missing (the variable is then unset)."""


class FieldSelector(ApiModel):
    """A field of the pod itself (`core/v1.ObjectFieldSelector`)."""

    field_path: str = Field(min_length=1, max_length=256)
    """The field, for example `metadata.name`, `spec.nodeName`, `status.podIP`."""
    api_version: str | None = Field(default=None, max_length=64)
    """Version of the schema `fieldPath` is written in; `v1` when unset."""


class ResourceFieldSelector(ApiModel):
    """A resource of the container itself (`core/v1.ResourceFieldSelector`)."""

    resource: str = Field(min_length=1, max_length=64)
    """The resource, for example `limits.memory` or `requests.cpu`."""
    container_name: str | None = Field(default=None, max_length=63)
    """The container; the program's own when unset."""
    divisor: Quantity | None = None
    """The unit the value is given in (`1Mi`, `1m`); 1 when unset."""


VALUE_FROM_MESSAGE = "valueFrom names exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"


class EnvVarSource(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), has(self.resourceFieldRef)]"
            ".filter(x, x).size() == 1",
            VALUE_FROM_MESSAGE,
        )
    ),
):
    """Where a variable's value comes from: exactly one of the four."""

    secret_key_ref: KeySelector | None = None
    """A key of a Secret in the pod's namespace."""
    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap in the pod's namespace."""
    field_ref: FieldSelector | None = None
    """A field of the pod (its name, node, IP, labels)."""
    resource_field_ref: ResourceFieldSelector | None = None
    """A resource request or limit of the container."""

    @model_validator(mode="after")
    def _one(self) -> EnvVarSource:
        sources = (self.secret_key_ref, self.config_map_key_ref, self.field_ref, self.resource_field_ref)
        if sum(s is not None for s in sources) != 1:
            raise ValueError(VALUE_FROM_MESSAGE)
        return self


class EnvVar(
    ApiModel,
    json_schema_extra=validations(
        cel("!(has(self.value) && has(self.valueFrom))", "an env entry has either value or valueFrom, not both")
    ),
):
    """One environment variable (the shape of `core/v1.EnvVar`)."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    """The variable's name. `MODELOPS_*` names are the operator's and refused."""
    value: str | None = Field(default=None, max_length=32768)
    """A literal value; `$(OTHER)` expands a variable defined earlier."""
    value_from: EnvVarSource | None = None
    """A value read when the pod starts, from a Secret, a ConfigMap, the pod or its resources."""


class KeyedObjectReference(ApiModel):
    """A ConfigMap or Secret whose keys become variables."""

    name: str = Field(min_length=1, max_length=253)
    """Its name."""
    optional: bool | None = None
    """Start the pod even when it is missing."""


class EnvFromSource(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "has(self.configMapRef) != has(self.secretRef)", "an envFrom entry names one configMapRef or one secretRef"
        ),
        cel(f"!has(self.prefix) || !self.prefix.startsWith('{RESERVED_ENV_PREFIX}')", ENV_MESSAGE, ".prefix"),
    ),
):
    """Every key of a ConfigMap or Secret as a variable (the shape of `core/v1.EnvFromSource`)."""

    config_map_ref: KeyedObjectReference | None = None
    """A ConfigMap in the pod's namespace."""
    secret_ref: KeyedObjectReference | None = None
    """A Secret in the pod's namespace."""
    prefix: str | None = Field(default=None, max_length=128, pattern=ENV_NAME_PATTERN)
    """Put in front of every key; `MODELOPS_` is refused. A key that names a variable the operator
    sets is ignored (the operator's wins)."""

    @model_validator(mode="after")
    def _one(self) -> EnvFromSource:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("an envFrom entry names one configMapRef or one secretRef")
        return self


PodLabels = dict[str, Annotated[str, Field(max_length=63)]]
PodAnnotations = dict[str, Annotated[str, Field(max_length=65536)]]


class PodSettings(
    ApiModel,
    json_schema_extra=validations(
        cel(
            f"!has(self.labels) || self.labels.all(k, {_prefix_rule('k', *RESERVED_LABELS)})",
            LABELS_MESSAGE,
            ".labels",
        ),
        cel(
            f"!has(self.annotations) || self.annotations.all(k, {_prefix_rule('k', RESERVED_ANNOTATION_PREFIXES)})",
            ANNOTATIONS_MESSAGE,
            ".annotations",
        ),
        cel(f"!has(self.env) || self.env.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))", ENV_MESSAGE, ".env"),
    ),
):
    """Identity and environment of the pods the operator creates for an object: the preparation
    Job's pod, every trial pod, the inference server pods. Each field adds to, or overrides, the
    operator-wide defaults the cluster admin sets in the chart (`workloadDefaults`): a name set
    here wins, maps merge key by key with this object's values winning, `env` merges by name, and
    `imagePullSecrets` and `envFrom` add to the defaults' (a later `envFrom` source wins a shared
    key). The operator's own labels, annotations and variables always win, and the keys they use
    are refused here."""

    service_account_name: str | None = Field(default=None, max_length=253, pattern=SUBDOMAIN_PATTERN)
    """The ServiceAccount the pods run as, in the object's namespace, for example one bound to a
    cloud identity (IRSA, GKE Workload Identity). Unset: the default's, else the namespace's
    `default`. It must be one the admin allows (`settings.workloadServiceAccounts`), and exist:
    a missing one leaves the object `PodPending` with Kubernetes' refusal in the message. The
    Kubernetes API token is still not mounted."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets of type `kubernetes.io/dockerconfigjson` for pulling the operator's images from a
    private registry, in the object's namespace."""
    labels: PodLabels = Field(default_factory=dict, max_length=64)
    """Extra labels on the pods (cost centre, team, a policy's selector)."""
    annotations: PodAnnotations = Field(default_factory=dict, max_length=64)
    """Extra annotations on the pods (a mesh sidecar's switch, a log collector's hints)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables of the program's container (a proxy, a cloud region, NCCL
    settings). A Secret named in `valueFrom` must be one the admin allows
    (`settings.workloadSecrets`)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    """ConfigMaps and Secrets whose every key becomes a variable of the program's container; a
    variable in `env` or set by the operator wins over these. A Secret must be one the admin allows
    (`settings.workloadSecrets`)."""

    @model_validator(mode="after")
    def _check(self) -> PodSettings:
        check_pod_settings(self)
        return self

    def secrets(self) -> set[str]:
        """The Secrets whose values the pods would read (not the pull secrets: the kubelet uses
        those for the operator's own images only)."""
        named = {e.value_from.secret_key_ref.name for e in self.env if e.value_from and e.value_from.secret_key_ref}
        return named | {s.secret_ref.name for s in self.env_from if s.secret_ref}


def check_pod_settings(pod: PodSettings) -> None:
    """The Python side of PodSettings' CEL rules, and the key syntax the API server would refuse
    only when the operator creates the child: ValueError with the message to act on."""
    for key, value in pod.labels.items():
        if reserved_label(key):
            raise ValueError(f"{LABELS_MESSAGE} (got {key})")
        if not re.match(KEY_PATTERN, key):
            raise ValueError(f"podSettings.labels: {key!r} is not a label key (an optional DNS prefix and /, a name)")
        if not re.match(LABEL_VALUE_PATTERN, value):
            raise ValueError(
                f"podSettings.labels[{key}]: {value!r} is not a label value (at most 63 letters, digits, -, _, .)"
            )
    for key in pod.annotations:
        if key.startswith(RESERVED_ANNOTATION_PREFIXES):
            raise ValueError(f"{ANNOTATIONS_MESSAGE} (got {key})")
        if not re.match(KEY_PATTERN, key):
            raise ValueError(f"podSettings.annotations: {key!r} is not an annotation key")
    for var in pod.env:
        if var.name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"{ENV_MESSAGE} (got {var.name})")
        if var.value is not None and var.value_from is not None:
            raise ValueError(f"podSettings.env[{var.name}]: either value or valueFrom, not both")
    for source in pod.env_from:
        if (source.prefix or "").startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"{ENV_MESSAGE} (got envFrom prefix {source.prefix})")
