"""KServe's V1 data plane for an image classifier: ``POST /v1/models/{name}:predict`` with
``{"instances": [...]}`` answered by ``{"predictions": [...]}``, one prediction per instance.

KServe's V1 protocol is TensorFlow Serving's REST API, which fixes the envelope but not what an
instance of an image model is. Each instance is taken in the forms that TF Serving's, KServe's and
TorchServe's examples send, and nothing else:

- ``{"b64": "<base64>"}``: TF Serving's encoding of a binary value, the image's file bytes;
- an object with one such value under any key, e.g. ``{"image_bytes": {"b64": "..."}, "key": "1"}``
  (KServe's image transformer example; the other keys are not the image and are left alone);
- ``{"data": "<base64>"}`` (TorchServe's handlers behind KServe) or a bare base64 string;
- a nested list of numbers of the model's input shape ``[C, S, S]``: the normalised tensor, as
  the Open Inference Protocol's FP32 input takes it.

``{"inputs": [...]}`` (TF Serving's columnar form, a list) is the same as ``instances``. Each
prediction is the instance's top-k labels as ``:classify`` answers them, ``[{"label", "index",
"score"}, ...]`` (``?top_k=``, default 5). Parsed in the worker processes, like every body.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelops_server.errors import RequestError
from modelops_server.modelcard import ModelCard
from modelops_server.protocol import decode_base64, encode_classification, json_numbers, json_object


@dataclass
class PredictRequest:
    """The instances in order: each the bytes of an image file or a normalised [C, S, S] tensor."""

    instances: list[bytes | npt.NDArray[np.float32]] = field(default_factory=list)

    @property
    def images(self) -> list[bytes]:
        return [x for x in self.instances if isinstance(x, bytes)]


def parse_request(body: bytes, card: ModelCard, *, max_rows: int) -> PredictRequest:
    """The request's instances, checked against the model; :class:`RequestError` on any fault."""
    doc = json_object(body, 'send a JSON object {"instances": [...]}')
    keys = [k for k in ("instances", "inputs") if k in doc]
    if len(keys) != 1:
        raise RequestError('the body must have "instances" (or "inputs"), a list with one entry per image')
    instances = doc[keys[0]]
    if not isinstance(instances, list):
        raise RequestError(f'"{keys[0]}" must be a list with one entry per image; got {type(instances).__name__}')
    if not instances:
        raise RequestError(f'"{keys[0]}" is empty: send at least one instance')
    if len(instances) > max_rows:
        raise RequestError(f"the request has {len(instances)} instances; at most {max_rows} are accepted in one")
    shape = (card.input.channels, card.input.image_size, card.input.image_size)
    return PredictRequest([_instance(i, x, shape) for i, x in enumerate(instances)])


def _instance(i: int, x: Any, shape: tuple[int, int, int]) -> bytes | npt.NDArray[np.float32]:
    if isinstance(x, list):
        return _tensor(i, x, shape)
    if isinstance(x, str):
        return _b64(i, x)
    if not isinstance(x, dict):
        raise RequestError(f"instance {i}: {_FORMS}; got {type(x).__name__}")
    if "b64" in x:
        return _b64(i, x["b64"])
    found = [k for k, v in x.items() if isinstance(v, dict) and "b64" in v]
    if len(found) > 1:
        raise RequestError(f"instance {i}: {len(found)} binary values ({', '.join(map(repr, found))}); send one image")
    if found:
        return _b64(i, x[found[0]]["b64"])
    if isinstance(x.get("data"), str):
        return _b64(i, x["data"])
    raise RequestError(f"instance {i}: no image in the object (keys {sorted(x)}): {_FORMS}")


_FORMS = (
    'an instance is an image as {"b64": "<base64>"}, {"<key>": {"b64": "<base64>"}}, {"data": "<base64>"} '
    "or a base64 string, or the normalised tensor as a nested list"
)


def _b64(i: int, text: Any) -> bytes:
    if not isinstance(text, str):
        raise RequestError(f"instance {i}: the image must be a base64 string; got {type(text).__name__}")
    try:
        data = decode_base64(text)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"instance {i}: the image is not valid base64: {exc}") from exc
    if not data:
        raise RequestError(f"instance {i}: the image is empty")
    return data


def _tensor(i: int, x: list[Any], shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    # Nested as [C, S, S] exactly: TF clients' [S, S, C] has as many numbers, and reshaped it would
    # be answered, wrongly, without a word.
    tensor: npt.NDArray[np.float32] = json_numbers(x, f"instance {i}", list(shape), exact=True).astype(np.float32)
    if not np.isfinite(tensor).all():
        raise RequestError(f"instance {i}: a tensor must hold finite numbers")
    return tensor


def encode_response(logits: npt.NDArray[np.float32], card: ModelCard, name: str, version: str, top_k: int) -> bytes:
    """``{"predictions": [[{label, index, score}, ...], ...], "model_name", "model_version"}``."""
    rows = encode_classification(logits, card, name, version, top_k)
    return orjson.dumps(
        {"predictions": [row["predictions"] for row in rows], "model_name": name, "model_version": version}
    )
