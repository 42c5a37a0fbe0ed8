"""The preparation config: what the operator hands the program (`modelops.dev/prepare-config/v1`).

The operator builds it from a Dataset's spec (`modelops_operator.builders.dataset`); field names
and defaults are the spec's. Read from `--config FILE` or the `MODELOPS_PREPARE_CONFIG` variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from modelops_trainer.datasetfmt import AugmentationPolicy
from modelops_trainer.errors import ConfigError
from modelops_trainer.storage import check_scheme
from modelops_trainer.wire import WireModel as _Model

CONFIG_ENV = "MODELOPS_PREPARE_CONFIG"
PilMode = Literal["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"]


def _default_modes() -> list[PilMode]:
    return ["L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"]


class Source(_Model):
    """One place images come from."""

    uri: Annotated[str, Field(min_length=1), AfterValidator(check_scheme)]
    """A folder, an archive (.tar, .tar.gz, .tgz, .zip) or a manifest (.csv, .jsonl): a local path or a
    `file://`, `s3://` or `http(s)://` URI."""
    format: Literal["imageFolder", "archive", "csv", "jsonl"] = "imageFolder"
    """How to read `uri`."""
    uri_column: str = "uri"
    """Manifest column (or JSON key) holding each image's URI, absolute or relative to the manifest."""
    label_column: str | None = None
    """Manifest column holding each image's class (default `label`)."""


class Cleaning(_Model):
    min_width: int = Field(default=32, ge=1)
    min_height: int = Field(default=32, ge=1)
    allowed_modes: list[PilMode] = Field(default_factory=_default_modes)
    drop_duplicates: bool = True
    near_duplicate_distance: int = Field(default=4, ge=0, le=64)
    min_images_per_class: int = Field(default=1, ge=1)


class Preprocessing(_Model):
    image_size: int = Field(default=224, ge=8, le=4096)
    resize_mode: Literal["shorterSideCrop", "pad", "stretch"] = "shorterSideCrop"
    color_mode: Literal["RGB", "L"] = "RGB"
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(default=90, ge=1, le=100)
    shard_size: int = Field(default=1000, ge=1)


class Split(_Model):
    train: float = Field(default=0.8, gt=0, le=1)
    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split ratios train + val + test must sum to 1")
        return self


class Limits(_Model):
    """What the sources may make the program read and write; the Dataset spec's `limits`."""

    archive_max_bytes: int = Field(default=10 << 30, ge=1)
    """Bytes one archive may expand to on the scratch volume."""
    archive_max_members: int = Field(default=1_000_000, ge=1)
    """Members (files and folders) one archive may hold."""
    archive_max_ratio: int = Field(default=100, ge=1)
    """How many times its compressed size an archive may expand to (past the first 8 MiB)."""
    manifest_max_bytes: int = Field(default=256 << 20, ge=1)
    """Bytes of one CSV or JSONL manifest."""
    image_max_bytes: int = Field(default=64 << 20, ge=1)
    """Bytes of one image file; a larger one is dropped (reason `TooLarge`)."""


class DatasetRef(_Model):
    name: str
    namespace: str = "default"


class Output(_Model):
    uri: Annotated[str, Field(min_length=1), AfterValidator(check_scheme)]
    """Versions are written under this URI as `<uri>/<version>/`."""


class PrepareConfig(_Model):
    """Everything one preparation run needs."""

    api_version: Literal["modelops.dev/prepare-config/v1"] = "modelops.dev/prepare-config/v1"
    dataset: DatasetRef
    sources: list[Source] = Field(min_length=1)
    classes: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    cleaning: Cleaning = Field(default_factory=Cleaning)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    split: Split = Field(default_factory=Split)
    augmentation: AugmentationPolicy = Field(default_factory=AugmentationPolicy)
    limits: Limits = Field(default_factory=Limits)
    output: Output
    spec_hash: str | None = None
    workers: int = Field(default=0, ge=0)
    """Worker processes for decoding and encoding; 0 sizes the pool from the CPUs and memory the
    process may use (its cgroup's limits, else the machine's)."""


def load_config(path: Path | None) -> PrepareConfig:
    """The config from `path`, else from $MODELOPS_PREPARE_CONFIG; ConfigError lists every problem."""
    if path is not None:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the config file {path}: {e.strerror}") from e
    elif os.environ.get(CONFIG_ENV):
        text = os.environ[CONFIG_ENV]
    else:
        raise ConfigError(f"no config: pass --config FILE or set {CONFIG_ENV}")
    try:
        return PrepareConfig.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise ConfigError(f"the config is not JSON: {e}") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid config: {problems}") from e
