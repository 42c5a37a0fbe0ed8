"""The three kinds as the API server knows them: names, printer columns, spec and status models.

Everything the CRD generator and the handlers need to know about a kind lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelops_operator.api.common import ApiModel, StatusBase, cel
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from modelops_operator.api.trainingrun import TrainingRunSpec, TrainingRunStatus

_READY = '.status.conditions[?(@.type=="Ready")].status'


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get` (an `additionalPrinterColumns` entry)."""

    name: str
    json_path: str
    type: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    """One custom resource kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[ApiModel]
    status: type[StatusBase]
    columns: tuple[PrinterColumn, ...]
    metadata_rules: tuple[dict[str, str], ...] = ()
    """CEL rules on the object's name (`self.metadata.name`), at the schema's root."""


def _ready() -> PrinterColumn:
    return PrinterColumn("Ready", _READY, "string", "Whether the object has reached its goal.")


def _reason() -> PrinterColumn:
    return PrinterColumn(
        "Reason", '.status.conditions[?(@.type=="Ready")].reason', "string", "Why Ready is what it is.", priority=1
    )


def _times() -> tuple[PrinterColumn, PrinterColumn]:
    return (
        PrinterColumn("Started", ".status.startTime", "date", "When the current work started.", priority=1),
        PrinterColumn("Completed", ".status.completionTime", "date", "When it ended.", priority=1),
    )


def _age() -> PrinterColumn:
    return PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since creation.")


DATASET = Kind(
    kind="Dataset",
    plural="datasets",
    singular="dataset",
    short_names=("dset",),
    description=(
        "A Dataset declares image sources, cleaning, preprocessing, a stratified split and an "
        "augmentation policy; the operator prepares a versioned, content-addressed dataset."
    ),
    spec=DatasetSpec,
    status=DatasetStatus,
    columns=(
        _ready(),
        PrinterColumn("Phase", ".status.phase", "string", "Pending, Running, Ready or Failed."),
        PrinterColumn("Version", ".status.version", "string", "The current dataset version."),
        PrinterColumn("Images", ".status.images", "integer", "Images in the current version."),
        PrinterColumn("Classes", ".status.classes", "integer", "Classes in the current version."),
        _reason(),
        *_times(),
        _age(),
    ),
)

TRAINING_RUN = Kind(
    kind="TrainingRun",
    plural="trainingruns",
    singular="trainingrun",
    short_names=("trun",),
    description=(
        "A TrainingRun trains an image classifier on a Dataset version with Kubeflow PyTorchJobs, "
        "optionally searching hyper-parameters, and registers the best model as ONNX."
    ),
    spec=TrainingRunSpec,
    status=TrainingRunStatus,
    columns=(
        _ready(),
        PrinterColumn("Phase", ".status.phase", "string", "Pending, WaitingForDataset, Running, ..."),
        PrinterColumn("Dataset", ".spec.datasetRef.name", "string", "The Dataset trained on."),
        PrinterColumn("Best", ".status.bestObjective", "number", "The best objective value so far."),
        PrinterColumn("Model", ".status.modelVersion", "integer", "The latest registered model version."),
        PrinterColumn("Progress", ".status.percentComplete", "integer", "Percent of the round's training done."),
        PrinterColumn("ETA", ".status.etaSeconds", "number", "Estimated seconds until training ends.", priority=1),
        PrinterColumn("Trials", ".status.progress", "string", "Trials done, the running ones' epoch.", priority=1),
        _reason(),
        *_times(),
        _age(),
    ),
)

MODEL_DEPLOYMENT = Kind(
    kind="ModelDeployment",
    plural="modeldeployments",
    singular="modeldeployment",
    short_names=("mdep",),
    description=(
        "A ModelDeployment serves a model with the inference server and rolls every new model out "
        "as a canary, promoted or rolled back on live metrics, with autoscaling and alert rules."
    ),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    columns=(
        _ready(),
        PrinterColumn("Phase", ".status.phase", "string", "Pending, Progressing, Paused, Healthy, ..."),
        PrinterColumn("Stable", ".status.stableVersion", "string", "The model version serving stable traffic."),
        PrinterColumn("Canary", ".status.canaryWeight", "integer", "Percent of traffic on the canary."),
        PrinterColumn("Replicas", ".status.readyReplicas", "integer", "Ready server pods."),
        PrinterColumn("Experiment", ".status.experiment.phase", "string", "The A/B experiment's phase."),
        PrinterColumn("Winner", ".status.experiment.winner", "string", "The A/B experiment's winner.", priority=1),
        PrinterColumn("Canary-Model", ".status.canary.version", "string", "The model being rolled out.", priority=1),
        PrinterColumn("URL", ".status.url", "string", "The in-cluster URL of the Service.", priority=1),
        _reason(),
        _age(),
    ),
    metadata_rules=(
        cel(
            "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "a ModelDeployment's name is also its Service's name: a DNS label of at most 63 characters "
            "(lowercase letters, digits and '-', starting with a letter, no '.')",
        ),
    ),
)

KINDS: tuple[Kind, ...] = (DATASET, TRAINING_RUN, MODEL_DEPLOYMENT)
