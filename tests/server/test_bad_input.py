"""Bad input: each case is a 4xx with a clear ``{"error": ...}``, and the server keeps serving."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import subprocess
import zlib

import pytest
import requests
from PIL import Image

from tests.support.serving import SIZE, ServerProcess, image_bytes

MODEL = "tiny-cnn"


def _bomb_png() -> bytes:
    """A 20000×20000 PNG: a few kilobytes on the wire, 400 megapixels once decoded."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(buf, format="TIFF")
    return buf.getvalue()


def _v2(name: str = "input", datatype: str = "FP32", shape: list[int] | None = None, data: object = None) -> dict:
    shape = shape if shape is not None else [1, 3, SIZE, SIZE]
    if data is None:
        count = 1
        for d in shape:
            count *= d
        data = [0.0] * count
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


PNG = image_bytes(5)
CLASSIFY_CASES = [
    # (id, body, content type, query, status, fragment of the error)
    ("truncated-png", PNG[: len(PNG) // 2], "image/png", {}, 400, "truncated or corrupt"),
    ("truncated-jpeg", _jpeg()[:300], "image/jpeg", {}, 400, "truncated or corrupt"),
    ("garbage", b"\x00\x01not an image at all" * 10, "image/png", {}, 415, "cannot identify the image format"),
    ("tiff", _tiff(), "image/tiff", {}, 415, "accepted formats"),
    ("bomb", _bomb_png(), "image/png", {}, 413, "above the limit"),
    ("empty", b"", "image/png", {}, 400, "empty"),
    ("text-content-type", PNG, "text/plain", {}, 415, "is not accepted"),
    ("json-content-type", b"{}", "application/json", {}, 415, "is not accepted"),
    # curl's default for --data-binary: a real form is no image, and the decoder says so.
    ("form-not-an-image", b"a=1&b=2", "application/x-www-form-urlencoded", {}, 415, "cannot identify the image format"),
    ("top-k-zero", PNG, "image/png", {"top_k": "0"}, 400, "top_k"),
    ("top-k-word", PNG, "image/png", {"top_k": "many"}, 400, "top_k"),
]


@pytest.mark.parametrize(
    ("body", "ctype", "query", "status", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in CLASSIFY_CASES]
)
def test_classify_rejects(server: ServerProcess, body: bytes, ctype: str, query: dict, status: int, fragment: str):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify", data=body, headers={"Content-Type": ctype}, params=query, timeout=30
    )
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert fragment in r.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-content-type"),  # requests and httpx given bytes send none
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="curl-data-binary-default"),
    ],
)
def test_classify_takes_an_untyped_body_as_the_image(server: ServerProcess, headers: dict):
    typed = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify", data=PNG, headers={"Content-Type": "image/png"}, timeout=30
    )
    untyped = requests.post(f"{server.url}/v1/models/{MODEL}:classify", data=PNG, headers=headers, timeout=30)
    assert "Content-Type" not in untyped.request.headers or headers
    assert typed.status_code == 200 and untyped.status_code == 200, untyped.text
    assert untyped.json()["predictions"] == typed.json()["predictions"]


def test_classify_takes_a_file_upload_under_any_field_name(server: ServerProcess):
    """`curl -F image=@cat.jpg` and HTML file inputs name the field as they please; a plain form
    field beside the upload (a caption, a token) is not the image."""
    url = f"{server.url}/v1/models/{MODEL}:classify"
    raw = requests.post(url, data=PNG, headers={"Content-Type": "image/png"}, timeout=30)
    other = requests.post(url, data={"note": "x"}, files={"picture": ("a.png", PNG, "image/png")}, timeout=30)
    assert raw.status_code == 200 and other.status_code == 200, other.text
    assert other.json()["predictions"] == raw.json()["predictions"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param(
            {"files": {"a": ("a.png", PNG, "image/png"), "b": ("b.png", PNG, "image/png")}},
            "the multipart body has 2 files (fields 'a', 'b') and no field named 'file'",
            id="two-uploads",
        ),
        pytest.param(
            {"files": {"note": (None, b"a caption")}},
            "the multipart body has no file (its fields: 'note')",
            id="form-field-only",
        ),
    ],
)
def test_classify_multipart_without_one_image(server: ServerProcess, kwargs: dict, fragment: str):
    r = requests.post(f"{server.url}/v1/models/{MODEL}:classify", timeout=30, **kwargs)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


B64_PNG = base64.b64encode(PNG).decode()
INFER_CASES = [
    ("malformed-json", b'{"inputs": [', "application/json", 400, "malformed JSON"),
    ("not-an-object", b"[1, 2, 3]", "application/json", 400, "JSON object"),
    ("no-inputs", b'{"outputs": []}', "application/json", 400, "inputs"),
    ("unknown-field", json.dumps({**_v2(), "foo": 1}).encode(), "application/json", 400, "foo"),
    ("wrong-name", json.dumps(_v2(name="data")).encode(), "application/json", 400, "unknown input 'data'"),
    ("wrong-dtype", json.dumps(_v2(datatype="INT32")).encode(), "application/json", 400, "must have datatype FP32"),
    ("wrong-shape", json.dumps(_v2(shape=[1, 3, 16, 16])).encode(), "application/json", 400, "must have shape"),
    (
        "negative-dim",
        json.dumps(_v2(shape=[-1, 3, SIZE, SIZE], data=[0.0])).encode(),
        "application/json",
        400,
        "non-negative",
    ),
    ("count-mismatch", json.dumps(_v2(data=[0.0] * 10)).encode(), "application/json", 400, "must hold"),
    ("strings-as-fp32", json.dumps(_v2(data=["a"] * (3 * SIZE * SIZE))).encode(), "application/json", 400, "numbers"),
    (
        "ragged",
        json.dumps(_v2(shape=[2], datatype="FP32", data=[[1.0], [1.0, 2.0]])).encode(),
        "application/json",
        400,
        "regular array",
    ),
    (
        "nan",
        b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[NaN]}]}',
        "application/json",
        400,
        "malformed JSON",
    ),
    (
        "too-many-rows",
        json.dumps(_v2(name="image", datatype="BYTES", shape=[65], data=[B64_PNG] * 65)).encode(),
        "application/json",
        400,
        "at most 64",
    ),
    (
        "zero-rows",
        json.dumps(_v2(name="image", datatype="BYTES", shape=[0], data=[])).encode(),
        "application/json",
        400,
        "no rows",
    ),
    (
        "bad-base64",
        json.dumps(_v2(name="image", datatype="BYTES", shape=[1], data=["%%%"])).encode(),
        "application/json",
        400,
        "base64",
    ),
    (
        "bytes-not-strings",
        json.dumps(_v2(name="image", datatype="BYTES", shape=[1], data=[5])).encode(),
        "application/json",
        400,
        "base64 strings",
    ),
    (
        "bytes-corrupt-image",
        json.dumps(_v2(name="image", datatype="BYTES", shape=[1], data=[base64.b64encode(PNG[:60]).decode()])).encode(),
        "application/json",
        400,
        "corrupt",
    ),
    (
        "uint8-out-of-range",
        json.dumps(_v2(name="pixels", datatype="UINT8", shape=[1, 1, 1, 3], data=[0, 256, 3])).encode(),
        "application/json",
        400,
        "0..255",
    ),
    (
        "uint8-wrong-channels",
        json.dumps(_v2(name="pixels", datatype="UINT8", shape=[1, 2, 2, 4], data=[0] * 16)).encode(),
        "application/json",
        400,
        "[N, H, W, 3]",
    ),
    (
        "unknown-output",
        json.dumps({**_v2(), "outputs": [{"name": "embeddings"}]}).encode(),
        "application/json",
        400,
        "unknown output",
    ),
    (
        "bad-classification",
        json.dumps({**_v2(), "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}).encode(),
        "application/json",
        400,
        "classification",
    ),
    ("text-content-type", json.dumps(_v2()).encode(), "text/plain", 415, "application/json"),
    ("empty-body", b"", "application/json", 400, "empty"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in INFER_CASES])
def test_infer_rejects(server: ServerProcess, body: bytes, ctype: str, status: int, fragment: str):
    r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", data=body, headers={"Content-Type": ctype}, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


B64_TEXT = base64.b64encode(b"not an image").decode()
PREDICT_CASES = [
    # (id, body, content type, query, status, fragment of the error)
    ("malformed-json", b'{"instances": [', "application/json", {}, 400, "malformed JSON"),
    ("not-an-object", b"[1, 2]", "application/json", {}, 400, 'send a JSON object {"instances": [...]}'),
    ("no-instances", b'{"signature_name": "x"}', "application/json", {}, 400, 'must have "instances"'),
    ("both-forms", b'{"instances": [], "inputs": []}', "application/json", {}, 400, 'must have "instances"'),
    ("instances-not-a-list", b'{"instances": {"b64": "AA=="}}', "application/json", {}, 400, "must be a list"),
    ("empty", b'{"instances": []}', "application/json", {}, 400, '"instances" is empty'),
    ("too-many", json.dumps({"instances": ["AA=="] * 1000}).encode(), "application/json", {}, 400, "at most"),
    ("a-number", b'{"instances": [7]}', "application/json", {}, 400, "instance 0: an instance is an image as"),
    ("no-image", b'{"instances": [{"key": "1"}]}', "application/json", {}, 400, "no image in the object (keys ['key']"),
    (
        "two-images",
        json.dumps({"instances": [{"a": {"b64": B64_PNG}, "b": {"b64": B64_PNG}}]}).encode(),
        "application/json",
        {},
        400,
        "instance 0: 2 binary values ('a', 'b'); send one image",
    ),
    ("bad-base64", b'{"instances": [{"b64": "%%%"}]}', "application/json", {}, 400, "not valid base64"),
    ("b64-not-a-string", b'{"instances": [{"b64": 5}]}', "application/json", {}, 400, "must be a base64 string"),
    ("not-an-image", json.dumps({"instances": [B64_TEXT]}).encode(), "application/json", {}, 415, "image"),
    (
        "tensor-shape",
        b'{"instances": [[[1.0, 2.0]]]}',
        "application/json",
        {},
        400,
        f"instance 0 must hold {3 * SIZE * SIZE} numbers for shape [3, {SIZE}, {SIZE}]; got shape [1, 2] of kind",
    ),
    ("ragged-tensor", b'{"instances": [[[1.0], [2.0, 3.0]]]}', "application/json", {}, 400, "instance 0 is not"),
    (
        "channels-last",
        json.dumps({"instances": [[[[0.0] * 3] * SIZE] * SIZE]}).encode(),
        "application/json",
        {},
        400,
        f"got shape [{SIZE}, {SIZE}, 3]",
    ),
    ("text-content-type", b'{"instances": ["AA=="]}', "text/plain", {}, 415, "application/json"),
    ("empty-body", b"", "application/json", {}, 400, "body is empty"),
    ("top-k", json.dumps({"instances": [B64_PNG]}).encode(), "application/json", {"top_k": "0"}, 400, "top_k"),
]


@pytest.mark.parametrize(
    ("body", "ctype", "query", "status", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in PREDICT_CASES]
)
def test_predict_rejects(server: ServerProcess, body: bytes, ctype: str, query: dict, status: int, fragment: str):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:predict",
        data=body,
        headers={"Content-Type": ctype},
        params=query,
        timeout=30,
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("header", "json_part", "binary", "fragment"),
    [
        ("999999", b"{}", b"", "outside the body"),
        ("abc", b"{}", b"", "not an integer"),
        (
            None,
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 3, SIZE, SIZE],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 12},
                        }
                    ]
                }
            ).encode(),
            b"",
            "without the Inference-Header",
        ),
        (
            "auto",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 3, SIZE, SIZE],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 8},
                        }
                    ]
                }
            ).encode(),
            b"\x00" * 8,
            "do not match shape",
        ),
        (
            "auto",
            json.dumps(
                {
                    "inputs": [
                        {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
                    ]
                }
            ).encode(),
            b"\xff\x00\x00\x00ab",
            "runs past",
        ),
    ],
    ids=["header-too-long", "header-not-int", "size-without-header", "size-vs-shape", "bytes-overrun"],
)
def test_binary_extension_rejects(
    server: ServerProcess, header: str | None, json_part: bytes, binary: bytes, fragment: str
):
    headers = {"Content-Type": "application/octet-stream"}
    if header == "auto":
        headers["Inference-Header-Content-Length"] = str(len(json_part))
    elif header is not None:
        headers["Inference-Header-Content-Length"] = header
    else:
        headers["Content-Type"] = "application/json"
    r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", data=json_part + binary, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_oversized_body_is_413(server: ServerProcess):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify",
        data=b"\xff" * (5 << 20),
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]


def _encoded(coding: str, data: bytes) -> bytes:
    """`data` in an HTTP content coding, by the libraries HTTP clients use for it."""
    if coding == "br":
        import brotli  # noqa: PLC0415

        return bytes(brotli.compress(data))
    if coding == "zstd":
        from backports import zstd  # noqa: PLC0415

        return bytes(zstd.compress(data))
    return gzip.compress(data) if coding == "gzip" else zlib.compress(data)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_compressed_body_is_decoded(server: ServerProcess, coding: str):
    """Clients compress request bodies (tritonclient's `request_compression_algorithm`, proxies,
    mobile SDKs): each coding HTTP clients send is decoded, for an image and for a JSON body."""
    url = f"{server.url}/v1/models/{MODEL}:classify"
    plain = requests.post(url, data=PNG, headers={"Content-Type": "image/png"}, timeout=30)
    packed = requests.post(
        url, data=_encoded(coding, PNG), headers={"Content-Type": "image/png", "Content-Encoding": coding}, timeout=30
    )
    assert plain.status_code == 200 and packed.status_code == 200, packed.text
    assert packed.json()["predictions"] == plain.json()["predictions"]
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64_PNG]}]})
    infer = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=_encoded(coding, body.encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
        timeout=30,
    )
    assert infer.status_code == 200, infer.text


@pytest.mark.parametrize(
    ("coding", "body", "status", "fragment"),
    [
        pytest.param("gzip", PNG, 400, "not valid gzip data", id="not-gzip"),
        pytest.param("br", PNG, 400, "not valid br data", id="not-br"),
        pytest.param("zstd", b"\x28\xb5\x2f\xfd" + PNG, 400, "not valid zstd data", id="corrupt-zstd"),
        pytest.param("x-custom", PNG, 415, "Content-Encoding 'x-custom' is not accepted", id="unknown-coding"),
        # 60 KB of gzip that expands to 60 MB: the size limit (4 MiB) applies to what it decodes to.
        pytest.param("gzip", gzip.compress(bytes(60 << 20)), 413, "above the limit", id="gzip-bomb"),
    ],
)
def test_a_body_its_coding_does_not_describe_is_refused(
    server: ServerProcess, coding: str, body: bytes, status: int, fragment: str
):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify",
        data=body,
        headers={"Content-Type": "image/png", "Content-Encoding": coding},
        timeout=60,
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def _expecting(server: ServerProcess, path: str, length: int, **headers: str) -> tuple[socket.socket, bytes]:
    """Send a request head with ``Expect: 100-continue`` and no body; the first thing answered."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Expect: 100-continue\r\n\r\n"
    sock.sendall(head.encode())
    return sock, sock.recv(65536)


@pytest.mark.parametrize(
    ("length", "headers", "status"),
    [
        pytest.param(5 << 20, {}, b"413", id="over-the-size-limit"),
        pytest.param(1000, {"Content-Encoding": "x-custom"}, b"415", id="unknown-coding"),
    ],
)
def test_expect_continue_is_refused_before_the_body_is_sent(
    server: ServerProcess, length: int, headers: dict, status: bytes
):
    """A body that will be refused unread gets its refusal instead of ``100 Continue``: the client
    (curl, for bodies over 1 MiB) never sends it."""
    sock, first = _expecting(server, f"/v1/models/{MODEL}:classify", length, **headers)
    sock.close()
    assert first.startswith(b"HTTP/1.1 " + status), first[:200]
    assert b"100 Continue" not in first


def test_expect_continue_asks_for_a_body_that_will_be_read(server: ServerProcess, tmp_path):
    sock, first = _expecting(server, f"/v1/models/{MODEL}:classify", len(PNG))
    with sock:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PNG)
        answer = b""
        while b"predictions" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # curl sends Expect: 100-continue for bodies over 1 MiB; a large image goes through.
    big = tmp_path / "big.png"
    Image.effect_noise((900, 900), 64).convert("RGB").save(big)
    assert big.stat().st_size > 1 << 20
    res = subprocess.run(
        ["curl", "-sS", "-v", "-H", "Content-Type: image/png", "--data-binary", f"@{big}",
         f"{server.url}/v1/models/{MODEL}:classify"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and "Expect: 100-continue" in res.stderr and "100 Continue" in res.stderr, res.stderr
    assert json.loads(res.stdout)["predictions"]


def test_wrong_method_is_405_in_json(server: ServerProcess):
    r = requests.get(f"{server.url}/v2/models/{MODEL}/infer", timeout=10)
    assert r.status_code == 405 and "POST" in r.json()["error"]


def test_server_still_serves_after_bad_input(server: ServerProcess):
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify", data=PNG, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5
