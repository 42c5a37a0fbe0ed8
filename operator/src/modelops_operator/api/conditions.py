"""Condition types and reasons: the words `status` speaks, defined once.

Users match on these in scripts (`kubectl wait --for=condition=Ready`), so they are part of the
API: add new ones, never rename. Reasons are CamelCase, as Kubernetes API conventions ask.
"""

from __future__ import annotations

from datetime import UTC, datetime

from modelops_operator.api.common import Condition, ConditionStatus

# Condition types.
READY = "Ready"
"""The object has reached its goal: a dataset version exists, a model is registered, a model serves."""
PROGRESSING = "Progressing"
"""The operator is working towards the goal (a Job, a trial, a rollout step is under way)."""
DEGRADED = "Degraded"
"""Something failed that needs the user: a rollback happened, a failure budget ran out."""
DATASET_READY = "DatasetReady"
"""For a TrainingRun: the Dataset it trains on is Ready and its version is pinned."""
TRAINING_RUNNING = "TrainingRunning"
"""For a TrainingRun: trials are running."""
AVAILABLE = "Available"
"""For a ModelDeployment: at least one stable server pod is ready."""
MLFLOW_REGISTERED = "MLflowRegistered"
"""For a TrainingRun with `spec.registry.mlflowTrackingUri`: the latest model version is in MLflow."""
MODEL_RESOLVED = "ModelResolved"
"""For a ModelDeployment: the model to serve is known (a registered version, or a URI with digest)."""
MLFLOW_ALIAS = "MLflowAlias"
"""For a ModelDeployment with `spec.model.mlflowAlias`: the alias points at the stable model's MLflow version."""
EXPERIMENT = "Experiment"
"""For a ModelDeployment with `spec.experiment`: True while the A/B experiment runs or waits for a
person's promotion, False once it is over or while it cannot start (the reason says why). Not
part of Ready: the stable model serves whatever the experiment does."""
AUTOSCALING = "Autoscaling"
"""For a ModelDeployment: the stable track's HorizontalPodAutoscaler reads its metrics and can scale.
Not part of Ready: the pods serve whatever the autoscaler can read."""

# Summary conditions: derived from the ones above by `reconcile.health.summarise` at every write of
# status, for tools that know no modelops kind. Their reason and message are the Ready condition's.
FAILED = "Failed"
"""The object reached a failure the operator will not get out of by itself; the reason says which.
A Dataset or TrainingRun whose work failed (phase Failed: a new spec starts over), a ModelDeployment
rolled back (phase Degraded: `modelops.dev/retry` or a new model version moves on) or refused
(phase Failed). `kubectl wait --for=condition=Failed` ends on it."""
SUCCEEDED = "Succeeded"
"""For a Dataset or TrainingRun: the work for the current spec succeeded (a dataset version, a
registered model); True exactly when Ready is. With Failed, the pair a script waits for."""
RECONCILING = "Reconciling"
"""Abnormal-true, as kstatus reads it (Flux, Helm 4's `--wait`): the operator is working toward the
goal or waiting for something that comes by itself; kstatus says InProgress."""
STALLED = "Stalled"
"""Abnormal-true, as kstatus reads it: nothing moves until a person acts (Failed, or a refusal: an
invalid spec, a child's name held by another object, a Secret or HTTPRoute not handed over);
kstatus says Failed."""

# Reasons shared by every kind.
INVALID_SPEC = "InvalidSpec"
"""The spec passed the API server's schema but the operator cannot act on it; the message says why."""

# Reasons of a Dataset.
JOB_CREATED = "JobCreated"
"""The preparation Job for the current spec was created."""
PREPARING = "Preparing"
"""The preparation Job is running."""
DATASET_PREPARED = "DatasetPrepared"
"""A dataset version for the current spec exists; `status.version` names it."""
DEADLINE_EXCEEDED = "DeadlineExceeded"
"""The child Job ran longer than its deadline and was stopped."""
POD_PENDING = "PodPending"
"""A child pod cannot start (unschedulable, a missing volume or Secret, an image that cannot be
pulled), or cannot even be created (the API server refused it: a ServiceAccount that does not exist,
a ResourceQuota, Pod Security), or the kubelet evicted it in the last 10 minutes and no Ready pod
has replaced it (its disk or memory limit, a node short of disk or memory); the message quotes
Kubernetes' reason and says what to check. It resolves by itself once the cause is fixed (the
controllers keep retrying)."""
PREPARATION_FAILED = "PreparationFailed"
"""The preparation Job failed without a more specific reason; the message holds its last output."""
RESULT_UNREADABLE = "ResultUnreadable"
"""The preparation Job succeeded but its termination message held no result the operator can read."""
SOURCE_UNREACHABLE = "SourceUnreachable"
"""A source URI could not be read (missing, no permission, host unreachable); the message names it."""
INVALID_SOURCE = "InvalidSource"
"""A source could be read but not understood (a manifest without the named columns, a corrupt archive)."""
UNSAFE_ARCHIVE = "UnsafeArchive"
"""An archive holds a path that escapes its root (`../`, absolute paths, links), or two members
that clash (the same name, a file where a folder is, the root itself); nothing was kept."""
ARCHIVE_TOO_LARGE = "ArchiveTooLarge"
"""An archive expands past `spec.limits` (bytes, members, or ratio to its compressed size: a
compression bomb); the message names the limit to raise if the archive is genuine."""
SOURCE_TOO_LARGE = "SourceTooLarge"
"""A manifest is larger than `spec.limits.manifestMaxBytes`."""
SPLIT_MISSES_CLASS = "SplitMissesClass"
"""A split (train, val or test) has no image of a class: too few images for the split's ratios.
Add images, or set that ratio to 0."""
CREDENTIALS_NOT_ALLOWED = "CredentialsNotAllowed"
"""A source names a `credentialsSecret` the operator's admin has not listed for datasets
(`settings.datasetCredentialsSecrets`); no Job was created."""
EMPTY_CLASS = "EmptyClass"
"""A class has fewer images than `spec.cleaning.minImagesPerClass` after cleaning (or a listed class has none)."""
NO_IMAGES_LEFT = "NoImagesLeft"
"""No image is left to publish: the sources listed none, or cleaning dropped every one (`status.dropped` says why)."""
#: Reasons the preparation program may report; anything else becomes PreparationFailed.
PREPARE_REASONS = frozenset(
    {
        SOURCE_UNREACHABLE,
        INVALID_SOURCE,
        UNSAFE_ARCHIVE,
        ARCHIVE_TOO_LARGE,
        SOURCE_TOO_LARGE,
        EMPTY_CLASS,
        NO_IMAGES_LEFT,
        DEADLINE_EXCEEDED,
    }
)

# Reasons of a TrainingRun.
DATASET_NOT_FOUND = "DatasetNotFound"
"""The Dataset named in `spec.datasetRef` does not exist in the TrainingRun's namespace."""
DATASET_NOT_READY = "DatasetNotReady"
"""The Dataset exists but has no Ready version yet; the TrainingRun waits for it."""
DATASET_VERSION_PINNED = "DatasetVersionPinned"
"""The Dataset is Ready and the version the TrainingRun will train on is recorded."""
DATASET_VERSION_UNAVAILABLE = "DatasetVersionUnavailable"
"""`spec.datasetRef.version` names a version the Dataset does not currently have."""
TRIALS_RUNNING = "TrialsRunning"
"""Trials (PyTorchJobs) are running or about to; `status.progress` says where they are."""
SUSPENDED = "Suspended"
"""`spec.suspend` is set: running trials were suspended (their pods stop after a checkpoint)."""
MODEL_REGISTERED = "ModelRegistered"
"""The best trial's ONNX model is registered as a new model version (`status.model`)."""
TRIALS_EXHAUSTED = "TrialsExhausted"
"""More trials failed than `spec.search.maxFailedTrials` allows, or none succeeded."""
TRAINING_FAILED = "TrainingFailed"
"""A trial failed without a more specific reason; the message holds its last output."""
PARITY_CHECK_FAILED = "ParityCheckFailed"
"""The exported ONNX model's outputs differ from PyTorch's beyond the tolerance; nothing was registered."""
MEDIAN_STOPPED = "MedianStopped"
"""A trial was stopped early: its objective was worse than the median of the others at the same epoch."""
SUCCESSIVE_HALVING_STOPPED = "SuccessiveHalvingStopped"
"""A trial was stopped early by `asha` or `hyperband`: at a rung, its objective was outside the top
1/reductionFactor of the trials judged there."""
GOAL_REACHED = "GoalReached"
"""A trial reached `spec.search.objective.goal`; the remaining trials were stopped, and the run's
`Ready` message (`ModelRegistered`) says that the goal ended the search, after how many trials."""
JOB_DELETED = "JobDeleted"
"""A trial's PyTorchJob was deleted (by someone else) before it finished."""
QUEUED = "Queued"
"""Every unfinished trial waits for admission by Kueue (`spec.workers.queueName`): the ClusterQueue's
quota is held by other workloads; the message quotes Kueue. It resolves by itself when quota frees."""
ADMITTED = "Admitted"
"""(Event) Kueue admitted a queued or preempted trial: its PyTorchJob starts (or resumes from its
last checkpoint)."""
PREEMPTED = "Preempted"
"""Kueue evicted a trial to make room for a higher-priority workload: its pods were stopped after a
checkpoint, and it resumes from that checkpoint when Kueue admits it again."""
QUEUE_NOT_FOUND = "QueueNotFound"
"""Kueue cannot admit a trial: the LocalQueue named in `spec.workers.queueName` does not exist in
the namespace, or its ClusterQueue does not exist or is inactive; the message quotes Kueue. Create
the queue (or fix its ClusterQueue), or fix `spec.workers.queueName`."""
QUOTA_EXCEEDED = "QuotaExceeded"
"""A trial asks for more than its ClusterQueue can ever admit (more CPU, memory or GPUs than the
quota plus what it may borrow, or a resource the queue has no quota for); the message quotes Kueue.
Lower `spec.workers` (resources, `gpusPerNode`, `nodes`) or raise the ClusterQueue's quota."""
KUEUE_UNAVAILABLE = "KueueUnavailable"
"""`spec.workers.queueName` is set, so trials are created suspended for Kueue to admit, but Kueue
does not manage them: its Workload API is not installed, or no Workload appeared for the trial
(Kueue is not running, or its configuration does not integrate `kubeflow.org/pytorchjob`)."""
TRAINING_BACKEND_UNAVAILABLE = "TrainingBackendUnavailable"
"""The run's trials are to run as TrainJobs (`spec.workers.backend`, or the operator's
`MODELOPS_TRAINING_BACKEND`), but the cluster does not serve Kubeflow Trainer v2's API
(`trainjobs.trainer.kubeflow.org`): install Kubeflow Trainer v2, or choose the PyTorchJob backend."""
RUNTIME_NOT_FOUND = "RuntimeNotFound"
"""The Trainer v2 runtime a run's TrainJobs name (`spec.workers.runtimeRef`, or the operator's
`MODELOPS_TRAINING_RUNTIME`) does not exist: create it (the chart's `trainingRuntime.create`
installs the default one), or fix `spec.workers.runtimeRef`."""
UNSUPPORTED_BY_BACKEND = "UnsupportedByBackend"
"""The spec (or the operator's workload defaults) sets fields that the chosen trial backend cannot
carry per trial; the message names them. Unset them, put them in the Trainer v2 runtime, or choose
the PyTorchJob backend."""
WORKLOAD_DEACTIVATED = "WorkloadDeactivated"
"""A trial's Kueue Workload was deactivated (`spec.active: false`) by someone other than the operator
(an administrator, or Kueue after too many requeues); the operator leaves it so. Activate it again
to let the trial be admitted."""

# Reasons of a ModelDeployment.
TRAINING_RUN_NOT_FOUND = "TrainingRunNotFound"
"""The TrainingRun named in `spec.model.trainingRunRef` does not exist in the namespace."""
MODEL_NOT_REGISTERED = "ModelNotRegistered"
"""The TrainingRun exists but has not registered the requested model version yet."""
MODEL_FOUND = "ModelFound"
"""The model to serve is known: its URI and digest are in status."""

MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
"""Stable server pods are ready (Available)."""
NO_READY_REPLICAS = "NoReadyReplicas"
"""No stable server pod is ready (Available is False)."""
SERVING = "Serving"
"""Ready: the stable Deployment serves the model the spec asks for, every pod rolled out."""
ROLLING_STABLE = "RollingStable"
"""The stable Deployment is rolling its pods to the stable model (first deployment, or after a promotion)."""
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
"""A canary is being rolled out; `status.message` says which step and what it waits for."""
ROLLOUT_PAUSED = "RolloutPaused"
"""The rollout waits for a human: a pause step without duration, or analysis without data."""
ROLLED_BACK = "RolledBack"
"""The canary was rolled back (analysis failed, or aborted by hand); stable serves all traffic."""

EXPERIMENT_PENDING = "ExperimentPending"
"""The experiment waits to start: for the first model to serve, or for a canary rollout to end."""
EXPERIMENT_RUNNING = "ExperimentRunning"
"""The stable track serves every variant; the variants are measured every `interval`."""
EXPERIMENT_CONCLUDED = "ExperimentConcluded"
"""The test was run and chose a winner; with `promotion: Manual` the variants keep serving until a
person annotates `modelops.dev/promote-variant: <name>`."""
EXPERIMENT_PROMOTED = "ExperimentPromoted"
"""The experiment is over: the promoted variant is the stable model."""
EXPERIMENT_VARIANT_NOT_REGISTERED = "ExperimentVariantNotRegistered"
"""A variant's version is not (yet) registered by the TrainingRun of `spec.model.trainingRunRef`."""
EXPERIMENT_VARIANTS_INCOMPATIBLE = "ExperimentVariantsIncompatible"
"""The TrainingRun's status shows the variants were trained on different Datasets, so their classes
and input size may differ; the experiment does not start."""
EXPERIMENT_CONTROL_NOT_STABLE = "ExperimentControlNotStable"
"""The first variant (the control) is not the stable model; the experiment does not start."""

NAME_CONFLICT = "NameConflict"
"""A child the operator would create (a preparation Job, a trial's PyTorchJob, a Deployment,
Service, HPA, PDB, ServiceMonitor or PrometheusRule) already exists and was not created by this
object: the operator touches none of the children until it is renamed or removed. The message
names it; checked again at every resync."""
POD_SETTINGS_NOT_ALLOWED = "PodSettingsNotAllowed"
"""`spec.podSettings` names a ServiceAccount or Secret the operator's admin has not allowed
(`settings.workloadServiceAccounts`, `settings.workloadSecrets`): the pods would lend the object's
author its access. Nothing was created or changed; checked again at every resync."""
ROUTE_NOT_DELEGATED = "RouteNotDelegated"
"""The HTTPRoute named in `spec.rollout.trafficRouting.httpRoute` does not exist, or does not carry
the annotation `modelops.dev/modeldeployment: <this object's name>` by which its owner hands its
rules to this ModelDeployment; the operator leaves it untouched."""
ROUTE_TOO_MANY_RULES = "RouteTooManyRules"
"""The HTTPRoute's own rules leave no room for the operator's (an HTTPRoute holds at most 16
rules); the message says how many it needs. Nothing was written; move rules to another HTTPRoute."""
ROUTE_NOT_ACCEPTED = "RouteNotAccepted"
"""The HTTPRoute is accepted by no parent: no Gateway reported on it (its `spec.parentRefs` name no
Gateway, or no controller runs for the Gateway's class), or each one refused it (the message quotes
each parent's reason: `NotAllowedByListeners`, `NoMatchingListenerHostname`, ...). No traffic split
is in effect: the rollout does not advance past a `setWeight` step and the object is not Ready."""
ROUTE_BACKENDS_REFUSED = "RouteBackendsRefused"
"""A Gateway accepted the HTTPRoute but cannot resolve its backends (`ResolvedRefs` is False: a
Service that does not exist, a reference across namespaces without a ReferenceGrant, a kind it does
not support); the message quotes the Gateway. Requests routed to them fail: the rollout does not
advance past a `setWeight` step and the object is not Ready."""
ROUTE_PENDING = "RoutePending"
"""The HTTPRoute does not carry the operator's rules yet, or its Gateway has not reported on its
latest generation: the weights just written are not known to be in effect. Resolves by itself."""

MLFLOW_VERSION_CREATED = "MLflowVersionCreated"
"""The model version was registered in MLflow (`status.model.mlflowVersion`)."""
MLFLOW_REGISTRATION_FAILED = "MLflowRegistrationFailed"
"""MLflow refused the model version or could not be reached; the message quotes it. Retried at
every resync; the model stays registered in status."""
MLFLOW_ALIAS_MOVED = "MLflowAliasMoved"
"""`spec.model.mlflowAlias` was set to the MLflow version of the model just promoted to stable
(`status.mlflowAlias`)."""
MLFLOW_ALIAS_FAILED = "MLflowAliasFailed"
"""The alias could not be set: MLflow refused or could not be reached, a Secret could not be used,
or the stable model has no MLflow version (the TrainingRun's `MLflowRegistered` condition says
why). Serving is not affected; retried at every resync."""

AUTOSCALER_ACTIVE = "AutoscalerActive"
"""The autoscaler reads every metric it scales on (`status.autoscaler.metrics`)."""
AUTOSCALER_PENDING = "AutoscalerPending"
"""The autoscaler has not reported yet (it reads metrics every 15 s by default), or has had no
metric reading for less than a minute (new pods are read once metrics-server or Prometheus has
sampled them, about 30 s)."""
AUTOSCALER_METRIC_UNAVAILABLE = "AutoscalerMetricUnavailable"
"""The autoscaler cannot read a metric, in its own words: CPU needs the resource metrics API
(metrics-server), a `customMetric` a custom metrics adapter that serves that name (prometheus-adapter;
KEDA serves only external metrics). The replicas stay where they are until it can."""

#: Reasons that mean "waiting, nothing wrong": their Events are Normal, all others Warnings.
WAITING_REASONS = frozenset(
    {
        DATASET_NOT_READY,
        MODEL_NOT_REGISTERED,
        JOB_CREATED,
        PREPARING,
        TRIALS_RUNNING,
        SUSPENDED,
        QUEUED,
        ADMITTED,
        PREEMPTED,
        SERVING,
        ROLLING_STABLE,
        ROLLOUT_IN_PROGRESS,
        ROLLOUT_PAUSED,
        ROUTE_PENDING,
        AUTOSCALER_PENDING,
        EXPERIMENT_PENDING,
        EXPERIMENT_RUNNING,
        EXPERIMENT_CONCLUDED,
        EXPERIMENT_PROMOTED,
        EXPERIMENT_VARIANT_NOT_REGISTERED,
    }
)


def now() -> datetime:
    """The current time, UTC, to the second (the precision Kubernetes stores)."""
    return datetime.now(UTC).replace(microsecond=0)


#: Longest condition message kept (Kubernetes allows 32768): a longer one keeps its start and its end,
#: where programs put what went wrong.
MAX_MESSAGE = 4096


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` within `limit` characters: unchanged when it fits, else its start and its end
    around ` … `."""
    if len(message) <= limit:
        return message
    keep = limit - 3
    return f"{message[: keep // 2]} … {message[len(message) - (keep - keep // 2) :]}"


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    at: datetime | None = None,
) -> list[Condition]:
    """Return `conditions` with `type_` set; `lastTransitionTime` moves only when `status` changes.

    The input is not modified. Keeping the old transition time when only the reason or message
    changes is what makes "write status only when it changed" converge. The message is shortened
    to `MAX_MESSAGE` characters.
    """
    old = next((c for c in conditions if c.type == type_), None)
    transition = old.last_transition_time if old is not None and old.status == status else (at or now())
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=shorten(message),
        last_transition_time=transition,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


# Transitions, named after what happened. Each sets Ready and Progressing for one reason (and
# Degraded too when `degraded` is given), in that order, through `set_condition`.


def _transition(
    conditions: list[Condition],
    ready: ConditionStatus,
    progressing: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    degraded: bool | None,
    at: datetime | None,
) -> list[Condition]:
    conds = set_condition(conditions, READY, ready, reason, message, generation, at)
    conds = set_condition(conds, PROGRESSING, progressing, reason, message, generation, at)
    if degraded is not None:
        status = ConditionStatus.TRUE if degraded else ConditionStatus.FALSE
        conds = set_condition(conds, DEGRADED, status, reason, message, generation, at)
    return conds


def waiting(
    conditions: list[Condition],
    reason: str,
    message: str,
    generation: int,
    *,
    degraded: bool | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """The object waits for something the operator does not do (a dependency, a person, a spec it
    can act on) or was suspended: not Ready, not Progressing."""
    return _transition(
        conditions, ConditionStatus.FALSE, ConditionStatus.FALSE, reason, message, generation, degraded, at
    )


def running(
    conditions: list[Condition],
    reason: str,
    message: str,
    generation: int,
    *,
    degraded: bool | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """Work toward the goal is under way (a Job, trials): not Ready yet, Progressing."""
    return _transition(
        conditions, ConditionStatus.FALSE, ConditionStatus.TRUE, reason, message, generation, degraded, at
    )


def finished(
    conditions: list[Condition],
    succeeded: bool,
    reason: str,
    message: str,
    generation: int,
    *,
    degraded: bool | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """The work for the current spec is over: Ready when it succeeded, no longer Progressing."""
    ready = ConditionStatus.TRUE if succeeded else ConditionStatus.FALSE
    return _transition(conditions, ready, ConditionStatus.FALSE, reason, message, generation, degraded, at)


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.type == type_), None)
