"""The Open Inference Protocol's gRPC format: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

Runs in the worker processes, like ``protocol`` for REST: the front end hands over the serialized
request untouched. A request becomes the same :class:`~modelops_server.protocol.InferenceRequest`
a REST body becomes and goes through the same checks (``protocol.check_request``), so a bad tensor
gets the same words over both; the front end maps the error to a gRPC status
(``errors.GRPC_STATUS``). An input's elements come from ``raw_input_contents`` (one entry per
input, laid out as the REST binary extension's) or from its typed ``contents``.

The response carries its outputs in ``raw_output_contents`` when the request sent raw inputs, set
``binary_data_output`` or asked for ``binary_data`` on an output (tritonclient does all three);
otherwise in typed ``contents`` (``fp32_contents``, and ``bytes_contents`` for classification).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from pydantic import ValidationError

from modelops_server import protocol
from modelops_server.errors import RequestError
from modelops_server.modelcard import ModelCard
from modelops_server.proto import grpc_predict_v2_pb2 as pb

_NUMERIC_CONTENTS = (
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bool_contents",
)


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """An ``InferParameter`` map as plain values (what a REST body's ``parameters`` holds)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which is not None else None
    return out


def parse_request(payload: bytes, card: ModelCard, *, max_rows: int) -> protocol.ParsedRequest:
    """Parse and check a serialized ``ModelInferRequest``; :class:`RequestError` on any fault."""
    try:
        msg = pb.ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise RequestError(f"malformed ModelInferRequest: {exc}") from exc
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise RequestError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; send one per input"
        )
    inputs = []
    for tensor in msg.inputs:
        data = _contents(tensor)
        if raw and data is not None:
            raise RequestError(f"input {tensor.name!r} has contents although the request uses raw_input_contents")
        inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": parameters(tensor.parameters) or None,
                "data": data,
            }
        )
    doc: dict[str, Any] = {
        "model_name": msg.model_name or None,
        "model_version": msg.model_version or None,
        "id": msg.id or None,
        "parameters": parameters(msg.parameters) or None,
        "inputs": inputs,
        "outputs": [{"name": o.name, "parameters": parameters(o.parameters) or None} for o in msg.outputs] or None,
    }
    try:
        request = protocol.InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        raise RequestError(f"invalid inference request: {protocol.first_errors(exc)}") from exc
    by_name = {t.name: i for i, t in enumerate(msg.inputs)}

    def chunk(tensor: protocol.RequestInput) -> memoryview | None:
        if not raw:
            if tensor.data is None:
                raise RequestError(f"input {tensor.name!r} has no contents and the request no raw_input_contents")
            return None
        return memoryview(raw[by_name[tensor.name]])

    return protocol.check_request(request, card, max_rows=max_rows, chunk=chunk, binary_output=bool(raw))


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> npt.NDArray[Any] | list[bytes] | None:
    """The elements of an input's typed contents, or None when it has none."""
    if not tensor.HasField("contents"):
        return None
    contents = tensor.contents
    filled = [f.name for f, _ in contents.ListFields()]
    if not filled:
        return None
    if len(filled) > 1:
        raise RequestError(f"input {tensor.name!r} has elements in {' and '.join(filled)}; use one contents field")
    if filled[0] == "bytes_contents":
        return list(contents.bytes_contents)
    assert filled[0] in _NUMERIC_CONTENTS
    return np.asarray(getattr(contents, filled[0]))


def encode_response(
    parsed: protocol.ParsedRequest, logits: npt.NDArray[np.float32], card: ModelCard, name: str, version: str
) -> bytes:
    """The serialized ``ModelInferResponse`` for `logits` (the batch rows of this request)."""
    outputs = protocol.select_outputs(parsed, logits, card)
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=parsed.request_id or "")
    raw = any(out.binary for out in outputs)
    for out in outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if raw:
            response.raw_output_contents.append(out.raw())
        elif out.values is not None:
            tensor.contents.fp32_contents.extend(out.values.ravel().tolist())
        else:
            tensor.contents.bytes_contents.extend(out.labels)
    encoded: bytes = response.SerializeToString()
    return encoded
