"""The `TrainingRun` kind: train a model on a Dataset version, optionally searching
hyper-parameters, and register the best result as an ONNX model version."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from modelops_operator.api.common import (
    DIGEST_PATTERN,
    NAME_PATTERN,
    ApiModel,
    Placement,
    PodSettings,
    Resources,
    StatusBase,
    StorageUri,
    cel,
    check_mount,
    mount_rule,
    validations,
)

TrainingRunPhase = Literal["Pending", "WaitingForDataset", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
#: A trial's states while it is not over.
ACTIVE_TRIAL_STATES = ("Pending", "Queued", "Running")
Architecture = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "convnext_tiny",
    "vit_b_16",
]
#: Hyper-parameters a search may vary (their names in `spec.hyperparameters`, plus `architecture`).
SearchableName = Literal[
    "architecture",
    "epochs",
    "batchSize",
    "optimizer",
    "learningRate",
    "weightDecay",
    "momentum",
    "labelSmoothing",
    "warmupEpochs",
    "gradClipNorm",
    "emaDecay",
]
SEARCHABLE: tuple[str, ...] = get_args(SearchableName)


class DatasetRef(ApiModel):
    """The Dataset to train on, by name, optionally pinned to one of its versions."""

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    """The Dataset's name, in the TrainingRun's namespace."""
    version: str | None = Field(default=None, max_length=64)
    """A dataset version to train on; unset takes the Dataset's Ready version when the run starts
    (and keeps it: later dataset versions never disturb a running TrainingRun)."""


class ModelSpec(ApiModel):
    """The network to train."""

    architecture: Architecture = "resnet18"
    """A torchvision architecture; its classifier is sized to the dataset's classes."""
    weights_uri: StorageUri | None = None
    """Initial weights (a state dict) at a URI; unset trains from scratch. Nothing is downloaded
    from a model hub at run time."""
    weights_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 the weights file must have; checked before use."""


class Hyperparameters(ApiModel):
    """Training hyper-parameters: the values of a single run, or of every trial a search leaves
    alone. The trainer documents each in its `--help`."""

    epochs: int = Field(default=10, ge=1, le=10_000)
    """Passes over the training split."""
    batch_size: int = Field(default=64, ge=1, le=65_536)
    """Images per optimizer step on each process (the global batch is this times the processes)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW, or SGD with Nesterov momentum. Weight decay never applies to norms and biases."""
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    """Peak learning rate, reached after the warm-up."""
    weight_decay: float = Field(default=0.05, ge=0, le=1)
    """Decoupled weight decay."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum (ignored by AdamW)."""
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss."""
    lr_schedule: Literal["cosine", "oneCycle", "constant"] = "cosine"
    """Learning-rate schedule after the warm-up."""
    warmup_epochs: float = Field(default=1.0, ge=0, le=100)
    """Linear warm-up length, in epochs."""
    grad_clip_norm: float = Field(default=1.0, ge=0, le=1000)
    """Clip the gradient's global norm to this; 0 turns clipping off."""
    grad_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    """Micro-batches accumulated per optimizer step."""
    mixed_precision: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """`auto` uses bf16 on GPUs that support it, fp16 with loss scaling on others; on CPUs fp32 or bf16,
    whichever a few timed steps of the model at start-up find faster (fp32 where the CPU has no native bf16)."""
    channels_last: bool = True
    """Use the channels-last memory format (faster convolutions on tensor cores)."""
    compile: bool = False
    """Compile the model with `torch.compile` (slower start, faster steps)."""
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    """Keep an exponential moving average of the weights with this decay; 0 turns it off."""
    early_stopping_patience: int = Field(default=0, ge=0, le=10_000)
    """Stop after this many epochs without validation improvement; 0 turns it off."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed of every random generator, for reproducible runs."""


class SearchParameter(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.type != 'choice' || (has(self.values) && size(self.values) > 0)",
            "a choice parameter needs values",
        ),
        cel(
            "self.type == 'choice' || (has(self.min) && has(self.max) && self.min < self.max)",
            "uniform, logUniform and int parameters need min < max",
        ),
        cel("self.type != 'logUniform' || self.min > 0.0", "logUniform needs min > 0"),
        cel(
            "!(self.name in ['epochs', 'batchSize']) || self.type in ['choice', 'int']",
            "epochs and batchSize are integers: search them with type int or choice",
        ),
        cel(
            "!(self.name in ['architecture', 'optimizer']) || self.type == 'choice'",
            "architecture and optimizer are names: search them with type choice",
        ),
    ),
):
    """One dimension of the search space."""

    name: SearchableName
    """The hyper-parameter to vary (a field of `hyperparameters`, or `architecture`)."""
    type: Literal["choice", "uniform", "logUniform", "int"]
    """`choice` picks from `values`; `uniform` and `logUniform` draw a real number in
    `[min, max]`; `int` draws an integer in `[min, max]`."""
    values: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = Field(default=None, max_length=64)
    """The options of a `choice` parameter, written as strings (`["resnet18", "resnet34"]`, `["32", "64"]`)."""
    min: float | None = None
    """Lower bound of a `uniform`, `logUniform` or `int` parameter."""
    max: float | None = None
    """Upper bound of a `uniform`, `logUniform` or `int` parameter."""

    @model_validator(mode="after")
    def _fits_the_hyperparameter(self) -> SearchParameter:
        # The same rules as the CEL ones above: the API server refuses first; this keeps the
        # operator (and tests) from proposing values the trainer would refuse.
        if self.name in ("epochs", "batchSize") and self.type not in ("choice", "int"):
            raise ValueError("epochs and batchSize are integers: search them with type int or choice")
        if self.name in ("architecture", "optimizer") and self.type != "choice":
            raise ValueError("architecture and optimizer are names: search them with type choice")
        return self


ObjectiveMetric = Literal["val_accuracy", "val_top5", "val_loss"]


class Objective(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.metric != 'val_loss' || self.direction == 'minimize'",
            "val_loss is minimized: set direction: minimize",
            ".direction",
        ),
    ),
):
    """What the search optimises, and what picks the best checkpoint of each trial."""

    metric: ObjectiveMetric = "val_accuracy"
    """A metric the trainer reports per epoch on the validation split: val_accuracy (top-1),
    val_top5, or val_loss."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether bigger or smaller is better."""
    goal: float | None = None
    """Stop the search as soon as a trial reaches this value."""


class SuccessiveHalving(ApiModel):
    """Successive halving (Optuna's `SuccessiveHalvingPruner`, and the brackets of its
    `HyperbandPruner`): trials are judged at rungs, epochs `minEpochs * reductionFactor^(rate + k)`
    for k = 0, 1, ... (`minEpochs` is `earlyStoppingMinEpochs`, `rate` is `minEarlyStoppingRate`);
    a trial carries on past a rung only if its value there is in the top `1/reductionFactor` of the
    trials judged there so far (the best one while fewer than `reductionFactor` were)."""

    reduction_factor: int = Field(default=3, ge=2, le=100)
    """eta: the fraction 1/eta of the trials at a rung that carry on, and the growth of the rungs' epochs."""
    min_early_stopping_rate: int | None = Field(default=None, ge=0, le=30)
    """`asha` only: the first rung is at `earlyStoppingMinEpochs * reductionFactor^rate` epochs (unset: 0).
    Hyperband runs one bracket per rate itself."""
    bootstrap_count: int = Field(default=0, ge=0, le=1000)
    """Trials that must have reached a rung before one may carry on past it: a trial that reaches a
    rung among the first `bootstrapCount` is stopped there (Optuna's semantics). 0 never stops for this."""
    max_epochs: int | None = Field(default=None, ge=1, le=10_000)
    """`hyperband` only: the most epochs a trial runs (Optuna's `max_resource`), which sets the number of
    brackets; unset takes the largest `epochs` a trial may get (the search's `epochs` parameter, else
    `hyperparameters.epochs`)."""


class Search(
    ApiModel,
    json_schema_extra=validations(
        cel("self.parallelism <= self.maxTrials", "parallelism cannot exceed maxTrials", ".parallelism"),
        cel(
            "!has(self.successiveHalving) || self.earlyStopping in ['asha', 'hyperband']",
            "successiveHalving applies to earlyStopping asha or hyperband only",
            ".successiveHalving",
        ),
        cel(
            "self.earlyStopping != 'hyperband' || !has(self.successiveHalving)"
            " || !has(self.successiveHalving.minEarlyStoppingRate)",
            "minEarlyStoppingRate applies to earlyStopping asha only (hyperband runs every rate as a bracket)",
            ".successiveHalving.minEarlyStoppingRate",
        ),
        cel(
            "self.earlyStopping != 'asha' || !has(self.successiveHalving) || !has(self.successiveHalving.maxEpochs)",
            "maxEpochs applies to earlyStopping hyperband only",
            ".successiveHalving.maxEpochs",
        ),
        cel(
            "!has(self.successiveHalving) || !has(self.successiveHalving.maxEpochs)"
            " || self.successiveHalving.maxEpochs >= self.earlyStoppingMinEpochs",
            "successiveHalving.maxEpochs must be at least earlyStoppingMinEpochs",
            ".successiveHalving.maxEpochs",
        ),
        cel(
            "self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
            "each search parameter may appear once",
            ".parameters",
        ),
        cel(
            "self.algorithm != 'grid' || self.parameters.all(p, p.type == 'choice' || p.type == 'int')",
            "grid search takes choice and int parameters only",
            ".algorithm",
        ),
    ),
):
    """A hyper-parameter search: one PyTorchJob per trial, the best trial's model registered."""

    algorithm: Literal["grid", "random", "bayesian"] = "random"
    """`grid` tries every combination (up to maxTrials); `random` samples; `bayesian` uses a TPE
    sampler whose state lives in status, so an operator restart loses nothing."""
    parameters: list[SearchParameter] = Field(min_length=1, max_length=16)
    """The dimensions of the search space."""
    objective: Objective = Field(default_factory=Objective)
    """The metric to optimise and its direction."""
    max_trials: int = Field(default=4, ge=1, le=1000)
    """The trial budget."""
    parallelism: int = Field(default=1, ge=1, le=100)
    """Trials running at once."""
    max_failed_trials: int = Field(default=0, ge=0, le=1000)
    """Failed trials tolerated before the run fails (reason `TrialsExhausted`)."""
    early_stopping: Literal["none", "median", "asha", "hyperband"] = "median"
    """The pruner that stops weak trials early. `median` stops a trial whose best metric up to an
    epoch is worse than the median of the other trials' up to that epoch; `asha` is asynchronous
    successive halving (Optuna's `SuccessiveHalvingPruner`): at each rung only the top
    1/`reductionFactor` carry on; `hyperband` (Optuna's `HyperbandPruner`) spreads the trials over
    brackets of successive halving that start at different rungs. `none` lets every trial finish."""
    early_stopping_min_epochs: int = Field(default=2, ge=1, le=10_000)
    """Epochs every trial runs before early stopping may judge it; for `asha` and `hyperband` the
    first rung (Optuna's `min_resource`)."""
    successive_halving: SuccessiveHalving | None = None
    """Settings of `asha` and `hyperband`; unset takes the defaults (reduction factor 3)."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed of the sampler: the same seed proposes the same trials (and, for `hyperband`, puts them in
    the same brackets)."""

    @model_validator(mode="after")
    def _pruner_settings_fit(self) -> Search:
        # The same rules as the CEL ones above, for the operator and tests.
        halving = self.successive_halving
        if halving is None:
            return self
        if self.early_stopping not in ("asha", "hyperband"):
            raise ValueError("successiveHalving applies to earlyStopping asha or hyperband only")
        if self.early_stopping == "hyperband" and halving.min_early_stopping_rate is not None:
            raise ValueError(
                "minEarlyStoppingRate applies to earlyStopping asha only (hyperband runs every rate as a bracket)"
            )
        if self.early_stopping == "asha" and halving.max_epochs is not None:
            raise ValueError("maxEpochs applies to earlyStopping hyperband only")
        if halving.max_epochs is not None and halving.max_epochs < self.early_stopping_min_epochs:
            raise ValueError("successiveHalving.maxEpochs must be at least earlyStoppingMinEpochs")
        return self


#: The Kubeflow APIs a trial can run as: the training operator's PyTorchJob (`kubeflow.org/v1`, the
#: legacy line) or Kubeflow Trainer v2's TrainJob (`trainer.kubeflow.org/v1alpha1`).
TrialBackendName = Literal["PyTorchJob", "TrainJob"]


class RuntimeRef(ApiModel):
    """The Kubeflow Trainer v2 runtime a TrainJob trial runs on: its pod template (security
    context, volumes, ports, the Job's failure policy) is the runtime's; the operator adds the
    image, command, training config, resources, node count and placement per trial."""

    name: str = Field(max_length=253, pattern=NAME_PATTERN)
    """The runtime's name."""
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    """A ClusterTrainingRuntime (cluster-wide, the usual case) or a TrainingRuntime in the run's
    namespace."""


class Workers(ApiModel):
    """The shape of each trial's job (a PyTorchJob or a TrainJob, see `backend`)."""

    backend: TrialBackendName | None = None
    """What runs each trial: `PyTorchJob` (the Kubeflow training operator v1) or `TrainJob`
    (Kubeflow Trainer v2, on the runtime `runtimeRef`). Unset: the operator's setting
    `MODELOPS_TRAINING_BACKEND`. A change applies to the next round of trials."""
    runtime_ref: RuntimeRef | None = None
    """With the TrainJob backend: the Trainer v2 runtime; unset, the operator's setting
    `MODELOPS_TRAINING_RUNTIME` (a ClusterTrainingRuntime, the chart installs it). A runtime that
    does not exist is a condition with reason RuntimeNotFound."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Pods per trial: one master and `nodes - 1` workers."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """`nvidia.com/gpu` requested by each pod; 0 trains on CPU."""
    procs_per_node: int | None = Field(default=None, ge=1, le=64)
    """Training processes per pod (`nprocPerNode`); default one per GPU, or one on CPU."""
    resources: Resources = Field(default_factory=Resources)
    """CPU and memory of each pod."""
    placement: Placement = Field(default_factory=Placement)
    """Where the pods may run."""
    gang_scheduling: bool = False
    """Ask for all pods of a trial to be scheduled together (`schedulingPolicy.minAvailable`)."""
    queue_name: str | None = Field(default=None, max_length=63)
    """A Kueue LocalQueue (or a Volcano queue, with `gangScheduling`) for the PyTorchJobs. With a
    queue, Kueue admits each trial: its PyTorchJob is created suspended and Kueue starts it once the
    queue's quota allows; a trial preempted by a higher-priority workload resumes from its last
    checkpoint when admitted again. `spec.suspend` then deactivates the trial's Kueue Workload
    instead of suspending the PyTorchJob."""
    workload_priority_class: str | None = Field(default=None, max_length=253, pattern=NAME_PATTERN)
    """A Kueue WorkloadPriorityClass for the trials (label `kueue.x-k8s.io/priority-class` on each
    PyTorchJob): Kueue admits higher priorities first and, where the ClusterQueue allows, preempts
    lower ones to make room. Without it, Kueue takes the pods' `placement.priorityClassName`."""


class RunPolicy(ApiModel):
    """How each trial's PyTorchJob treats failures and time (Kubeflow's `runPolicy`)."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Pod restarts before the trial fails."""
    active_deadline_seconds: int | None = Field(default=None, ge=60)
    """The trial fails (reason `DeadlineExceeded`) when it runs longer than this."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete a finished PyTorchJob after this long; its results stay in status."""
    clean_pod_policy: Literal["None", "Running", "All"] = "None"
    """Which pods to delete when a trial finishes; `None` keeps their logs readable."""


class Checkpointing(ApiModel, json_schema_extra=validations(mount_rule())):
    """Checkpoints written during training, for resumption after preemption."""

    every_epochs: int = Field(default=1, ge=1, le=10_000)
    """Write a checkpoint every this many epochs (and always on SIGTERM)."""
    uri: StorageUri | None = None
    """Where checkpoints go; default: the operator's artifact store."""
    pvc: str | None = Field(default=None, max_length=253)
    """A PersistentVolumeClaim shared by the trial's pods, mounted where `uri` points."""

    @model_validator(mode="after")
    def _not_over_a_system_folder(self) -> Checkpointing:
        check_mount(self.uri, self.pvc)
        return self


class Registry(ApiModel):
    """Where registered model versions are recorded besides status."""

    mlflow_tracking_uri: str | None = Field(default=None, pattern=r"^https?://.+$", max_length=2048)
    """An MLflow tracking server to register model versions in; unset registers in status only."""
    model_name: str | None = Field(default=None, max_length=253)
    """The registered model's name in MLflow; default the TrainingRun's name."""
    credentials_secret: str | None = Field(default=None, max_length=253, pattern=NAME_PATTERN)
    """A Secret in this namespace with MLflow credentials: `token` (sent as a bearer token) or
    `username` and `password` (basic authentication). It must carry the annotation
    `modelops.dev/mlflow-tracking-uri` set to exactly `mlflowTrackingUri`, by which its owner allows
    sending it there; the operator needs RBAC to read it (chart value `rbac.readSecrets`). Trial
    pods get it too (as `MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD`), once the operator has checked that annotation."""
    ca_secret: str | None = Field(default=None, max_length=253, pattern=NAME_PATTERN)
    """A Secret in this namespace whose key `ca.crt` holds the PEM CA bundle that signed the tracking
    server's certificate (a private CA). It replaces the system's trust store for this server, for
    the operator and for trial pods (`MLFLOW_TRACKING_SERVER_CERT_PATH`, mounted read-only)."""
    track_trials: bool = True
    """Log every trial as an MLflow run (hyper-parameters, per-epoch metrics, the model card); the
    registered version links to the best trial's run. A tracking server that cannot be reached
    never fails a trial."""
    experiment_name: str | None = Field(default=None, min_length=1, max_length=500)
    """The MLflow experiment of the trials' runs (created when missing); default `<namespace>/<name>`."""


class TrainingRunSpec(ApiModel):
    """What a TrainingRun declares. A change after success trains a new model version; earlier
    versions stay registered."""

    dataset_ref: DatasetRef
    """The Dataset to train on."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    """The network."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Training hyper-parameters (the fixed ones, when a search varies others)."""
    search: Search | None = None
    """An optional hyper-parameter search; unset runs a single trial."""
    workers: Workers = Field(default_factory=Workers)
    """Pods, GPUs and placement of each trial."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Failure and time limits of each trial."""
    pod_settings: PodSettings = Field(default_factory=PodSettings)
    """ServiceAccount, image pull Secrets, labels, annotations and environment of every trial pod,
    over the operator-wide defaults. A change applies to trials started afterwards."""
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    """Checkpoint frequency and storage."""
    registry: Registry = Field(default_factory=Registry)
    """External model registry."""
    suspend: bool = False
    """Pause the run: running trials are stopped (and checkpointed), none are started."""


class TrialStatus(ApiModel):
    """One trial of the search (or the single trial of a plain run)."""

    name: str = Field(max_length=253)
    """The trial's PyTorchJob."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """The hyper-parameters this trial varies, written as strings."""
    state: Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Stopped"] = "Pending"
    """Pending, Queued (waiting for admission by Kueue, or preempted and waiting to be admitted
    again), Running, Succeeded, Failed, or Stopped (early-stopped or suspended)."""
    start_time: datetime | None = None
    """When the operator created the trial's PyTorchJob."""
    completion_time: datetime | None = None
    """When the trial ended (Succeeded, Failed or Stopped); unset while it runs or after it resumed."""
    objective: float | None = None
    """The trial's best value of the objective metric."""
    epoch: int | None = Field(default=None, ge=0)
    """The epochs the trial has finished (as its trainer reports them)."""
    epochs: int | None = Field(default=None, ge=1)
    """The epochs the trial is set to run."""
    step: int | None = Field(default=None, ge=0)
    """Optimizer steps taken so far (from the trainer's progress endpoint while the trial runs)."""
    steps_per_epoch: int | None = Field(default=None, ge=1)
    """Optimizer steps per epoch."""
    images_per_second: float | None = Field(default=None, ge=0)
    """Training throughput over the trainer's last 30 seconds, all processes together; unset when
    the trial is not running."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """The trainer's estimate of the seconds until its last epoch ends (export not included);
    unset when unknown or the trial is not running."""
    history: list[float] = Field(default_factory=list, max_length=10_000)
    """The objective metric after each epoch (index 0 is epoch 1): what early stopping compares."""
    rung_epochs: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, max_length=64)
    """The epochs at which successive halving (`asha`, `hyperband`) judged the trial, one per rung;
    its value at a rung is its history at that epoch. Kept so that a restarted operator never
    judges a trial twice at one rung, and the other trials compete with exactly these values."""
    reason: str | None = Field(default=None, max_length=63)
    """Why the trial ended as it did (`Succeeded`, `MedianStopped`, `SuccessiveHalvingStopped`,
    `DeadlineExceeded`, `ParityCheckFailed`, ...), or why it is Queued (`Queued`, `Preempted`,
    `QueueNotFound`, `QuotaExceeded`, ...)."""
    message: str | None = Field(default=None, max_length=4096)
    """Why the trial failed or stopped."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Metrics of the trial's best checkpoint, once it succeeded."""
    model_uri: str | None = Field(default=None, max_length=2048)
    """The ONNX file the trial exported (parity-checked by the trainer)."""
    model_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 of that file."""
    model_card_uri: str | None = Field(default=None, max_length=2048)
    """Its model card."""
    mlflow_run_id: str | None = Field(default=None, max_length=64)
    """The trial's MLflow run, when `spec.registry.trackTrials` logged one."""


class RegisteredModel(ApiModel):
    """A registered model version: an ONNX file with its digest, metrics and lineage."""

    version: int = Field(ge=1)
    """Increases by one with every model this TrainingRun registers."""
    uri: str = Field(max_length=2048)
    """The ONNX file."""
    digest: str = Field(pattern=DIGEST_PATTERN)
    """SHA-256 of the ONNX file; servers check it before loading."""
    model_card_uri: str | None = Field(default=None, max_length=2048)
    """The model card: classes, input size, preprocessing, metrics, lineage."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Metrics of the best checkpoint on the validation and test splits."""
    dataset: str | None = Field(default=None, max_length=253)
    """The Dataset it was trained on."""
    dataset_version: str | None = Field(default=None, max_length=64)
    """The dataset version it was trained on."""
    trial: str | None = Field(default=None, max_length=253)
    """The trial that produced it."""
    objective: float | None = None
    """That trial's objective value."""
    code_version: str | None = Field(default=None, max_length=63)
    """The operator version that launched the training (the trainer's is in the model card)."""
    mlflow_version: str | None = Field(default=None, max_length=63)
    """Its version in the MLflow Model Registry, when `spec.registry.mlflowTrackingUri` is set."""
    mlflow_run_id: str | None = Field(default=None, max_length=64)
    """The MLflow run of the trial that produced it; the MLflow version links to it."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """That trial's hyper-parameters."""


class TrainingRunStatus(StatusBase):
    """What the operator observed and produced."""

    phase: TrainingRunPhase = "Pending"
    """Pending, WaitingForDataset, Queued (every unfinished trial waits for admission by Kueue),
    Running, Suspended, Succeeded or Failed."""
    start_time: datetime | None = None
    """When the current round's first trial was created."""
    completion_time: datetime | None = None
    """When the current round ended (phase Succeeded or Failed); unset while it runs."""
    dataset_version: str | None = Field(default=None, max_length=64)
    """The pinned dataset version this run trains on."""
    dataset_uri: str | None = Field(default=None, max_length=2048)
    """Where the pinned dataset version lives."""
    dataset_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 of the pinned version's manifest; the trainer refuses any other."""
    spec_hash: str | None = Field(default=None, max_length=64)
    """Hash of the spec fields that change the model (dataset, model, hyper-parameters, search):
    a new value starts a new round of trials and, on success, a new model version."""
    round: int = Field(default=0, ge=0)
    """The round of trials under way or last finished; trial names carry it (`<run>-r<round>-t<n>`)."""
    progress: str | None = Field(default=None, max_length=1024)
    """One line on what is happening: trials finished, the running trials' epoch and metric."""
    percent_complete: int | None = Field(default=None, ge=0, le=100)
    """How much of the round's training is done, in percent: every trial of the budget counts
    equally, a finished one (succeeded, failed, stopped) as done, a running one by its epochs and
    steps. 100 when the round succeeded (a goal reached early included)."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """Estimated seconds until the round's last trial finishes training: the running trials' own
    estimates, then the trials still to start, each taking the mean duration of the trials that
    succeeded so far (or, before any did, of what the running ones' progress implies), queued on
    `search.parallelism` slots. Unset when there is nothing to estimate from, or the round is over."""
    trials: list[TrialStatus] = Field(
        default_factory=list,
        max_length=1000,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Every trial started so far, with its parameters, state and objective."""
    best_trial: str | None = Field(default=None, max_length=253)
    """The trial with the best objective so far."""
    best_objective: float | None = None
    """The best objective value so far."""
    model: RegisteredModel | None = None
    """The latest registered model version."""
    model_version: int | None = Field(default=None, ge=1)
    """The latest registered model version number (also in `model.version`)."""
    models: list[RegisteredModel] = Field(
        default_factory=list,
        max_length=100,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]},
    )
    """Every model version registered, oldest first (the last 100; their files stay in the store)."""
