"""Registering model versions in a real MLflow tracking server (`mlflow server` on loopback, SQLite
backend), through the operator's standard-library REST client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelops_operator.mlflow import DIGEST_TAG, RegistryError, register_model_version

STARTUP_LIMIT_S = 300.0
"""How long the server may take to answer /health: generous, for a loaded 2-core machine."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh MLflow server: one worker, no job runner (its extra processes are not needed)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp}/mlflow.db",
        "--default-artifact-root",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not health(uri):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up (exit {proc.poll()}):\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.25)
        yield uri
    finally:
        # The server runs uvicorn in a child process: stop the whole session it leads.
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def get(uri: str, endpoint: str, **params: str) -> dict[str, Any]:
    """A GET on MLflow's REST API, read with plain urllib (not the code under test)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def versions(uri: str, name: str) -> list[dict[str, Any]]:
    return list(get(uri, "model-versions/search", filter=f"name='{name}'").get("model_versions", []))


def test_registers_version_1_with_tags_and_description(tracking_uri: str) -> None:
    version = register_model_version(
        tracking_uri,
        "digits",
        "s3://models/digits/run-a/model.onnx",
        digest="sha256:aaa",
        description="TrainingRun default/digits, trial 3",
        tags={"modelops.dev/trainingrun": "default/digits", "accuracy": "0.97"},
    )

    assert version == "1"
    got = get(tracking_uri, "model-versions/get", name="digits", version="1")["model_version"]
    assert got["source"] == "s3://models/digits/run-a/model.onnx"
    assert got["description"] == "TrainingRun default/digits, trial 3"
    assert {t["key"]: t["value"] for t in got["tags"]} == {
        DIGEST_TAG: "sha256:aaa",
        "modelops.dev/trainingrun": "default/digits",
        "accuracy": "0.97",
    }
    assert get(tracking_uri, "registered-models/get", name="digits")["registered_model"]["name"] == "digits"


def test_same_digest_returns_the_existing_version(tracking_uri: str) -> None:
    first = register_model_version(tracking_uri, "again", "s3://models/again/a.onnx", digest="sha256:same")
    # An operator restarted before recording "1" in status registers the same file again.
    second = register_model_version(tracking_uri, "again", "s3://models/again/a.onnx", digest="sha256:same")

    assert first == second == "1"
    assert [v["version"] for v in versions(tracking_uri, "again")] == ["1"]


def test_new_digest_gives_the_next_version(tracking_uri: str) -> None:
    assert register_model_version(tracking_uri, "next", "s3://models/next/a.onnx", digest="sha256:a") == "1"
    assert register_model_version(tracking_uri, "next", "s3://models/next/b.onnx", digest="sha256:b") == "2"
    # Both stay findable: the first digest still answers "1".
    assert register_model_version(tracking_uri, "next", "s3://models/next/a.onnx", digest="sha256:a") == "1"
    assert sorted(v["version"] for v in versions(tracking_uri, "next")) == ["1", "2"]


def test_finds_the_digest_beyond_the_first_page(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modelops_operator.mlflow._PAGE_SIZE", 2)
    for i in range(5):
        register_model_version(tracking_uri, "paged", f"s3://models/paged/{i}.onnx", digest=f"sha256:{i}")

    assert register_model_version(tracking_uri, "paged", "s3://models/paged/0.onnx", digest="sha256:0") == "1"
    assert register_model_version(tracking_uri, "paged", "s3://models/paged/4.onnx", digest="sha256:4") == "5"
    assert len(versions(tracking_uri, "paged")) == 5


def test_name_with_a_quote(tracking_uri: str) -> None:
    assert register_model_version(tracking_uri, "it's", "s3://models/q.onnx", digest="sha256:q") == "1"
    assert register_model_version(tracking_uri, "it's", "s3://models/q.onnx", digest="sha256:q") == "1"


def test_unreachable_tracking_uri_names_it() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    with pytest.raises(RegistryError, match=r"unreachable") as caught:
        register_model_version(uri, "m", "s3://models/m.onnx", digest="sha256:m", timeout=5)

    assert str(caught.value).startswith(f"MLflow at {uri} unreachable: ")
    assert caught.value.transient


def test_credentials_stay_out_of_messages() -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"

    with pytest.raises(RegistryError) as caught:
        register_model_version(uri, "m", "s3://models/m.onnx", digest="sha256:m", timeout=5)

    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)


def test_bad_request_carries_mlflows_message(tracking_uri: str) -> None:
    with pytest.raises(RegistryError) as caught:
        register_model_version(tracking_uri, "", "s3://models/m.onnx", digest="sha256:m")

    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert not caught.value.transient
    assert "Missing value for required parameter 'name'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_local_file_source_is_refused_with_a_hint(tracking_uri: str) -> None:
    with pytest.raises(RegistryError) as caught:
        register_model_version(tracking_uri, "local", "file:///var/lib/modelops/artifacts/m.onnx", digest="sha256:l")

    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "object store" in str(caught.value)
    assert versions(tracking_uri, "local") == []


def test_not_an_mlflow_server(tracking_uri: str) -> None:
    with pytest.raises(RegistryError, match="HTTP 404"):
        register_model_version(f"{tracking_uri}/not-mlflow", "m", "s3://models/m.onnx", digest="sha256:m")


def test_tracking_uri_must_be_http() -> None:
    with pytest.raises(RegistryError, match="not an http"):
        register_model_version("ftp://mlflow.example", "m", "s3://models/m.onnx", digest="sha256:m")
