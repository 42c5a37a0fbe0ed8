"""The operator's settings: one object, every field documented, read from the environment.

Each field `foo_bar` is read from `MODELOPS_FOO_BAR` (lists are comma-separated). The Helm chart
sets them from its values; `modelops-operator --help` lists them with their defaults.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelops_operator.api.common import PodSettings, StorageUri

ENV_PREFIX = "MODELOPS_"


class OperatorSettings(BaseModel):
    """Everything an operator process can be told, with defaults that work on the local cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty watches the whole cluster (the chart's cluster mode)."""
    resync_seconds: float = Field(default=60.0, gt=0)
    """How long an object goes without a reconcile at most, even when nothing changed: a safety net. Changes are
    acted on through watch events (a Dataset's change wakes the TrainingRuns waiting for it, a
    TrainingRun's new model the ModelDeployments following it); the resync catches what no event
    announces, such as a child edited or deleted by hand."""
    workers: int = Field(default=16, ge=1, le=256)
    """Reconciles run at the same time (threads). Each spends most of its time waiting for the API
    server, so more threads than cores keep up with bursts (1,000 objects created at once)."""
    api_connections: int = Field(default=32, ge=0, le=1024)
    """Requests kopf's client (status and annotation patches, Events) sends to the API server at
    once, each on its own connection; its watch streams get theirs on top. Others wait for a free
    connection. 0 leaves kopf's pool unbounded: 350 TLS connections at once when 1,000 objects
    were created together."""
    progress_seconds: float = Field(default=3.0, gt=0)
    """How often an object with work under way (a Job or trial running, a rollout step) is
    reconciled, so its status follows its children closely. Objects waiting for another of ours
    are not polled: that object's change wakes them."""
    trainer_image: str = "ghcr.io/modelops/trainer:0.1.0"
    """Image of the data-preparation and training programs (`trainer_image/`)."""
    training_backend: Literal["PyTorchJob", "TrainJob"] = "PyTorchJob"
    """What runs a trial when a TrainingRun's `spec.workers.backend` is unset: `PyTorchJob` (the
    Kubeflow training operator v1) or `TrainJob` (Kubeflow Trainer v2, `trainer.kubeflow.org`)."""
    training_runtime: str = "modelops-torch-distributed"
    """The ClusterTrainingRuntime of TrainJob trials whose spec names no `runtimeRef` (the chart's
    `trainingRuntime` installs this one for the operator's trainer image)."""
    server_image: str = "ghcr.io/modelops/server:0.1.0"
    """Image of the inference server (`server_image/`)."""
    artifact_uri: StorageUri = "file:///var/lib/modelops/artifacts"
    """Default artifact store: datasets, checkpoints and models go under this URI (`file://` or
    `s3://`) unless a spec names another."""
    artifact_pvc: str | None = None
    """A PersistentVolumeClaim, in each object's namespace, mounted by every preparation and training
    pod at the artifact store's path when that is a `file://` URI (the local cluster's quickstart
    uses one); unset for object stores (`s3://`), which need no mount."""
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus that canary analysis queries (its HTTP API); the local cluster's is
    http://127.0.0.1:19090."""
    dataset_credentials_secrets: list[str] = Field(default_factory=list)
    """Names of the Secrets a Dataset source may name as `credentialsSecret` (in its own namespace).
    The preparation pod gets that Secret's keys as its environment and reads the sources the
    Dataset's author chose with them, so a Secret the author may not read would otherwise lend
    them its access (to another team's bucket, say). Empty: `credentialsSecret` is refused
    (reason CredentialsNotAllowed); list the Secrets meant for datasets, for example `s3-datasets`."""
    workload_defaults: PodSettings = Field(default_factory=PodSettings)
    """ServiceAccount, image pull Secrets, labels, annotations and environment of every pod the
    operator creates (preparation, trial and server pods), as JSON in the shape of a spec's
    `podSettings` (the chart writes its `workloadDefaults` here). A spec's `podSettings` adds to it
    and overrides it field by field. The ServiceAccount and Secrets named here are allowed whatever
    `workload_service_accounts` and `workload_secrets` say."""
    workload_service_accounts: list[str] = Field(default_factory=list)
    """ServiceAccounts (in each object's namespace) a spec's `podSettings.serviceAccountName` may
    name; `*` allows any. The pods run the admin's programs with that account's cloud identity
    (IRSA, GKE Workload Identity) on sources and outputs the spec's author chooses, so an account
    the author could not use otherwise would lend them its access. Empty: only the
    `workload_defaults` account (reason PodSettingsNotAllowed for another)."""
    workload_secrets: list[str] = Field(default_factory=list)
    """Secrets a spec's `podSettings.env[].valueFrom.secretKeyRef` and `envFrom[].secretRef` may
    name (in the object's namespace); `*` allows any. Same reason as `workload_service_accounts`:
    the programs would read the author's sources with them. Empty: only those named in
    `workload_defaults` (reason PodSettingsNotAllowed for another)."""
    custom_analysis_queries: bool = False
    """Let ModelDeployments run `custom` analysis metrics: any PromQL, against the Prometheus every
    tenant shares, whose result lands in the object's status. Off: a custom metric is refused
    (InvalidSpec) and only the built-in `errorRate` and `latencyP99`, which read the object's own
    series, run. Turn it on where every ModelDeployment author may read all of Prometheus."""
    log_format: Literal["json", "plain", "full"] = "json"
    """`json`: one JSON object per line, with the object's namespace and name (for log pipelines);
    `plain` or `full`: kopf's human-readable formats."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe log level printed."""
    health_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the liveness endpoint (`/healthz`); 0 turns it off."""
    metrics_port: int = Field(default=8081, ge=0, le=65535)
    """Port of the operator's Prometheus metrics (`/metrics`); 0 turns them off."""
    listen_address: str = ""
    """Address the liveness and metrics endpoints listen on; empty: every address of the pod's IP
    family (`::` when `podIP` is IPv6, as in an IPv6-only cluster, else `0.0.0.0`)."""
    pod_ip: str = ""
    """The pod's IP (the chart sets it from `status.podIP`); it tells the empty `listenAddress` which
    family to listen on."""

    @property
    def listen_host(self) -> str:
        """The address the endpoints bind: `listen_address`, or the wildcard of the pod's IP family."""
        if self.listen_address:
            return self.listen_address
        return "::" if ":" in self.pod_ip else "0.0.0.0"

    leader_election_namespace: str | None = None
    """Namespace of the Lease that elects one leader among operator replicas; unset runs without
    election (one replica only). The chart sets it to the release namespace."""
    leader_election_id: str = "modelops-operator"
    """Name of that Lease."""
    watch_server_timeout_seconds: int = Field(default=300, ge=10)
    """Ask the API server to end each watch after this long; kopf then re-lists and re-watches, so a
    watch that silently stalled is replaced."""
    watch_client_timeout_seconds: int = Field(default=330, ge=10)
    """End each watch connection on the client side after this long at most, whatever it carried
    (just above the server's timeout): a connection that went silent without closing, which no error
    would reveal, is replaced then."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop kopf runs on: `uvloop` (libuv; its TLS connections free their 256 KiB read
    buffer when they close) or `asyncio` (the standard library's, whose closed TLS connections keep
    that buffer until the garbage collector's next full pass)."""

    @field_validator("workload_defaults", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        """`MODELOPS_WORKLOAD_DEFAULTS` is JSON (an empty string: no defaults); an empty
        `serviceAccountName`, as the chart writes an unset one, means none."""
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict) and value.get("serviceAccountName") == "":
            value = {k: v for k, v in value.items() if k != "serviceAccountName"}
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from `MODELOPS_*` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if field.annotation == list[str]:
                values[name] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                values[name] = raw
        return cls.model_validate(values)

    @classmethod
    def describe(cls) -> str:
        """One paragraph per setting: variable, default, meaning (for `--help`)."""
        lines = []
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):
                shown = ",".join(default)
            elif isinstance(default, BaseModel):
                shown = json.dumps(default.model_dump(by_alias=True, exclude_defaults=True))
            else:
                shown = default
            text = textwrap.fill(
                " ".join((field.description or "").split()), width=92, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
            lines.append(f"  {ENV_PREFIX + name.upper()} (default: {shown!s})\n{text}")
        return "\n".join(lines)
