"""The model card (`modelops.modelcard/v1`, docs/contracts.md) written beside every `model.onnx`.

It tells a server everything it needs to use the file without knowing how it was trained: the
classes in output order, the input tensor and how to make it from an image (size, colour mode,
resize mode, mean and std), the output, the ONNX file's digest and opset; and, for people,
metrics and lineage. The shape is fixed by the contract; the server validates it with its own
model, so nothing here may add fields.
"""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

FORMAT = "modelops.modelcard/v1"
CARD_SUFFIX = ".card.json"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CardInput(_Model):
    """The input tensor and the preprocessing that produces it."""

    name: str = "input"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    image_size: int = Field(ge=1)
    color_mode: Literal["RGB", "L"]
    resize_mode: Literal["shorterSideCrop", "pad", "stretch"]
    mean: list[float]
    std: list[float]


class CardOutput(_Model):
    """The output tensor."""

    name: str = "logits"
    kind: Literal["logits"] = "logits"


class CardOnnx(_Model):
    """The ONNX file."""

    file: str = "model.onnx"
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    opset: int
    dynamic_batch: bool = True


class CardLineage(_Model):
    """Where the model comes from."""

    dataset: str
    dataset_version: str
    dataset_digest: str
    training_run: str
    trial: str
    parameters: dict[str, str] = Field(default_factory=dict)
    code_version: str


class ModelCard(_Model):
    """`model.onnx.card.json`."""

    format: Literal["modelops.modelcard/v1"] = "modelops.modelcard/v1"
    name: str
    architecture: str
    classes: list[str]
    input: CardInput
    output: CardOutput = Field(default_factory=CardOutput)
    onnx: CardOnnx
    metrics: dict[str, float]
    lineage: CardLineage
    created_at: str = Field(default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_bytes(self) -> bytes:
        """The card as written (camelCase, indented)."""
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()
