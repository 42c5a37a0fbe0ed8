"""The pydantic models: defaults, bounds, wire format, and the examples users apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from modelops_operator.api.dataset import DatasetSpec
from modelops_operator.api.kinds import KINDS
from modelops_operator.api.modeldeployment import ModelDeploymentSpec
from modelops_operator.api.trainingrun import SEARCHABLE, Hyperparameters, TrainingRunSpec
from tests.support.objects import DIGEST, dataset, model_deployment, training_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BY_KIND = {k.kind: k for k in KINDS}


def example_objects():
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("modelops.dev/"):
                yield pytest.param(doc, id=f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(example_objects()))
def test_examples_validate(doc):
    BY_KIND[doc["kind"]].spec.model_validate(doc["spec"])


def test_there_is_an_example_of_each_kind():
    kinds = {p.values[0]["kind"] for p in example_objects()}
    assert kinds == set(BY_KIND)


def test_minimal_specs_get_documented_defaults():
    ds = DatasetSpec.model_validate(dataset().spec)
    assert (ds.split.train, ds.split.val, ds.split.test) == (0.8, 0.1, 0.1)
    assert ds.preprocessing.resize_mode == "shorterSideCrop"
    tr = TrainingRunSpec.model_validate(training_run().spec)
    assert tr.search is None and tr.workers.nodes == 1 and tr.hyperparameters.optimizer == "adamw"
    md = ModelDeploymentSpec.model_validate(model_deployment().spec)
    assert [s.set_weight for s in md.rollout.steps if s.set_weight is not None] == [10, 50]
    assert md.autoscaling.min_replicas <= md.autoscaling.max_replicas


def test_wire_format_is_camel_case_without_nulls():
    wire = ModelDeploymentSpec.model_validate(model_deployment().spec).wire()
    assert "trainingRunRef" in wire["model"] and "uri" not in wire["model"]
    assert wire["alerts"]["for"] == "5m"
    assert "maxBatchDelayMs" in wire["server"]


@pytest.mark.parametrize(
    ("builder", "model", "message"),
    [
        (dataset().set("spec.sources", []), DatasetSpec, "at least 1 item"),
        (dataset().set("spec.sources.0.uri", "/no/scheme"), DatasetSpec, "should match pattern"),
        (dataset().set("spec.sources.0.uri", "ftp://host/x"), DatasetSpec, "scheme must be file://, s3://"),
        (dataset().set("spec.preprocessing.quality", 0), DatasetSpec, "greater than or equal to 1"),
        (training_run().set("spec.hyperparameters.learningRate", 0), TrainingRunSpec, "greater than 0"),
        (training_run().drop("spec.datasetRef"), TrainingRunSpec, "Field required"),
        (model_deployment().set("spec.model.digest", "md5:x"), ModelDeploymentSpec, "should match pattern"),
        (model_deployment().set("spec.server.surprise", 1), ModelDeploymentSpec, "Extra inputs"),
    ],
)
def test_bounds_are_enforced_in_python_too(builder, model, message):
    with pytest.raises(ValidationError, match=message):
        model.model_validate(builder.spec)


#: Every URI the programs read or write, as (a builder with the URI at `path`, its spec model).
STORAGE_URIS = [
    pytest.param(lambda uri: dataset().set("spec.sources.0.uri", uri), DatasetSpec, id="dataset-source"),
    pytest.param(lambda uri: dataset().set("spec.output", {"uri": uri}), DatasetSpec, id="dataset-output"),
    pytest.param(lambda uri: training_run().set("spec.model.weightsUri", uri), TrainingRunSpec, id="weights"),
    pytest.param(lambda uri: training_run().set("spec.checkpointing.uri", uri), TrainingRunSpec, id="checkpoints"),
    pytest.param(
        lambda uri: model_deployment().drop("spec.model.trainingRunRef").set("spec.model.uri", uri)
        .set("spec.model.digest", DIGEST),
        ModelDeploymentSpec,
        id="model",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("build", "model"), STORAGE_URIS)
def test_only_schemes_with_a_file_system_in_the_images_are_accepted(build, model):
    """gs://, Azure and other schemes have no fsspec file system in the images: refused up front,
    with the supported schemes named, rather than failing in a pod later."""
    for uri in ("gs://bucket/x", "gcs://bucket/x", "az://c/x", "abfs://c/x", "ftp://host/x"):
        with pytest.raises(ValidationError, match=r"scheme must be file://, s3://, http:// or https:// \(gs://"):
            model.model_validate(build(uri).spec)
    for uri in ("file:///data/x", "s3://bucket/x", "http://host/x", "https://host/x"):
        model.model_validate(build(uri).spec)


def test_searchable_names_are_hyperparameters():
    fields = {to_camel(name) for name in Hyperparameters.model_fields}
    assert set(SEARCHABLE) - {"architecture"} <= fields


def test_uri_model_source_round_trips():
    spec = model_deployment().drop("spec.model.trainingRunRef").set("spec.model.uri", "s3://m/model.onnx")
    spec.set("spec.model.digest", DIGEST)
    md = ModelDeploymentSpec.model_validate(spec.spec)
    assert md.model.digest == DIGEST and md.model.training_run_ref is None


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("file:///", True),
        ("file:///etc", True),
        ("file:///usr/lib/python3", True),
        ("file:///tmp/x", True),
        ("file:////opt/venv", True),
        ("file:///mnt/checkpoints", False),
        ("file:///data/etc", False),
        ("file:///var/lib/modelops/artifacts", False),
        ("file:///etcetera", False),
    ],
)
def test_a_pvc_is_never_mounted_over_a_system_folder(uri, refused):
    from pydantic import ValidationError  # noqa: PLC0415

    from modelops_operator.api.dataset import DatasetOutput  # noqa: PLC0415
    from modelops_operator.api.trainingrun import Checkpointing  # noqa: PLC0415

    for model in (DatasetOutput, Checkpointing):
        if refused:
            with pytest.raises(ValidationError, match="a PVC is never mounted over / or a system folder"):
                model.model_validate({"uri": uri, "pvc": "claim"})
        else:
            model.model_validate({"uri": uri, "pvc": "claim"})
        model.model_validate({"uri": uri})  # without a PVC nothing is mounted there
