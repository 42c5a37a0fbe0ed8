"""The model card (``modelops.modelcard/v1``, docs/contracts.md) and fetching a verified model.

The trainer writes ``model.onnx`` and ``model.onnx.card.json`` beside it; the server reads both
from a local path or a ``file://``, ``s3://`` or ``http(s)://`` URI (`modelops_server.remote`), checks
the ONNX file's SHA-256 against the card and, when given, the digest the ModelDeployment pinned,
and only then copies it to a local file that the worker processes open. Nothing unverified ever
reaches ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelops_server.errors import DigestMismatch, ModelLoadError
from modelops_server.remote import UnsupportedScheme, check_scheme, open_uri

CARD_FORMAT = "modelops.modelcard/v1"
#: A model card is a few KiB; one larger than this is refused unread past it.
CARD_MAX_BYTES = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class _Card(BaseModel):
    # The card is the trainer's contract: unknown fields are tolerated (the trainer may add some),
    # known ones are checked strictly.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class InputSpec(_Card):
    """How an image becomes the model's input tensor."""

    name: str
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    image_size: int = Field(alias="imageSize", gt=0, le=4096)
    color_mode: Literal["RGB", "L"] = Field(alias="colorMode")
    resize_mode: Literal["shorterSideCrop", "pad", "stretch"] = Field(alias="resizeMode")
    mean: list[float]
    std: list[float]

    @property
    def channels(self) -> int:
        """3 for RGB, 1 for L."""
        return 3 if self.color_mode == "RGB" else 1

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("std values must be positive")
        return value


class OutputSpec(_Card):
    """The model's output: one row of logits per image, in ``classes`` order."""

    name: str
    kind: Literal["logits"] = "logits"


class OnnxSpec(_Card):
    """The ONNX file beside the card and its digest."""

    file: str
    digest: str
    opset: int | None = None
    dynamic_batch: bool = Field(default=True, alias="dynamicBatch")

    @field_validator("digest")
    @classmethod
    def _digest_format(cls, value: str) -> str:
        if not _DIGEST.match(value):
            raise ValueError("digest must be sha256:<64 lowercase hex>")
        return value


class ModelCard(_Card):
    """``model.onnx.card.json``: classes, input preprocessing, output, digest, metrics, lineage."""

    format: Literal["modelops.modelcard/v1"]
    name: str
    architecture: str = ""
    classes: list[str] = Field(min_length=1)
    input: InputSpec
    output: OutputSpec
    onnx: OnnxSpec
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, object] = Field(default_factory=dict)
    created_at: str | None = Field(default=None, alias="createdAt")


@dataclass(frozen=True)
class ModelArtifact:
    """A model fetched and verified: its card, the local copy of the ONNX file, and facts about it.

    ``key`` identifies this exact model across processes (name, version and digest), so that a
    hot swap can hold two versions of the same model side by side.
    """

    card: ModelCard
    local_path: str
    digest: str
    version: str
    name: str
    source_uri: str
    fetch_seconds: float

    @property
    def key(self) -> str:
        """``name@version#digest-prefix``: unique per loaded model."""
        return f"{self.name}@{self.version}#{self.digest[7:19]}"


def card_uri(model_uri: str) -> str:
    """The card's URI for a model URI: ``<uri>.card.json`` beside the ONNX file."""
    return f"{model_uri}.card.json"


def fetch_model(
    uri: str,
    *,
    expected_digest: str | None = None,
    version: str | None = None,
    name: str | None = None,
    cache_dir: str | None = None,
) -> ModelArtifact:
    """Fetch ``uri`` and its card, verify the SHA-256, and write a local copy for the workers.

    ``expected_digest`` (``sha256:<hex>``) is the digest the deployment pinned; the card's own
    digest is always checked as well. ``version`` defaults to the digest's first 12 hex digits,
    ``name`` to the card's name. Raises :class:`DigestMismatch` or :class:`ModelLoadError`.
    """
    started = time.monotonic()
    if expected_digest is not None and not _DIGEST.match(expected_digest):
        raise ModelLoadError(f"expected digest {expected_digest!r} is not sha256:<64 lowercase hex>")
    try:
        check_scheme(uri)
    except UnsupportedScheme as exc:
        raise ModelLoadError(f"cannot load {uri}: {exc}") from exc
    try:
        with open_uri(card_uri(uri)) as f:
            card_bytes = f.read(CARD_MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the model card {card_uri(uri)}: {exc}") from exc
    if len(card_bytes) > CARD_MAX_BYTES:
        raise ModelLoadError(f"the model card {card_uri(uri)} is larger than {CARD_MAX_BYTES} bytes; refusing it")
    try:
        card = ModelCard.model_validate_json(card_bytes)
    except ValidationError as exc:  # its fields and reasons, never the fetched text (it may be anyone's)
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(card)'}: {e['msg']}" for e in exc.errors(include_input=False)[:5]
        )
        raise ModelLoadError(f"invalid model card {card_uri(uri)}: {problems}") from exc
    if len(card.input.mean) != card.input.channels or len(card.input.std) != card.input.channels:
        raise ModelLoadError(f"model card {card_uri(uri)}: mean and std need {card.input.channels} values")

    cache = cache_dir or tempfile.gettempdir()
    os.makedirs(cache, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="model-", suffix=".onnx.part", dir=cache)
    sha = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, open_uri(uri) as src:
            while chunk := src.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
    except (OSError, ValueError) as exc:
        os.unlink(tmp_path)
        raise ModelLoadError(f"cannot read the model {uri}: {exc}") from exc
    digest = "sha256:" + sha.hexdigest()
    for what, want in (("the model card", card.onnx.digest), ("the deployment", expected_digest)):
        if want is not None and digest != want:
            os.unlink(tmp_path)
            raise DigestMismatch(f"{uri} has digest {digest}, but {what} expects {want}; refusing to load it")
    local_path = os.path.join(cache, f"{digest[7:]}.onnx")
    os.replace(tmp_path, local_path)
    return ModelArtifact(
        card=card,
        local_path=local_path,
        digest=digest,
        version=version or digest[7:19],
        name=name or card.name,
        source_uri=uri,
        fetch_seconds=time.monotonic() - started,
    )
