"""The `Dataset` kind: where images come from and how they become a versioned, split dataset."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelops_operator.api.common import (
    DIGEST_PATTERN,
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

DatasetPhase = Literal["Pending", "Running", "Ready", "Failed"]
PilMode = Literal["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"]


def _default_modes() -> list[PilMode]:
    return ["L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"]


class DatasetSource(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.format in ['csv', 'jsonl'] || !has(self.labelColumn)",
            "labelColumn applies to csv and jsonl manifests only",
            ".labelColumn",
        ),
    ),
):
    """One place images come from; several sources are merged into one dataset."""

    uri: StorageUri
    """An fsspec URI: a folder (`file:///data/pets`), an archive (`s3://bucket/pets.tar.gz`) or a manifest."""
    format: Literal["imageFolder", "archive", "csv", "jsonl"] = "imageFolder"
    """How to read the URI: `imageFolder` is `root/<class>/<image>`; `archive` is a tar or zip of one;
    `csv`/`jsonl` list `(uri, label)` pairs."""
    uri_column: str = Field(default="uri", min_length=1, max_length=63)
    """For csv/jsonl manifests: the column (or key) holding each image's URI."""
    label_column: str | None = Field(default=None, min_length=1, max_length=63)
    """For csv/jsonl manifests: the column (or key) holding each image's class; default `label`."""
    credentials_secret: str | None = Field(default=None, max_length=253)
    """A Secret in the same namespace whose keys are passed to the reader as environment variables
    (for example `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`). Only Secrets the
    operator's admin lists (chart `settings.datasetCredentialsSecrets`) may be named."""


class Cleaning(ApiModel):
    """Rules that drop images before preprocessing; every drop is counted by reason in status."""

    min_width: int = Field(default=32, ge=1, le=16384)
    """Images narrower than this many pixels are dropped (reason `TooSmall`)."""
    min_height: int = Field(default=32, ge=1, le=16384)
    """Images shorter than this many pixels are dropped (reason `TooSmall`)."""
    allowed_modes: list[PilMode] = Field(
        default_factory=_default_modes,
        min_length=1,
        max_length=11,
    )
    """Pillow image modes accepted before conversion; others are dropped (reason `UnsupportedMode`)."""
    drop_duplicates: bool = True
    """Drop byte-identical images (same content hash), keeping the first (reason `Duplicate`)."""
    near_duplicate_distance: int = Field(default=4, ge=0, le=64)
    """Hamming distance between perceptual hashes under which two images count as the same picture;
    one of them is dropped (reason `NearDuplicate`). 0 turns the check off."""
    min_images_per_class: int = Field(default=1, ge=1, le=1_000_000)
    """A class with fewer images left after cleaning fails the Dataset (reason `EmptyClass`)."""


class Preprocessing(ApiModel):
    """How every kept image is normalised and stored."""

    image_size: int = Field(default=224, ge=8, le=4096)
    """Side of the square output image, in pixels."""
    resize_mode: Literal["shorterSideCrop", "pad", "stretch"] = "shorterSideCrop"
    """`shorterSideCrop` scales the shorter side to imageSize and centre-crops; `pad` fits the whole
    image and pads; `stretch` ignores the aspect ratio."""
    color_mode: Literal["RGB", "L"] = "RGB"
    """The colour mode every image is converted to (after EXIF orientation is applied)."""
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    """The encoding of the stored images."""
    quality: int = Field(default=90, ge=1, le=100)
    """Encoder quality for jpeg and webp (ignored for png)."""
    shard_size: int = Field(default=1000, ge=1, le=100_000)
    """Images per shard file; a re-run reuses finished shards."""


class Split(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.train + self.val + self.test >= 0.999999 && self.train + self.val + self.test <= 1.000001",
            "split ratios train + val + test must sum to 1",
        ),
    ),
):
    """A deterministic, stratified train/val/test split: an image's split depends only on its
    content hash and the seed, so adding images never moves existing ones."""

    train: float = Field(default=0.8, gt=0, le=1)
    """Fraction of each class used for training."""
    val: float = Field(default=0.1, ge=0, lt=1)
    """Fraction of each class used for validation (model selection, early stopping)."""
    test: float = Field(default=0.1, ge=0, lt=1)
    """Fraction of each class held out for the final evaluation."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed mixed into the split hash; changing it reshuffles the split (and makes a new version)."""


class ColorJitter(ApiModel):
    """Random changes of brightness, contrast, saturation and hue (torchvision's ColorJitter)."""

    brightness: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter brightness (0 turns it off)."""
    contrast: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter contrast (0 turns it off)."""
    saturation: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter saturation (0 turns it off)."""
    hue: float = Field(default=0.0, ge=0, le=0.5)
    """How much to jitter hue (0 turns it off)."""


class Augmentation(
    ApiModel,
    json_schema_extra=validations(
        cel(
            "self.randomResizedCropScale.size() == 0 || "
            "(self.randomResizedCropScale.size() == 2 && "
            "self.randomResizedCropScale[0] < self.randomResizedCropScale[1])",
            "randomResizedCropScale must be [min, max] with min < max",
            ".randomResizedCropScale",
        ),
    ),
):
    """The augmentation policy, recorded with the dataset version and applied by the trainer at
    training time (never materialised)."""

    horizontal_flip: bool = True
    """Flip images left-right with probability 0.5."""
    vertical_flip: bool = False
    """Flip images upside down with probability 0.5 (for aerial or microscope images)."""
    random_resized_crop_scale: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.08, 1.0], max_length=2
    )
    """Area range `[min, max]` of random resized crops; empty turns cropping off."""
    rotation_degrees: float = Field(default=0.0, ge=0, le=180)
    """Rotate by a random angle in `[-d, d]` degrees."""
    color_jitter: ColorJitter = Field(default_factory=ColorJitter)
    """Colour jitter; all zero turns it off."""
    auto_augment: Literal["none", "randAugment", "trivialAugment", "autoAugment"] = "none"
    """An automatic augmentation policy applied after the others."""
    rand_augment_ops: int = Field(default=2, ge=1, le=10)
    """RandAugment: operations per image."""
    rand_augment_magnitude: int = Field(default=9, ge=0, le=30)
    """RandAugment: magnitude of each operation."""
    random_erasing: float = Field(default=0.0, ge=0, le=1)
    """Probability of erasing a random rectangle (cutout); 0 turns it off."""


class SourceLimits(ApiModel):
    """What the sources may make the preparation program read and write. Archives and manifests
    come from outside; these bounds make a hostile one fail the Dataset (reasons `ArchiveTooLarge`,
    `SourceTooLarge`) instead of the node. A change re-runs a preparation that failed on one."""

    archive_max_bytes: int = Field(default=10 << 30, ge=1 << 20, le=1 << 40)
    """Bytes one archive may expand to on the pod's scratch volume (default 10 GiB); the scratch
    volume's `sizeLimit` grows with it."""
    archive_max_members: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Files and folders one archive may hold."""
    archive_max_ratio: int = Field(default=100, ge=1, le=100_000)
    """How many times its compressed size an archive may expand to (checked past its first 8 MiB):
    images barely compress, a compression bomb expands a thousand times."""
    manifest_max_bytes: int = Field(default=256 << 20, ge=1, le=1 << 34)
    """Bytes of one CSV or JSONL manifest (default 256 MiB)."""
    image_max_bytes: int = Field(default=64 << 20, ge=1, le=1 << 32)
    """Bytes of one image file; a larger one is dropped unread (reason `TooLarge`)."""


class DatasetOutput(ApiModel, json_schema_extra=validations(mount_rule())):
    """Where dataset versions are written."""

    uri: StorageUri | None = None
    """Base URI under which each version is written as `<uri>/<name>/<version>/`; default: the
    operator's artifact store."""
    pvc: str | None = Field(default=None, max_length=253)
    """A PersistentVolumeClaim mounted into the preparation pod when `uri` is a `file://` path on it."""

    @model_validator(mode="after")
    def _not_over_a_system_folder(self) -> DatasetOutput:
        check_mount(self.uri, self.pvc)
        return self


class DatasetSpec(ApiModel):
    """What a Dataset declares. Any change makes a new dataset version; old versions stay."""

    sources: list[DatasetSource] = Field(min_length=1, max_length=32)
    """Where the images come from; several sources are merged."""
    classes: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list, max_length=10_000)
    """The classes to keep, in label order; empty keeps every class found, sorted by name."""
    cleaning: Cleaning = Field(default_factory=Cleaning)
    """Rules that drop broken, tiny and duplicate images."""
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    """Resize and encoding of the stored images."""
    split: Split = Field(default_factory=Split)
    """Train/val/test ratios and the split seed."""
    augmentation: Augmentation = Field(default_factory=Augmentation)
    """The augmentation policy the trainer applies."""
    output: DatasetOutput = Field(default_factory=DatasetOutput)
    """Where versions are written."""
    limits: SourceLimits = Field(default_factory=SourceLimits)
    """Bounds on what the sources may make the preparation program read and write."""
    resources: Resources = Field(default_factory=Resources)
    """CPU and memory of the preparation pod; unset ones default to requests `cpu: 1, memory: 1Gi`
    and limits `cpu: 4, memory: 4Gi`. The program sizes its worker pool from the limits."""
    placement: Placement = Field(default_factory=Placement)
    """Where the preparation pod may run."""
    pod_settings: PodSettings = Field(default_factory=PodSettings)
    """ServiceAccount, image pull Secrets, labels, annotations and environment of the preparation
    pod, over the operator-wide defaults. A change does not make a new dataset version."""
    active_deadline_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """The preparation Job fails (reason `DeadlineExceeded`) when it runs longer than this."""
    backoff_limit: int = Field(default=2, ge=0, le=20)
    """How many times a failed preparation pod is retried before the Dataset fails."""


class SplitCounts(ApiModel):
    """Image counts of one split."""

    total: int = Field(default=0, ge=0)
    """Images in this split."""
    per_class: dict[str, int] = Field(default_factory=dict)
    """Images in this split by class name."""


class DatasetStatus(StatusBase):
    """What the operator observed and produced."""

    phase: DatasetPhase = "Pending"
    """Pending, Running (the preparation Job is under way), Ready (a version exists) or Failed."""
    start_time: datetime | None = None
    """When the operator created the preparation Job of the current spec."""
    completion_time: datetime | None = None
    """When that Job's work ended (phase Ready or Failed); unset while it runs."""
    version: str | None = Field(default=None, max_length=64)
    """The current dataset version: a short content address of the manifest."""
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """SHA-256 of the version's manifest; the trainer checks it before use."""
    artifact_uri: str | None = Field(default=None, alias="artifactURI", max_length=2048)
    """Where the version's manifest and shards are."""
    spec_hash: str | None = Field(default=None, max_length=64)
    """Hash of the spec that produced `version`; an unchanged spec never re-runs preparation."""
    job_name: str | None = Field(default=None, max_length=253)
    """The preparation Job of the current spec."""
    images: int | None = Field(default=None, ge=0)
    """Images in the current version, all splits together."""
    classes: int | None = Field(default=None, ge=0)
    """Classes in the current version."""
    splits: dict[str, SplitCounts] = Field(default_factory=dict)
    """Counts per split (train, val, test) and class."""
    dropped: dict[str, int] = Field(default_factory=dict)
    """Images dropped by cleaning, by reason (Undecodable, Truncated, TooSmall, UnsupportedMode,
    Duplicate, NearDuplicate)."""
