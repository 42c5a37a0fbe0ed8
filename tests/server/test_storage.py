"""Models on object storage and web servers: the server process loads an `s3://` model from a real
S3 server (moto's), with credentials from its environment as a pod gets them, and refuses a missing
object or a wrong digest with a message naming it; over HTTP it follows the trainer's redirect rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from modelops_server.errors import ModelLoadError
from modelops_server.modelcard import fetch_model
from tests.support.s3 import S3Server
from tests.support.serving import (
    CLASSES,
    LIVENESS_S,
    ExportedModel,
    ServerProcess,
    image_bytes,
    normalise,
    pixels_of,
    softmax,
)
from tests.support.web import Site, redirect, send_bytes


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    server.bucket("models")
    yield server
    server.stop()


def upload(s3: S3Server, model: ExportedModel, key: str) -> str:
    """The model and its card at `s3://models/<key>`; returns the model's URI."""
    fs = s3.fs()
    fs.put(str(model.path), f"models/{key}")
    fs.put(f"{model.path}.card.json", f"models/{key}.card.json")
    return f"s3://models/{key}"


def failure(server: ServerProcess) -> str:
    """The log of a server that must exit 1 because it cannot load its model."""
    assert server.proc is not None
    try:
        code = server.proc.wait(LIVENESS_S)
    except Exception:
        server.stop()
        raise
    assert code == 1, server.logs()
    return server.logs()


def test_a_model_on_s3_is_served(s3: S3Server, model_v1: ExportedModel, logs_dir: Path):
    uri = upload(s3, model_v1, "tiny/v1/model.onnx")
    server = ServerProcess(model=uri, args=["--model-digest", model_v1.digest], env=s3.env).start(logs_dir)
    try:
        img = image_bytes(7)
        r = requests.post(
            f"{server.url}/v1/models/tiny-cnn:classify",
            files={"file": ("x.png", img, "image/png")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        want = softmax(model_v1.logits(normalise(pixels_of(img))[None])[0])
        top = r.json()["predictions"][0]
        assert top["label"] == CLASSES[int(np.argmax(want))]
        assert top["score"] == pytest.approx(float(want.max()), abs=1e-5)
    finally:
        assert server.stop() == 0, server.logs()


def test_a_missing_object_on_s3_is_named(s3: S3Server, logs_dir: Path):
    server = ServerProcess(model="s3://models/absent/model.onnx", env=s3.env)
    logs = failure(server.start(logs_dir, wait_ready=False))
    assert "cannot read the model card s3://models/absent/model.onnx.card.json" in logs


def test_a_wrong_digest_on_s3_is_refused(s3: S3Server, model_v1: ExportedModel, logs_dir: Path):
    uri = upload(s3, model_v1, "tiny/pinned/model.onnx")
    wrong = "sha256:" + "0" * 64
    server = ServerProcess(model=uri, args=["--model-digest", wrong], env=s3.env)
    logs = failure(server.start(logs_dir, wait_ready=False))
    assert f"{uri} has digest {model_v1.digest}, but the deployment expects {wrong}; refusing to load it" in logs


def test_a_model_over_http_follows_redirects_but_refuses_loops_and_other_schemes(model_v1: ExportedModel, tmp_path):
    """The server's HTTP rules are the trainer's: a chain of redirects (to the model and to its
    card) is followed, a loop is refused by name, and gs:// is refused before any I/O."""
    files = {
        "model.onnx": model_v1.path.read_bytes(),
        "model.onnx.card.json": Path(f"{model_v1.path}.card.json").read_bytes(),
    }

    def hop(h) -> None:
        _, _, n, name = h.path.split("/", 3)
        if int(n) > 0:
            redirect(h, f"/hop/{int(n) - 1}/{name}")
        else:
            send_bytes(h, files[name], "application/octet-stream")

    with Site({"/hop/": hop, "/loop": lambda h: redirect(h, "/loop")}) as site:
        artifact = fetch_model(f"{site.url}/hop/3/model.onnx", expected_digest=model_v1.digest, cache_dir=str(tmp_path))
        loop = rf"cannot read the model card {site.url}/loop\.card\.json: redirect loop"
        with pytest.raises(ModelLoadError, match=loop):
            fetch_model(f"{site.url}/loop", cache_dir=str(tmp_path))
    assert artifact.digest == model_v1.digest and artifact.card.classes == CLASSES
    assert Path(artifact.local_path).read_bytes() == files["model.onnx"]
    assert site.hits.count("/hop/0/model.onnx") == 1 and site.hits.count("/hop/3/model.onnx.card.json") == 1
    with pytest.raises(
        ModelLoadError, match="gs:// is not supported: the model's URI must be a local path or a file://"
    ):
        fetch_model("gs://bucket/model.onnx", cache_dir=str(tmp_path))
