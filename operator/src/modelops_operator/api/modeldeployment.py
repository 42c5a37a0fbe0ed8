"""The `ModelDeployment` kind: serve a model, and roll every new model out as a canary that is
promoted or rolled back on live metrics."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelops_operator.api.common import (
    DIGEST_PATTERN,
    DURATION_PATTERN,
    NAME_PATTERN,
    ApiModel,
    Placement,
    PodSettings,
    Quantity,
    Resources,
    StatusBase,
    StorageUri,
    cel,
    validations,
)

ModelDeploymentPhase = Literal["Pending", "Progressing", "Paused", "Healthy", "Degraded", "Failed"]


class TrainingRunRef(ApiModel):
    """A TrainingRun whose registered model is served."""

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    """The TrainingRun's name, in the ModelDeployment's namespace."""
    version: int | None = Field(default=None, ge=1)
    """A registered model version to serve; unset follows the latest version, rolling each new one
    out as a canary."""


class ModelSource(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "has(self.trainingRunRef) != has(self.uri)",
            "set exactly one of model.trainingRunRef and model.uri",
        ),
        cel("!has(self.uri) || has(self.digest)", "model.uri needs model.digest (sha256:<64 hex>)", ".digest"),
        cel("!has(self.trainingRunRef) || !has(self.digest)", "model.digest goes with model.uri only", ".digest"),
        cel(
            "!has(self.mlflowAlias) || has(self.trainingRunRef)",
            "model.mlflowAlias needs model.trainingRunRef (a TrainingRun registering in MLflow)",
            ".mlflowAlias",
        ),
        cel(
            "!has(self.mlflowAlias) || (self.mlflowAlias != 'latest' && !self.mlflowAlias.matches('^[vV][0-9]+$'))",
            "MLflow reserves the aliases latest and v<number>",
            ".mlflowAlias",
        ),
    ),
):
    """The model to serve: a TrainingRun's registered model, or an ONNX file with its digest."""

    training_run_ref: TrainingRunRef | None = None
    """Serve a model registered by this TrainingRun."""
    uri: StorageUri | None = None
    """Serve this ONNX file (its model card is looked up beside it as `<uri>.card.json`)."""
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 the ONNX file must have; the server refuses to load anything else."""
    mlflow_alias: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,63}$")
    """An alias of the registered model in MLflow (`production`, say) that the operator points at
    the MLflow version of each model it promotes to stable (the TrainingRun's
    `spec.registry.mlflowTrackingUri`, model name and Secrets are used). Moved on promotion only;
    a failure is reported in the `MLflowAlias` condition and never holds up serving."""

    @model_validator(mode="after")
    def _alias_not_reserved(self) -> ModelSource:
        # The same rules as the CEL ones above.
        alias = self.mlflow_alias
        if alias is not None and (alias == "latest" or re.fullmatch(r"[vV][0-9]+", alias)):
            raise ValueError("MLflow reserves the aliases latest and v<number>")
        if alias is not None and self.training_run_ref is None:
            raise ValueError("model.mlflowAlias needs model.trainingRunRef (a TrainingRun registering in MLflow)")
        return self


class CustomMetric(ApiModel):
    """A per-pod metric for the HorizontalPodAutoscaler, served by a Prometheus adapter."""

    name: str = Field(default="modelops_inflight_requests", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", max_length=200)
    """The metric's name as the adapter exposes it (for example queue depth or in-flight requests)."""
    target_average_value: Quantity = 8
    """The per-pod average the autoscaler aims for."""


class Autoscaling(
    ApiModel,
    json_schema_extra=validations(
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", ".minReplicas"),
    ),
):
    """Replica bounds and targets of the stable Deployment (a HorizontalPodAutoscaler)."""

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest stable replicas; also the PodDisruptionBudget's basis."""
    max_replicas: int = Field(default=3, ge=1, le=1000)
    """Most stable replicas."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Average CPU utilisation, in percent of the request, the autoscaler aims for."""
    custom_metric: CustomMetric | None = None
    """An additional per-pod metric target; unset scales on CPU only."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """How long the autoscaler waits, after the load fell, before removing replicas (it takes the
    highest recommendation of this window): Kubernetes' default of 300 s keeps a short lull from
    dropping pods that the next burst needs. Scaling up is never delayed."""


class ServerSpec(ApiModel):
    """The inference server's settings (see `python -m modelops_server --help`)."""

    workers: int = Field(default=1, ge=1, le=64)
    """Worker processes per pod, each running the model."""
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    """Largest batch a worker runs; requests are grouped up to this size (at most the server's 1024)."""
    max_batch_delay_ms: float = Field(default=5.0, ge=0, le=10_000)
    """Longest a request waits for its batch to fill; a request with no other on its way to the same
    worker runs at once (the server's `--batch-wait adaptive`), so this delay is only paid under load."""
    queue_capacity: int = Field(default=256, ge=1, le=1_000_000)
    """Requests queued per pod before it answers 503 with Retry-After."""
    gpus: int = Field(default=0, ge=0, le=16)
    """`nvidia.com/gpu` per pod; with 0 the server uses ONNX Runtime's CPU provider."""
    resources: Resources = Field(default_factory=Resources)
    """CPU and memory per pod; the CPU request is the autoscaler's 100%."""
    placement: Placement = Field(default_factory=Placement)
    """Where the server pods may run."""


class RedisSecretRef(ApiModel):
    """The Secret key holding the Redis URL of the job queue."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """The Secret's name, in the ModelDeployment's namespace. It must be one the operator's admin
    allows (`settings.workloadSecrets`), as for `podSettings`."""
    key: str = Field(default="url", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key whose value is the URL: `redis://[:password@]host:port/db`, or `rediss://` for TLS."""


class Jobs(ApiModel):
    """The asynchronous job API (`POST /v1/jobs`, `GET /v1/jobs/{id}`): callers submit a batch of
    images, or a folder or Dataset version to classify offline, and collect the results later.

    Jobs wait in a Redis stream of this ModelDeployment (`modelops:jobs:<namespace>/<name>`) and are
    consumed by processes inside the server pods of both tracks, through one consumer group: a pod
    that dies mid-job leaves its job pending, and another pod takes it over after
    `claimIdleSeconds` without recomputing the images already done."""

    redis_secret_ref: RedisSecretRef
    """Where the Redis URL is (the server pods read it from their environment)."""
    consumers_per_pod: int = Field(default=1, ge=1, le=16)
    """Job consumer processes per server pod, each with its own copy of the model."""
    claim_idle_seconds: int = Field(default=30, ge=1, le=3600)
    """How long a job held by a consumer that stopped answering waits before another takes it over."""
    ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    """How long a job and its results are kept in Redis."""
    queue_capacity: int = Field(default=10_000, ge=1, le=1_000_000)
    """Jobs waiting at most; a submission beyond it is answered 503."""
    callback_hosts: list[
        Annotated[str, Field(max_length=261, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$")]
    ] = Field(default_factory=list, max_length=32)
    """Hosts (`host` or `host:port`) a job's `callbackUrl` may name; empty refuses callbacks, so
    the server cannot be made to POST to internal services."""
    batch_roots: list[StorageUri] = Field(default_factory=list, max_length=16)
    """URI prefixes (`s3://bucket/batch/`, `file:///data/batch/`) under which batch jobs may read
    their source and write their predictions; empty refuses batch jobs. Credentials for them come
    from `podSettings` (`envFrom` a Secret the admin allows)."""

    batch_max_images: int = Field(default=100_000, ge=1, le=1_000_000)
    """Most images one batch job may hold (a folder's images, or a Dataset version's chosen splits)."""

    def secrets(self) -> set[str]:
        """The Secrets the server pods read for the job API."""
        return {self.redis_secret_ref.name}


class Pause(ApiModel):
    """A pause in the rollout."""

    duration: str | None = Field(default=None, pattern=DURATION_PATTERN, max_length=32)
    """How long to pause (`30s`, `5m`); unset pauses until promoted by hand."""


class AnalysisMetric(
    ApiModel,
    json_schema_extra=validations(
        cel("self.template != 'custom' || has(self.query)", "a custom metric needs a query", ".query"),
        cel("has(self.max) || has(self.min)", "an analysis metric needs max or min"),
    ),
):
    """One check of the canary's health, a Prometheus query with a success condition."""

    name: str = Field(pattern=r"^[a-z][a-zA-Z0-9]*$", max_length=63)
    """The metric's name in status and Events."""
    template: Literal["errorRate", "latencyP99", "custom"] = "custom"
    """`errorRate` (share of 5xx answers) and `latencyP99` (seconds) are built in; `custom` runs `query`."""
    query: str | None = Field(default=None, max_length=4096)
    """A PromQL query for a `custom` metric. `{{selector}}` is replaced by the canary's label
    matchers, `{{stableSelector}}` by the stable's, `{{interval}}` by the analysis interval.
    Refused unless the operator allows custom queries (chart `settings.customAnalysisQueries`)."""
    max: float | None = None
    """The check fails when the value is above this."""
    min: float | None = None
    """The check fails when the value is below this."""
    compare_to_stable: bool = False
    """Divide the canary's value by the stable's before comparing (a ratio: `max: 1.5` allows 50%
    worse than stable)."""


def _default_metrics() -> list[AnalysisMetric]:
    return [
        AnalysisMetric(name="errorRate", template="errorRate", max=0.01),
        AnalysisMetric(name="latencyP99", template="latencyP99", max=0.5),
    ]


class Analysis(ApiModel):
    """Checks run against live metrics; a failure aborts the rollout, no data pauses it."""

    metrics: list[AnalysisMetric] = Field(default_factory=_default_metrics, min_length=1, max_length=16)
    """The checks; default: error rate at most 1% and p99 latency at most 0.5 s."""
    interval: str = Field(default="30s", pattern=DURATION_PATTERN, max_length=32)
    """Time between measurements (and the query's range)."""
    count: int = Field(default=3, ge=1, le=1000)
    """Measurements taken; all must pass (within failureLimit) to go on."""
    failure_limit: int = Field(default=0, ge=0, le=1000)
    """Failed measurements tolerated before the rollout aborts."""
    inconclusive_limit: int = Field(default=3, ge=0, le=1000)
    """Measurements without data tolerated before the rollout pauses for a human."""


class RolloutStep(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
            "a rollout step sets exactly one of setWeight, pause, analysis",
        ),
    ),
):
    """One step of a canary rollout (as in Argo Rollouts)."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    """Send this percentage of traffic to the canary."""
    pause: Pause | None = None
    """Wait for a duration, or until promoted by hand."""
    analysis: Analysis | None = None
    """Check the canary's metrics before going on."""


def _default_steps() -> list[RolloutStep]:
    return [
        RolloutStep(set_weight=10),
        RolloutStep(analysis=Analysis()),
        RolloutStep(set_weight=50),
        RolloutStep(analysis=Analysis()),
    ]


class HeaderRoute(ApiModel):
    """Route requests with a header to the canary regardless of weight (A/B testing)."""

    name: str = Field(min_length=1, max_length=256)
    """The header's name."""
    value: str = Field(min_length=1, max_length=4096)
    """The value that sends a request to the canary."""


class TrafficRouting(ApiModel):
    """How traffic is split between stable and canary."""

    http_route: str | None = Field(default=None, max_length=253, pattern=NAME_PATTERN)
    """A Gateway API HTTPRoute whose backend weights the operator sets; unset splits by replica
    ratio behind the shared Service."""
    header_route: HeaderRoute | None = None
    """With an HTTPRoute: send requests carrying this header to the canary, while canary pods are
    ready during a rollout (else they go where the others go)."""


class Rollout(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
            "canary weights (setWeight) must rise from step to step",
            ".steps",
        ),
        cel(
            "!has(self.trafficRouting) || !has(self.trafficRouting.headerRoute) || has(self.trafficRouting.httpRoute)",
            "header routing needs trafficRouting.httpRoute",
            ".trafficRouting",
        ),
    ),
):
    """The canary strategy for every new model."""

    steps: list[RolloutStep] = Field(default_factory=_default_steps, max_length=32)
    """The steps; default: 10%, analysis, 50%, analysis, then promote. Empty replaces the model at
    once (no canary)."""
    traffic_routing: TrafficRouting = Field(default_factory=TrafficRouting)
    """How traffic is split."""
    canary_replicas: int | None = Field(default=None, ge=1, le=1000)
    """Canary pods; default enough to carry its weight of the stable's replicas."""


class Alerts(ApiModel):
    """Thresholds of the alert rules generated for this deployment (a PrometheusRule)."""

    enabled: bool = True
    """Create the PrometheusRule (when the prometheus-operator CRDs exist)."""
    error_rate: float = Field(default=0.05, gt=0, le=1)
    """Alert when the share of failed requests is above this."""
    latency_p99_seconds: float = Field(default=1.0, gt=0, le=3600)
    """Alert when p99 latency is above this many seconds."""
    for_: str = Field(default="5m", alias="for", pattern=DURATION_PATTERN, max_length=32)
    """How long a condition must hold before the alert fires."""
    severity: Literal["info", "warning", "critical"] = "warning"
    """The `severity` label of the alerts."""
    runbook_url: str | None = Field(default=None, pattern=r"^https?://[^\s{}$]+$", max_length=2048)
    """Base URL of the runbooks; each alert's annotation appends its name. No `{`, `}` or `$`:
    Prometheus runs annotations as templates, and this one is the author's text."""


VARIANT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
#: CEL has no sum(): the weights of at most four variants, added one by one.
_WEIGHT_SUM = " + ".join(f"(self.variants.size() > {i} ? self.variants[{i}].weight : 0)" for i in range(4))


class ExperimentVariant(
    ApiModel,
    json_schema_extra=validations(
        cel("has(self.version) != has(self.uri)", "a variant sets exactly one of version and uri"),
        cel("!has(self.uri) || has(self.digest)", "a variant's uri needs its digest (sha256:<64 hex>)", ".digest"),
        cel("!has(self.digest) || has(self.uri)", "a variant's digest goes with its uri only", ".digest"),
    ),
):
    """One model of an A/B experiment."""

    name: str = Field(min_length=1, max_length=32, pattern=VARIANT_NAME_PATTERN)
    """The variant's name: in status, in the `x-modelops-variant` answer header, in request ids
    and in the `variant` label of the experiment's metrics."""
    version: int | None = Field(default=None, ge=1)
    """A model version registered by `spec.model.trainingRunRef`'s TrainingRun."""
    uri: StorageUri | None = None
    """Or an ONNX file (its model card beside it as `<uri>.card.json`)."""
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """The SHA-256 `uri` must have."""
    weight: int = Field(ge=1, le=99)
    """Percentage of the keys assigned to this variant; the weights sum to 100."""

    @model_validator(mode="after")
    def _one_model(self) -> ExperimentVariant:
        if (self.version is None) == (self.uri is None):
            raise ValueError(f"variant {self.name}: set exactly one of version and uri")
        if (self.uri is None) != (self.digest is None):
            raise ValueError(f"variant {self.name}: uri and digest go together")
        return self


class ExperimentMetrics(ApiModel):
    """What a winner must also meet, over the whole experiment."""

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Highest share of 5xx answers a variant may have to win."""
    max_latency_p99_seconds: float = Field(default=0.5, gt=0, le=3600)
    """Highest p99 latency (seconds) a variant may have to win."""


class Experiment(
    ApiModel,
    json_schema_extra=validations(
        cel(f"{_WEIGHT_SUM} == 100", "the variants' weights must sum to 100", ".variants"),
        cel(
            "self.variants.all(a, self.variants.exists_one(b, b.name == a.name))",
            "variant names must be unique",
            ".variants",
        ),
        cel(
            "self.variants.all(a, !has(a.version) || "
            "self.variants.exists_one(b, has(b.version) && b.version == a.version))",
            "variant versions must be unique (two variants of one model compare nothing)",
            ".variants",
        ),
        cel(
            "self.variants.all(a, !has(a.digest) || "
            "self.variants.exists_one(b, has(b.digest) && b.digest == a.digest))",
            "variant digests must be unique (two variants of one model compare nothing)",
            ".variants",
        ),
        cel("has(self.duration) || has(self.maxRequests)", "an experiment needs an end: duration and/or maxRequests"),
    ),
):
    """An A/B experiment: several models served side by side by the stable track, each key (a
    request header's value, hashed) sticking to one variant, and the winner found by a test of
    the success rates that clients report through `POST /v1/feedback`."""

    name: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    """The experiment's name (the `experiment` label of its metrics); default: the
    ModelDeployment's name. A new name (or new variants) starts a new experiment."""
    key_header: str = Field(default="x-user-id", max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    """The request header (gRPC: metadata key) whose value assigns a request to a variant, in lower
    case; requests without it are assigned at random."""
    variants: list[ExperimentVariant] = Field(min_length=2, max_length=4)
    """2 to 4 variants; the first is the control and must be the stable model."""
    duration: str | None = Field(default=None, pattern=DURATION_PATTERN, max_length=32)
    """The experiment ends this long after it started (`24h`, `90m`)..."""
    max_requests: int | None = Field(default=None, ge=1)
    """...or once the variants answered this many requests in all, whichever comes first."""
    min_samples_per_variant: int = Field(default=200, ge=30, le=100_000_000)
    """Feedback outcomes each variant needs before the test is run (at least 30: the test is a
    large-sample approximation). The experiment runs past its end until every variant has them."""
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    """1 - the significance level of the whole comparison (Bonferroni-corrected over the
    challengers)."""
    metrics: ExperimentMetrics = Field(default_factory=ExperimentMetrics)
    """Error rate and latency a winning challenger must also meet."""
    promotion: Literal["Automatic", "Manual"] = "Manual"
    """`Automatic` makes the winner the stable model as soon as the experiment concludes; `Manual`
    waits for a person's annotation `modelops.dev/promote-variant: <name>`."""
    interval: str = Field(default="30s", pattern=DURATION_PATTERN, max_length=32)
    """Time between measurements of the variants in Prometheus."""

    @model_validator(mode="after")
    def _variants(self) -> Experiment:
        # The same rules as the CEL ones above, for objects read before CRDs checked them.
        names_ = [v.name for v in self.variants]
        if len(set(names_)) != len(names_):
            raise ValueError(f"variant names must be unique: {', '.join(names_)}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"the variants' weights must sum to 100 (they sum to {total})")
        versions = [v.version for v in self.variants if v.version is not None]
        digests = [v.digest for v in self.variants if v.digest is not None]
        if len(set(versions)) != len(versions) or len(set(digests)) != len(digests):
            raise ValueError("variant versions (and digests) must be unique: two variants of one model compare nothing")
        if self.duration is None and self.max_requests is None:
            raise ValueError("an experiment needs an end: duration and/or maxRequests")
        return self


class ModelDeploymentSpec(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "!has(self.experiment) || has(self.model.trainingRunRef) || "
            "self.experiment.variants.all(v, !has(v.version))",
            "experiment variants with a version need model.trainingRunRef (the TrainingRun that registered them)",
            ".experiment",
        ),
    ),
):
    """What a ModelDeployment declares."""

    model: ModelSource
    """The model to serve."""
    server: ServerSpec = Field(default_factory=ServerSpec)
    """Inference server settings."""
    pod_settings: PodSettings = Field(default_factory=PodSettings)
    """ServiceAccount, image pull Secrets, labels, annotations and environment of the server pods,
    over the operator-wide defaults. A change rolls both tracks' pods."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """Replica bounds and scaling targets."""
    rollout: Rollout = Field(default_factory=Rollout)
    """Canary steps and traffic routing for new models."""
    alerts: Alerts = Field(default_factory=Alerts)
    """Alert thresholds."""
    jobs: Jobs | None = None
    """The asynchronous job API and batch inference over Redis; unset turns `/v1/jobs` off."""
    experiment: Experiment | None = None
    """An A/B experiment between registered models; while it runs, a change of `model` waits
    (see the serving guide)."""

    @model_validator(mode="after")
    def _experiment_versions(self) -> ModelDeploymentSpec:
        exp = self.experiment
        if exp and self.model.training_run_ref is None and any(v.version is not None for v in exp.variants):
            raise ValueError(
                "experiment variants with a version need model.trainingRunRef (the TrainingRun that registered them)"
            )
        return self


class ServedModel(ApiModel):
    """A model version as served."""

    version: str | None = Field(default=None, max_length=64)
    """The registered version (`<trainingrun>:v<N>`), or the digest's prefix for a plain URI."""
    uri: str = Field(max_length=2048)
    """The ONNX file."""
    digest: str = Field(pattern=DIGEST_PATTERN)
    """Its SHA-256."""


class MlflowAliasStatus(ApiModel):
    """Where the operator last pointed `spec.model.mlflowAlias`."""

    alias: str = Field(max_length=63)
    """The alias."""
    model_name: str = Field(max_length=253)
    """The registered model in MLflow."""
    version: str = Field(max_length=63)
    """The MLflow version it points at."""
    served: str | None = Field(default=None, max_length=64)
    """The stable model (`<trainingrun>:v<N>`) that MLflow version is."""


class AnalysisResult(ApiModel):
    """One measurement of one analysis metric."""

    metric: str = Field(max_length=63)
    """The metric's name."""
    value: float | None = None
    """The measured value; unset when the query returned no data."""
    result: Literal["Successful", "Failed", "Inconclusive"]
    """Whether it met its condition; Inconclusive when there was no data."""
    step: int = Field(ge=0)
    """The rollout step it belongs to."""
    measured_at: str = Field(max_length=64)
    """When it was measured (RFC 3339)."""


class AutoscalerStatus(ApiModel):
    """What the stable track's HorizontalPodAutoscaler reports."""

    current_replicas: int = Field(default=0, ge=0)
    """Stable pods the autoscaler last saw."""
    desired_replicas: int = Field(default=0, ge=0)
    """Stable pods the autoscaler asks for."""
    metrics: list[str] = Field(default_factory=list, max_length=8)
    """Each metric as the autoscaler last read it, against its target (`cpu: 180% of request
    (target 70%)`, `modelops_inflight_requests: 4 per pod (target 8)`)."""
    last_scale_time: str | None = Field(default=None, max_length=64)
    """When the autoscaler last changed the replica count (RFC 3339)."""
    no_reading_since: str | None = Field(default=None, max_length=64)
    """While the autoscaler has no reading of a metric: since when (RFC 3339). New pods lack one until
    the metrics pipeline has sampled them, so the `Autoscaling` condition is Pending for 60 s after
    this time, then MetricUnavailable."""


ExperimentPhase = Literal["Pending", "Running", "Concluded", "Promoted"]


class VariantStatus(ApiModel):
    """One variant, as measured over the whole experiment."""

    name: str = Field(max_length=32)
    """The variant's name."""
    version: str | None = Field(default=None, max_length=64)
    """Its model version."""
    uri: str | None = Field(default=None, max_length=2048)
    """Its ONNX file."""
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """Its model's SHA-256."""
    weight: int = Field(default=0, ge=0, le=100)
    """Its share of keys, in percent."""
    requests: int | None = Field(default=None, ge=0)
    """Inference requests it answered."""
    error_rate: float | None = None
    """Share of its answers that were 5xx."""
    latency_p99: float | None = None
    """Its p99 latency, seconds."""
    successes: int | None = Field(default=None, ge=0)
    """Feedback outcomes `success`."""
    failures: int | None = Field(default=None, ge=0)
    """Feedback outcomes `failure`."""
    success_rate: float | None = None
    """successes / (successes + failures)."""
    p_value: float | None = None
    """For a challenger: the one-sided p-value of its success rate above the control's."""


class ExperimentStatus(ApiModel):
    """The A/B experiment: its phase, the per-variant table and the decision."""

    name: str = Field(max_length=63)
    """The experiment's name."""
    phase: ExperimentPhase = "Pending"
    """Pending (waiting to start: see message), Running, Concluded (decided; with manual promotion,
    waiting for a person) or Promoted (the winner is the stable model; the experiment is over)."""
    started_at: str | None = Field(default=None, max_length=64)
    """When it started (RFC 3339)."""
    measured_at: str | None = Field(default=None, max_length=64)
    """When the variants were last measured."""
    concluded_at: str | None = Field(default=None, max_length=64)
    """When it was decided."""
    variants: list[VariantStatus] = Field(default_factory=list, max_length=4)
    """The per-variant table; the first is the control."""
    winner: str | None = Field(default=None, max_length=32)
    """The variant the test chose (the control when no challenger is significantly better)."""
    p_value: float | None = None
    """The winner's p-value against the control (unset when the control won)."""
    promoted: str | None = Field(default=None, max_length=32)
    """The variant made the stable model, by rule or by hand."""
    message: str | None = Field(default=None, max_length=1024)
    """One line on what the experiment is doing or found."""
    fingerprint: str | None = Field(default=None, max_length=64)
    """Of the spec's experiment (name, key header, variants): another one starts anew."""


class ModelDeploymentStatus(StatusBase):
    """What the operator observed and did."""

    phase: ModelDeploymentPhase = "Pending"
    """Pending, Progressing (a rollout is under way), Paused, Healthy, Degraded (rolled back, or its
    HTTPRoute refused by its Gateway) or Failed."""
    stable: ServedModel | None = None
    """The model serving the stable share of traffic."""
    canary: ServedModel | None = None
    """The model being rolled out, if any."""
    previous: ServedModel | None = None
    """The model stable replaced at the last promotion, kept for an instant rollback."""
    stable_version: str | None = Field(default=None, max_length=64)
    """`stable.version`, flat for `kubectl get`."""
    current_step: int | None = Field(default=None, ge=0)
    """Index of the rollout step under way."""
    canary_weight: int = Field(default=0, ge=0, le=100)
    """Percentage of traffic the canary receives now: with replica-ratio routing, its share of the
    ready server pods (which may differ from the step's weight: one canary pod beside one stable
    pod is 50%); with an HTTPRoute, the canary's weight in the route once a Gateway accepted it at
    its latest generation and resolved its backends (0 until then)."""
    desired_weight: int = Field(default=0, ge=0, le=100)
    """The weight the current rollout step asks for."""
    step_started_at: str | None = Field(default=None, max_length=64)
    """When the current rollout step began (RFC 3339): pauses and analysis intervals count from it."""
    aborted: bool = False
    """The current canary was rolled back (analysis failed, or `modelops.dev/abort`); it stays at 0%
    until `modelops.dev/retry` or a new model version."""
    message: str | None = Field(default=None, max_length=1024)
    """One line on what the rollout is doing or waiting for."""
    analysis: list[AnalysisResult] = Field(default_factory=list, max_length=256)
    """The latest analysis measurements of the current rollout."""
    replicas: int = Field(default=0, ge=0)
    """Server pods, stable and canary."""
    ready_replicas: int = Field(default=0, ge=0)
    """Server pods ready to serve."""
    url: str | None = Field(default=None, max_length=2048)
    """The in-cluster URL of the Service."""
    mlflow_alias: MlflowAliasStatus | None = None
    """Where `spec.model.mlflowAlias` was last set in MLflow."""
    autoscaler: AutoscalerStatus | None = None
    """The stable track's autoscaler: replicas and metrics as it reads them (the `Autoscaling`
    condition says whether it can read them at all)."""
    experiment: ExperimentStatus | None = None
    """The A/B experiment of `spec.experiment`, if any."""
