"""The training config: the contract between the operator and `python -m modelops_trainer.train`.

The operator builds one `TrainConfig` per trial from a TrainingRun (and its Dataset's Ready
version) and hands it to the PyTorchJob as JSON; the program validates it here and refuses it,
listing every problem by its camelCase path, before touching data or devices. The format is
versioned by `apiVersion` (`modelops.dev/train-config/v1`); a new incompatible shape gets a new
version, never a silent change.

`hyperparameters` has exactly the field names, bounds and defaults of the operator's
`Hyperparameters` (a contract test compares them). A search trial carries its sampled values in
`trial.parameters` (as strings, like the TrainingRun's status); `effective()` applies them over
`hyperparameters` and `model.architecture`, so one config describes one trial completely.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import AfterValidator, Field, ValidationError, model_validator

from modelops_trainer import storage
from modelops_trainer.errors import ConfigError
from modelops_trainer.wire import WireModel as _Model

API_VERSION = "modelops.dev/train-config/v1"
URI_PATTERN = r"^([a-z][a-z0-9+.-]*://.+|/.*)$"
#: A URI the program reads or writes: an absolute path, or a URI of a scheme the image supports.
StorageUri = Annotated[str, Field(pattern=URI_PATTERN, max_length=2048), AfterValidator(storage.check_scheme)]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Metrics a run can be judged by (per epoch, on the validation split).
ObjectiveMetric = Literal["val_accuracy", "val_top5", "val_loss"]
#: What a search trial may vary: a field of `hyperparameters`, or `architecture`.
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
#: The ONNX opsets the exporter (torch.onnx with onnxscript) writes and the parity check runs.
MIN_OPSET, MAX_OPSET = 18, 23


@cache
def available_architectures() -> tuple[str, ...]:
    """torchvision's image-classification models, by name."""
    import torchvision  # type: ignore[import-untyped]  # noqa: PLC0415 - heavy; only needed when validating an architecture

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


class DatasetInput(_Model):
    """The dataset version to train on."""

    uri: StorageUri
    """The version's folder (holding `manifest.json` and the shards), as an fsspec URI."""
    digest: str = Field(pattern=DIGEST_PATTERN)
    """`sha256:` of `manifest.json`; the run refuses a manifest with another digest."""
    cache_dir: str | None = Field(default=None, max_length=4096)
    """Local folder for verified copies of remote shards; default `$MODELOPS_CACHE_DIR` or a temp folder."""


class ModelConfig(_Model):
    """The network to train."""

    architecture: str = Field(default="resnet18", max_length=63)
    """A torchvision classification model (resnet18/34/50, mobilenet_v3_small/large,
    efficientnet_b0/b1, convnext_tiny, vit_b_16, ...); its classifier is sized to the classes."""
    weights_uri: StorageUri | None = None
    """Initial weights (a state dict saved with torch.save, or a checkpoint of this program);
    unset trains from scratch. A classifier of another size is replaced; nothing is downloaded
    from a model hub."""
    weights_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 the weights file must have; required with `weightsUri`."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.architecture not in available_architectures():
            near = [a for a in available_architectures() if a.startswith(self.architecture[:4])][:8]
            hint = f" (similar: {', '.join(near)})" if near else ""
            raise ValueError(f"unknown architecture {self.architecture!r}{hint}; see torchvision.models.list_models()")
        if (self.weights_uri is None) != (self.weights_digest is None):
            raise ValueError("weightsUri and weightsDigest go together: every artifact is checked against its digest")
        return self


class Hyperparameters(_Model):
    """Training hyper-parameters (names, bounds and defaults of the operator's `Hyperparameters`)."""

    epochs: int = Field(default=10, ge=1, le=10_000)
    """Passes over the training split."""
    batch_size: int = Field(default=64, ge=1, le=65_536)
    """Images per micro-batch on each process (global batch = batchSize × processes × gradAccumulationSteps)."""
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
    """`auto`: bf16 on GPUs that support it, fp16 with loss scaling on others; on CPUs fp32 or bf16,
    whichever a few timed steps of the model at start-up find faster (fp32 without native bf16).
    `bf16` on a CPU uses bf16 autocast (fast with AMX, not always with AVX-512 BF16 alone)."""
    channels_last: bool = True
    """Use the channels-last memory format (faster convolutions on tensor cores and oneDNN)."""
    compile: bool = False
    """Compile the model with `torch.compile` (slower start, faster steps)."""
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    """Keep an exponential moving average of the weights with this decay (evaluated and exported
    instead of the raw weights); 0 turns it off."""
    early_stopping_patience: int = Field(default=0, ge=0, le=10_000)
    """Stop after this many epochs without improvement of the objective; 0 turns it off."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed of every random generator, for reproducible runs."""


class OutputConfig(_Model):
    """Where the run writes its results."""

    uri: StorageUri
    """A folder (fsspec URI) for checkpoints, metrics, the ONNX model and its card. A rerun with
    the same config resumes from the checkpoint found there."""


class Checkpointing(_Model):
    """Checkpoints for resumption after preemption (one is always written on SIGTERM)."""

    every_epochs: int = Field(default=1, ge=1, le=10_000)
    """Write a checkpoint every this many epochs."""
    every_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Also write one every this many optimizer steps; 0 turns step checkpoints off."""
    resume: bool = True
    """Resume from `<output>/checkpoints/last.pt` when it exists."""


class Objective(_Model):
    """What decides the best checkpoint, early stopping and a trial's reported value."""

    metric: ObjectiveMetric = "val_accuracy"
    """A per-epoch validation metric: val_accuracy (top-1), val_top5 or val_loss."""
    direction: Literal["maximize", "minimize"] | None = None
    """Whether bigger or smaller is better; default minimize for val_loss, maximize otherwise."""

    @property
    def maximize(self) -> bool:
        """Whether bigger is better."""
        if self.direction is None:
            return self.metric != "val_loss"
        return self.direction == "maximize"


class ExportConfig(_Model):
    """ONNX export of the best checkpoint and its parity check against ONNX Runtime."""

    opset: int = Field(default=18, ge=MIN_OPSET, le=MAX_OPSET)
    """The ONNX opset written (and recorded in the model card)."""
    parity_samples: int = Field(default=64, ge=1, le=4096)
    """Validation images (test images when there is no val split) run through both runtimes."""
    parity_atol: float = Field(default=1e-4, ge=0)
    """Absolute tolerance on the logits: |onnx - torch| <= atol + rtol × |torch| for every logit."""
    parity_rtol: float = Field(default=1e-3, ge=0)
    """Relative tolerance on the logits."""


class Trial(_Model):
    """One trial of a hyper-parameter search."""

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    """The trial's name (its PyTorchJob); recorded in the model card."""
    parameters: dict[SearchableName, str] = Field(default_factory=dict)
    """The values this trial sets, as strings (`{"learningRate": "0.002"}`); they override
    `hyperparameters` and `model.architecture`."""


class Lineage(_Model):
    """Names recorded in the model card."""

    dataset: str | None = Field(default=None, max_length=253)
    """The Dataset's name; default the manifest's name."""
    training_run: str | None = Field(default=None, max_length=253)
    """The TrainingRun's name; also the model card's `name`."""


class DataLoaderConfig(_Model):
    """How images are decoded and fed to the model."""

    workers: int | None = Field(default=None, ge=0, le=64)
    """Decoding processes per training process; default on GPUs the CPUs per process minus one (at
    most 8), on CPUs at most 2 (decoding competes with training for the same cores)."""
    prefetch_factor: int = Field(default=4, ge=1, le=64)
    """Batches each worker prepares ahead."""


class LoggingConfig(_Model):
    """What the run prints."""

    format: Literal["auto", "json", "text"] = "auto"
    """`text` with progress bars on a terminal, `json` lines otherwise (`auto`)."""
    every_steps: int = Field(default=50, ge=1)
    """Log training progress every this many optimizer steps."""


class TrainConfig(_Model):
    """Everything one training run (one trial) needs."""

    api_version: Literal["modelops.dev/train-config/v1"]
    """Always `modelops.dev/train-config/v1`."""
    dataset: DatasetInput
    """The dataset version."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The network."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Training hyper-parameters."""
    output: OutputConfig
    """Where results go."""
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    """Checkpoint frequency."""
    objective: Objective = Field(default_factory=Objective)
    """The metric that picks the best checkpoint."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """ONNX export and parity check."""
    trial: Trial | None = None
    """Set when this run is one trial of a search."""
    lineage: Lineage = Field(default_factory=Lineage)
    """Names for the model card."""
    data_loader: DataLoaderConfig = Field(default_factory=DataLoaderConfig)
    """Input pipeline."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses the GPU of this process (`LOCAL_RANK`) when there is one, else the CPU."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Log format and frequency."""
    termination_message_path: str = Field(default="/dev/termination-log", max_length=4096)
    """Where the JSON summary (under 4096 bytes) goes for the operator; empty turns it off."""

    @model_validator(mode="after")
    def _check_trial(self) -> Self:
        if self.trial is not None:
            self._apply_trial()  # raises ValueError naming the bad parameter
        return self

    def _apply_trial(self) -> tuple[ModelConfig, Hyperparameters]:
        params = dict(self.trial.parameters) if self.trial else {}
        architecture = params.pop("architecture", None)
        problems = []
        model = self.model
        if architecture is not None:
            try:
                model = ModelConfig.model_validate({**model.model_dump(by_alias=True), "architecture": architecture})
            except ValidationError as exc:
                problems.append(_problems(exc, fallback="architecture"))
        merged: dict[str, Any] = self.hyperparameters.model_dump(by_alias=True)
        merged.update({str(k): v for k, v in params.items()})
        try:
            hyper = Hyperparameters.model_validate(merged)
        except ValidationError as exc:
            problems.append(_problems(exc))
        if problems:
            # Raised in a model validator, where pydantic knows no path and the input is the whole
            # document: the message names the parameters itself (see `_problems`).
            raise ValueError(f"trial.parameters: {'; '.join(problems)}")
        return model, hyper

    def effective(self) -> TrainConfig:
        """This config with the trial's parameters applied (itself when there is no trial)."""
        if self.trial is None or not self.trial.parameters:
            return self
        model, hyper = self._apply_trial()
        return self.model_copy(update={"model": model, "hyperparameters": hyper})

    def fingerprint(self) -> str:
        """A hash of what determines the training trajectory (data, network, hyper-parameters).

        A checkpoint records it; resuming under a config with another fingerprint is refused
        rather than silently mixing two runs. Output, logging and loader settings do not count.
        """
        eff = self.effective()
        doc = {
            "dataset": eff.dataset.digest,
            "model": eff.model.model_dump(by_alias=True),
            "hyperparameters": eff.hyperparameters.model_dump(by_alias=True),
            "objective": eff.objective.model_dump(by_alias=True),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The config as JSON (camelCase), as the operator writes it."""
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True)


def _problems(exc: ValidationError, *, fallback: str = "") -> str:
    """Each error as `path: what is wrong (got …)`. An error of a whole model (no path) is its
    message alone, prefixed by `fallback` when given: its input is the whole model, and its message
    names what is wrong (the trial's parameters, or the architecture)."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            out.append(f"{fallback}: {msg}" if fallback else msg)
        elif err["type"] in {"missing", "extra_forbidden"}:
            out.append(f"{loc}: {msg}")
        else:
            out.append(f"{loc}: {msg} (got {err.get('input')!r:.80})")
    return "; ".join(out)


def parse_config(text: str | bytes, *, source: str = "config") -> TrainConfig:
    """Validate a JSON config; ConfigError lists every problem as `path: what is wrong (got …)`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source} must be a JSON object, not {type(doc).__name__}")
    version = doc.get("apiVersion")
    if version != API_VERSION:
        raise ConfigError(
            f"{source}: apiVersion must be {API_VERSION!r} (got {version!r}); this trainer reads only that version"
        )
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid: {_problems(exc)}") from None


def load_config(uri: str) -> TrainConfig:
    """Read and validate the config at a path or fsspec URI."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config {uri}: {exc}") from None
    return parse_config(data, source=uri)
