"""A ModelDeployment's `spec.model.mlflowAlias` in a real MLflow server: set when a model becomes
stable, moved on promotion, left alone otherwise; failures land in a condition, never in serving."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.mlflow import (
    SECRET_URI_ANNOTATION,
    RegistryError,
    apply_alias,
    register_model_version,
    set_alias,
)
from tests.integration.mlflow_server import free_port
from tests.support.objects import model_deployment, training_run

RUN = "alias-run"
DIGESTS = {n: "sha256:" + f"{n:x}" * 64 for n in (1, 2, 3)}


def alias_version(uri: str, name: str, alias: str) -> str:
    """Where MLflow says the alias points, read with plain urllib."""
    query = urllib.parse.urlencode({"name": name, "alias": alias})
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/alias?{query}", timeout=10) as r:
        return str(json.load(r)["model_version"]["version"])


def run_object(uri: str, model_name: str, mlflow_versions: dict[int, str | None], **registry: Any) -> dict[str, Any]:
    """A TrainingRun as the API server returns it: registry settings and registered models."""
    body = training_run(RUN).set("spec.registry", {"mlflowTrackingUri": uri, "modelName": model_name, **registry}).obj()
    models = [
        {"version": n, "uri": f"s3://m/{n}.onnx", "digest": DIGESTS[n], **({"mlflowVersion": v} if v else {})}
        for n, v in mlflow_versions.items()
    ]
    body["status"] = {"models": models, "model": models[-1]}
    return body


def spec(alias: str | None = "production") -> ModelDeploymentSpec:
    builder = model_deployment("md", RUN)
    if alias is not None:
        builder.set("spec.model.mlflowAlias", alias)
    return ModelDeploymentSpec.model_validate(builder.spec)


def stable(n: int) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stable=ServedModel(version=f"{RUN}:v{n}", uri=f"s3://m/{n}.onnx", digest=DIGESTS[n]), observed_generation=3
    )


def no_secrets(name: str, field: str) -> dict[str, Any]:
    raise AssertionError(f"no Secret should be read ({name} for {field})")


def condition(status: ModelDeploymentStatus) -> tuple[ConditionStatus, str, str]:
    found = c.get_condition(status.conditions, c.MLFLOW_ALIAS)
    assert found is not None
    return found.status, found.reason, found.message


@pytest.fixture
def model(tracking_uri: str, request: pytest.FixtureRequest) -> str:
    """A registered model with versions 1 and 2 in the real server, named after the test."""
    name = f"alias-{request.node.name}".replace("[", "-").replace("]", "")
    for n in (1, 2):
        register_model_version(tracking_uri, name, f"s3://m/{n}.onnx", digest=DIGESTS[n])
    return name


def test_the_alias_follows_each_promotion(tracking_uri, model):
    run = run_object(tracking_uri, model, {1: "1", 2: "2"})

    first = apply_alias(spec(), stable(1), run, no_secrets)
    assert alias_version(tracking_uri, model, "production") == "1"
    assert condition(first)[:2] == (ConditionStatus.TRUE, c.MLFLOW_ALIAS_MOVED)
    assert first.mlflow_alias is not None and (first.mlflow_alias.version, first.mlflow_alias.served) == (
        "1",
        f"{RUN}:v1",
    )

    promoted = first.model_copy(update={"stable": stable(2).stable})
    second = apply_alias(spec(), promoted, run, no_secrets)
    assert alias_version(tracking_uri, model, "production") == "2"
    assert condition(second) == (
        ConditionStatus.TRUE,
        c.MLFLOW_ALIAS_MOVED,
        f'alias "production" of "{model}" in MLflow points at version 2 ({RUN}:v2)',
    )


def test_between_promotions_the_alias_is_not_touched(tracking_uri, model):
    run = run_object(tracking_uri, model, {1: "1", 2: "2"})
    status = apply_alias(spec(), stable(2), run, no_secrets)
    # Someone points the alias elsewhere by hand: the next reconciles leave it there.
    set_alias(tracking_uri, model, "production", "1")

    again = apply_alias(spec(), status, run, no_secrets)

    assert again == status
    assert alias_version(tracking_uri, model, "production") == "1"


def test_a_model_without_an_mlflow_version_waits_in_the_condition(tracking_uri, model):
    run = run_object(tracking_uri, model, {1: "1", 2: None})
    before = stable(2)

    after = apply_alias(spec(), before, run, no_secrets)

    assert condition(after)[:2] == (ConditionStatus.FALSE, c.MLFLOW_ALIAS_FAILED)
    assert "has no MLflow version yet" in condition(after)[2]
    assert after.stable == before.stable and after.mlflow_alias is None


def test_a_server_that_is_down_never_touches_serving():
    uri = f"http://127.0.0.1:{free_port()}"
    before = stable(1)

    after = apply_alias(spec(), before, run_object(uri, "m", {1: "1"}), no_secrets)

    status, reason, message = condition(after)
    assert (status, reason) == (ConditionStatus.FALSE, c.MLFLOW_ALIAS_FAILED)
    assert message.startswith(f'alias "production" of "m": MLflow at {uri} unreachable')
    assert after.model_copy(update={"conditions": []}) == before.model_copy(update={"conditions": []})


def test_an_unknown_version_is_mlflows_refusal(tracking_uri, model):
    with pytest.raises(RegistryError) as caught:
        set_alias(tracking_uri, model, "production", "99")
    assert caught.value.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def test_the_credentials_secret_must_name_the_server(tracking_uri, model):
    run = run_object(tracking_uri, model, {1: "1"}, credentialsSecret="creds")
    foreign = {
        "metadata": {"name": "creds", "namespace": "ns", "annotations": {SECRET_URI_ANNOTATION: "http://other"}},
        "data": {"token": base64.b64encode(b"t").decode()},
    }

    after = apply_alias(spec(), stable(1), run, lambda name, field: foreign)

    assert condition(after)[:2] == (ConditionStatus.FALSE, c.MLFLOW_ALIAS_FAILED)
    assert f"Secret ns/creds is not for {tracking_uri}" in condition(after)[2]


def test_removing_the_alias_from_the_spec_drops_the_record(tracking_uri, model):
    status = apply_alias(spec(), stable(1), run_object(tracking_uri, model, {1: "1"}), no_secrets)
    assert status.mlflow_alias is not None

    after = apply_alias(spec(None), status, run_object(tracking_uri, model, {1: "1"}), no_secrets)

    assert after.mlflow_alias is None and c.get_condition(after.conditions, c.MLFLOW_ALIAS) is None
    assert alias_version(tracking_uri, model, "production") == "1"  # MLflow keeps it: the operator only moves it
