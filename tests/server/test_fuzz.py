"""Fuzzing the request parsers (hypothesis) in process, and random bodies against a live server.

The property: whatever the bytes, parsing either succeeds or raises a ``RequestError`` (a 4xx);
never another exception (a 500), never a crash.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import struct

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modelops_server import errors, protocol
from modelops_server.imaging import Preprocessor
from modelops_server.modelcard import ModelCard
from tests.support.serving import CLASSES, MEAN, STD, ServerProcess, image_bytes

CARD = ModelCard.model_validate(
    {
        "format": "modelops.modelcard/v1",
        "name": "fuzz",
        "classes": CLASSES,
        "input": {
            "name": "input",
            "imageSize": 8,
            "colorMode": "RGB",
            "resizeMode": "shorterSideCrop",
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits"},
        "onnx": {"file": "model.onnx", "digest": "sha256:" + "a" * 64},
    }
)
PRE = Preprocessor(CARD.input, max_pixels=1_000_000)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seed_images() -> list[bytes]:
    img = Image.fromarray(__import__("numpy").random.default_rng(0).integers(0, 255, (24, 20, 3), dtype="uint8"))
    out = []
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "image", "pixels", "other", ""]),
        "shape": st.lists(st.integers(-2, 9), max_size=5),
        "datatype": st.sampled_from(["FP32", "UINT8", "BYTES", "INT64", "fp32"]),
    },
    optional={
        "data": json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 500)}),
    },
)
requests_json = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3)},
    optional={
        "id": st.text(max_size=5),
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["logits", "probabilities", "x"])},
                optional={
                    "parameters": st.dictionaries(st.sampled_from(["classification", "binary_data"]), json_values)
                },
            ),
            max_size=2,
        ),
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values),
    },
)


def _parse_only_request_errors(body: bytes, header: int | None, content_type: str = "") -> None:
    try:
        parsed = protocol.parse_request(body, header, CARD, max_rows=16, content_type=content_type)
    except errors.RequestError:
        return
    assert parsed.rows > 0
    for data in parsed.images:  # go on through decoding, as a worker would
        with contextlib.suppress(errors.RequestError):
            PRE.image_row(data)


@FUZZ
@given(st.binary(max_size=2000), st.one_of(st.none(), st.integers(-5, 2100)))
def test_parse_arbitrary_bytes(body: bytes, header: int | None):
    _parse_only_request_errors(body, header)


@FUZZ
@given(requests_json, st.binary(max_size=300))
def test_parse_structured_requests(doc: dict, binary: bytes):
    body = json.dumps(doc).encode()
    _parse_only_request_errors(body, None)
    _parse_only_request_errors(body + binary, len(body))


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=4), st.integers(0, 8))
def test_parse_binary_bytes_tensors(elements: list[bytes], cut: int):
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    raw = raw[: max(0, len(raw) - cut)]
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(elements)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    header = json.dumps(doc).encode()
    _parse_only_request_errors(header + raw, len(header), "application/octet-stream")


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.integers(0, 400),
)
def test_decode_mutated_images(seed: bytes, flips: list[tuple[int, int]], truncate: int):
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(0, len(data) - truncate)]
    try:
        row = PRE.image_row(bytes(data))
    except errors.RequestError:
        return
    assert row.shape == (3, 8, 8)


def test_random_bodies_against_the_live_server(server: ServerProcess):
    """A bounded number of random and mutated requests over HTTP: 200 or 4xx, never a 5xx."""
    rng = random.Random(1234)
    url = f"{server.url}/v2/models/tiny-cnn/infer"
    classify = f"{server.url}/v1/models/tiny-cnn:classify"
    valid = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(image_bytes(3)).decode()],
                }
            ]
        }
    ).encode()
    statuses = []
    with requests.Session() as session:
        for i in range(150):
            body = bytearray(valid)
            for _ in range(rng.randint(0, 6)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            if i % 3 == 0:
                r = session.post(url, data=bytes(body), headers={"Content-Type": "application/json"}, timeout=30)
            else:
                img = bytearray(rng.choice(SEEDS))
                for _ in range(rng.randint(0, 8)):
                    img[rng.randrange(len(img))] = rng.randrange(256)
                r = session.post(
                    classify,
                    data=bytes(img[: rng.randint(1, len(img))]),
                    headers={"Content-Type": "image/png"},
                    timeout=30,
                )
            statuses.append(r.status_code)
            assert r.status_code < 500, r.text
            assert r.status_code == 200 or "error" in r.json()
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "chunk", [b"{", b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["']
)
def test_truncated_bodies_over_http(server: ServerProcess, chunk: bytes):
    r = requests.post(
        f"{server.url}/v2/models/tiny-cnn/infer", data=chunk, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def _grpc_only_request_errors(payload: bytes) -> None:
    """The gRPC format: parse (and encode an answer, as a worker would) or raise RequestError."""
    import numpy as np  # noqa: PLC0415

    from modelops_server import grpc_protocol  # noqa: PLC0415
    from modelops_server.grpc_server import route  # noqa: PLC0415

    with contextlib.suppress(errors.RequestError):
        route(payload)
    try:
        parsed = grpc_protocol.parse_request(payload, CARD, max_rows=16)
        grpc_protocol.encode_response(parsed, np.zeros((parsed.rows, len(CLASSES)), np.float32), CARD, "fuzz", "v1")
    except errors.RequestError:
        return
    assert parsed.rows > 0


@FUZZ
@given(st.binary(max_size=2000))
def test_grpc_parse_arbitrary_bytes(payload: bytes):
    _grpc_only_request_errors(payload)


grpc_values = st.one_of(
    st.fixed_dictionaries({"bool_param": st.booleans()}),
    st.fixed_dictionaries({"int64_param": st.integers(-(2**40), 2**40)}),
    st.fixed_dictionaries({"string_param": st.text(max_size=8)}),
    st.fixed_dictionaries({"double_param": st.floats(allow_nan=True)}),
)
grpc_contents = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"fp32_contents": st.lists(st.floats(width=32), max_size=200)}),
    st.fixed_dictionaries({"uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=200)}),
    st.fixed_dictionaries({"int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50)}),
    st.fixed_dictionaries({"bytes_contents": st.lists(st.sampled_from([*SEEDS, b"", b"xx"]), max_size=3)}),
    st.fixed_dictionaries({"bool_contents": st.lists(st.booleans(), max_size=5)}),
)
grpc_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "image", "pixels", "other", ""]),
        "shape": st.lists(st.integers(-2, 9), max_size=5),
        "datatype": st.sampled_from(["FP32", "UINT8", "BYTES", "INT64", "fp32"]),
        "contents": grpc_contents,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), grpc_values, max_size=2),
    }
)


@FUZZ
@given(
    st.lists(grpc_tensor, max_size=3),
    st.one_of(st.none(), st.lists(st.binary(max_size=300), max_size=3)),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["logits", "probabilities", "x"]),
                "parameters": st.dictionaries(st.sampled_from(["classification", "binary_data"]), grpc_values),
            }
        ),
        max_size=2,
    ),
    st.dictionaries(st.sampled_from(["binary_data_output", "x"]), grpc_values, max_size=2),
)
def test_grpc_parse_structured_requests(inputs: list[dict], raw: list[bytes] | None, outputs: list[dict], params: dict):
    from modelops_server.proto import grpc_predict_v2_pb2 as pb  # noqa: PLC0415

    def parameters(values: dict) -> dict:
        return {k: pb.InferParameter(**v) for k, v in values.items()}

    message = pb.ModelInferRequest(
        model_name="fuzz",
        id="f",
        parameters=parameters(params),
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=t["name"],
                datatype=t["datatype"],
                shape=t["shape"],
                contents=pb.InferTensorContents(**t["contents"]),
                parameters=parameters(t["parameters"]),
            )
            for t in inputs
        ],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=o["name"], parameters=parameters(o["parameters"]))
            for o in outputs
        ],
        raw_input_contents=raw or [],
    )
    _grpc_only_request_errors(message.SerializeToString())


@st.composite
def near_valid_grpc(draw: st.DrawFn) -> bytes:
    """One input of the right name, most often of the right size: the paths past the first checks
    (conversion, raw and typed contents, outputs, classification, encoding)."""
    import numpy as np  # noqa: PLC0415

    from modelops_server.proto import grpc_predict_v2_pb2 as pb  # noqa: PLC0415

    name = draw(st.sampled_from(["input", "pixels", "image"]))
    rows = draw(st.integers(0, 3))
    raw = draw(st.booleans())
    cut = draw(st.sampled_from([0, 0, 0, 1, 4]))
    tensor = pb.ModelInferRequest.InferInputTensor(name=name)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if name == "input":
        tensor.datatype, tensor.shape[:] = draw(st.sampled_from(["FP32", "FP32", "UINT8"])), [rows, 3, 8, 8]
        values = rng.standard_normal(rows * 192).astype(np.float32)
        if draw(st.booleans()) and values.size:
            values[0] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
        data = values.tobytes()
        typed = pb.InferTensorContents(fp32_contents=values.tolist())
    elif name == "pixels":
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        tensor.datatype, tensor.shape[:] = "UINT8", [rows, h, w, 3]
        values = rng.integers(0, 256, rows * h * w * 3).astype(np.uint8)
        data = values.tobytes()
        typed = pb.InferTensorContents(uint_contents=values.tolist())
    else:
        images = [draw(st.sampled_from([*SEEDS, b"junk"])) for _ in range(rows)]
        tensor.datatype, tensor.shape[:] = "BYTES", [rows]
        data = b"".join(struct.pack("<I", len(i)) + i for i in images)
        typed = pb.InferTensorContents(bytes_contents=images)
    message = pb.ModelInferRequest(model_name="fuzz", inputs=[tensor])
    if raw:
        message.raw_input_contents.append(data[: len(data) - cut])
    else:
        tensor.contents.CopyFrom(typed)
    for out in draw(st.lists(st.sampled_from(["logits", "probabilities"]), max_size=2)):
        requested = message.outputs.add(name=out)
        if draw(st.booleans()):
            requested.parameters["classification"].int64_param = draw(st.integers(-1, 7))
        if draw(st.booleans()):
            requested.parameters["binary_data"].bool_param = draw(st.booleans())
    return message.SerializeToString()


@FUZZ
@given(near_valid_grpc())
def test_grpc_parse_near_valid_requests(payload: bytes):
    _grpc_only_request_errors(payload)
