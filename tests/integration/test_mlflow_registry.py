"""Registering model versions in a real MLflow tracking server (`mlflow server` on loopback, SQLite
backend; the fixture is in conftest.py), through the operator's standard-library REST client."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest

from modelops_operator.mlflow import DIGEST_TAG, RegistryError, register_model_version
from tests.integration.mlflow_server import free_port


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
