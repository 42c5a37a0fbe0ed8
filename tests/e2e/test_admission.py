"""Bad objects are refused by the API server (schema and CEL) with a message a user can act on,
and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import REPO, kubectl
from tests.support.objects import DIGEST, dataset, model_deployment, search, training_run


def ab(*variants: tuple[str, int, int]) -> dict[str, Any]:
    """spec.experiment with (name, version, weight) variants, ending after an hour."""
    return {"variants": [{"name": n, "version": v, "weight": w} for n, v, w in variants], "duration": "1h"}


BAD = [
    # Dataset
    (
        dataset().set("spec.split", {"train": 0.7, "val": 0.1, "test": 0.1}),
        "split ratios train + val + test must sum to 1",
    ),
    (dataset().set("spec.sources", []), "should have at least 1 items"),
    (dataset().set("spec.sources.0.uri", "no-scheme/x"), "spec.sources[0].uri in body should match"),
    (
        dataset().set("spec.sources.0.uri", "ftp://example/x"),
        "the URI's scheme must be file://, s3://, http:// or https://",
    ),
    (dataset().set("spec.sources.0.uri", "gs://bucket/x"), "gs://, gcs://, az:// and abfs:// are not supported"),
    (dataset().set("spec.sources.0.labelColumn", "label"), "labelColumn applies to csv and jsonl manifests only"),
    (dataset().set("spec.preprocessing.resizeMode", "zoom"), 'Unsupported value: "zoom"'),
    (
        dataset().set("spec.augmentation.randomResizedCropScale", [0.9, 0.5]),
        "randomResizedCropScale must be [min, max] with min < max",
    ),
    (dataset().set("spec.preprocessing.quality", 101), "should be less than or equal to 100"),
    (
        dataset().set("spec.podSettings.labels", {"modelops.dev/track": "stable"}),
        "podSettings.labels may not use the keys the operator",
    ),
    (
        dataset().set("spec.podSettings.envFrom", [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        "an envFrom entry names one configMapRef or one secretRef",
    ),
    # TrainingRun
    (training_run().drop("spec.datasetRef"), "spec.datasetRef: Required value"),
    (training_run().set("spec.hyperparameters.learningRate", 0), "should be greater than 0"),
    (training_run().set("spec.search", search(maxTrials=2, parallelism=3)), "parallelism cannot exceed maxTrials"),
    (
        training_run().set("spec.search", search({"name": "learningRate", "type": "logUniform", "min": 0, "max": 1})),
        "logUniform needs min > 0",
    ),
    (
        training_run().set("spec.search", search({"name": "architecture", "type": "choice"})),
        "a choice parameter needs values",
    ),
    (
        training_run().set(
            "spec.search", search({"name": "weightDecay", "type": "uniform", "min": 0, "max": 1}, algorithm="grid")
        ),
        "grid search takes choice and int parameters only",
    ),
    (
        training_run().set(
            "spec.search",
            search(
                {"name": "epochs", "type": "int", "min": 1, "max": 5},
                {"name": "epochs", "type": "int", "min": 2, "max": 9},
            ),
        ),
        "each search parameter may appear once",
    ),
    (
        training_run().set("spec.search", search({"name": "dropout", "type": "uniform", "min": 0, "max": 1})),
        'Unsupported value: "dropout"',
    ),
    (training_run().set("spec.model.architecture", "alexnet"), 'Unsupported value: "alexnet"'),
    (
        training_run().set("spec.search", search(earlyStopping="median", successiveHalving={"reductionFactor": 3})),
        "successiveHalving applies to earlyStopping asha or hyperband only",
    ),
    (
        training_run().set(
            "spec.search", search(earlyStopping="hyperband", successiveHalving={"minEarlyStoppingRate": 1})
        ),
        "minEarlyStoppingRate applies to earlyStopping asha only (hyperband runs every rate as a bracket)",
    ),
    (
        training_run().set("spec.search", search(earlyStopping="asha", successiveHalving={"maxEpochs": 9})),
        "maxEpochs applies to earlyStopping hyperband only",
    ),
    (
        training_run().set(
            "spec.search",
            search(earlyStopping="hyperband", earlyStoppingMinEpochs=4, successiveHalving={"maxEpochs": 3}),
        ),
        "successiveHalving.maxEpochs must be at least earlyStoppingMinEpochs",
    ),
    (
        training_run().set("spec.search", search(earlyStopping="asha", successiveHalving={"reductionFactor": 1})),
        "should be greater than or equal to 2",
    ),
    (training_run().set("spec.search", search(earlyStopping="sha")), 'Unsupported value: "sha"'),
    (
        training_run().set("spec.podSettings.env", [{"name": "MODELOPS_TRAIN_CONFIG", "value": "{}"}]),
        "podSettings.env may not set MODELOPS_* variables",
    ),
    (
        training_run().set("spec.podSettings.env", [{"name": "A", "valueFrom": {}}]),
        "valueFrom names exactly one of secretKeyRef",
    ),
    # ModelDeployment
    (model_deployment("m" * 64), "a ModelDeployment's name is also its Service's name"),
    (model_deployment("digits.v2"), "a ModelDeployment's name is also its Service's name"),
    (model_deployment("2digits"), "a ModelDeployment's name is also its Service's name"),
    (
        model_deployment().set("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        "minReplicas must not exceed maxReplicas",
    ),
    (
        model_deployment().set("spec.model.uri", "s3://b/m.onnx").set("spec.model.digest", DIGEST),
        "set exactly one of model.trainingRunRef and model.uri",
    ),
    (
        model_deployment().drop("spec.model.trainingRunRef").set("spec.model.uri", "s3://b/m.onnx"),
        "model.uri needs model.digest",
    ),
    (
        model_deployment()
        .drop("spec.model.trainingRunRef")
        .set("spec.model.uri", "abfs://c/m.onnx")
        .set("spec.model.digest", DIGEST),
        "the images have no Google Cloud Storage or Azure client",
    ),
    (
        model_deployment().set("spec.rollout.steps", [{"setWeight": 50}, {"setWeight": 10}]),
        "canary weights (setWeight) must rise from step to step",
    ),
    (
        model_deployment().set("spec.rollout.steps", [{"setWeight": 10, "pause": {}}]),
        "a rollout step sets exactly one of setWeight, pause, analysis",
    ),
    (
        model_deployment().set("spec.rollout.steps", [{"analysis": {"metrics": [{"name": "m", "max": 1}]}}]),
        "a custom metric needs a query",
    ),
    (
        model_deployment().set("spec.rollout.steps", [{"pause": {"duration": "five minutes"}}]),
        "spec.rollout.steps[0].pause.duration in body should match",
    ),
    (
        model_deployment().set("spec.rollout.trafficRouting", {"headerRoute": {"name": "x-canary", "value": "1"}}),
        "header routing needs trafficRouting.httpRoute",
    ),
    (
        model_deployment().set("spec.podSettings.annotations", {"modelops.dev/model-digest": DIGEST}),
        "podSettings.annotations may not use modelops.dev/* keys",
    ),
    (model_deployment().set("spec.model.mlflowAlias", "latest"), "MLflow reserves the aliases latest and v<number>"),
    (model_deployment().set("spec.model.mlflowAlias", "v2"), "MLflow reserves the aliases latest and v<number>"),
    (
        model_deployment()
        .drop("spec.model.trainingRunRef")
        .set("spec.model.uri", "s3://b/m.onnx")
        .set("spec.model.digest", DIGEST)
        .set("spec.model.mlflowAlias", "production"),
        "model.mlflowAlias needs model.trainingRunRef",
    ),
    (model_deployment().set("spec.jobs", {}), "spec.jobs.redisSecretRef: Required value"),
    (
        model_deployment().set("spec.jobs", {"redisSecretRef": {"name": "q"}, "callbackHosts": ["https://hooks.x"]}),
        "spec.jobs.callbackHosts[0] in body should match",
    ),
    (
        model_deployment().set("spec.jobs", {"redisSecretRef": {"name": "q"}, "batchRoots": ["gs://b/x/"]}),
        "the URI's scheme must be file://, s3://, http:// or https://",
    ),
    (
        model_deployment().set("spec.jobs", {"redisSecretRef": {"name": "q"}, "consumersPerPod": 0}),
        "spec.jobs.consumersPerPod in body should be greater than or equal to 1",
    ),
    # spec.experiment (docs/bad-input.md rows 329-336)
    (
        model_deployment().set("spec.experiment", ab(("a", 1, 50), ("b", 2, 40))),
        "the variants' weights must sum to 100",
    ),
    (model_deployment().set("spec.experiment", ab(("a", 1, 50), ("a", 2, 50))), "variant names must be unique"),
    (model_deployment().set("spec.experiment", ab(("a", 1, 99))), "should have at least 2 items"),
    (
        model_deployment().set("spec.experiment", ab(("a", 1, 50), ("b", 1, 50))),
        "variant versions must be unique (two variants of one model compare nothing)",
    ),
    (
        model_deployment().set(
            "spec.experiment",
            {
                **ab(("a", 1, 50)),
                "variants": [
                    {"name": "a", "version": 1, "uri": "s3://b/m.onnx", "digest": DIGEST, "weight": 50},
                    {"name": "b", "version": 2, "weight": 50},
                ],
            },
        ),
        "a variant sets exactly one of version and uri",
    ),
    (
        model_deployment().set("spec.experiment", {"variants": ab(("a", 1, 50), ("b", 2, 50))["variants"]}),
        "an experiment needs an end: duration and/or maxRequests",
    ),
    (
        model_deployment()
        .drop("spec.model.trainingRunRef")
        .set("spec.model.uri", "s3://b/m.onnx")
        .set("spec.model.digest", DIGEST)
        .set("spec.experiment", ab(("a", 1, 50), ("b", 2, 50))),
        "experiment variants with a version need model.trainingRunRef",
    ),
]


def plural(obj):
    return obj["kind"].lower() + "s"


@pytest.mark.parametrize(("builder", "message"), BAD, ids=[f"{b.obj()['kind']}-{m[:40]}" for b, m in BAD])
def test_bad_object_is_refused_with_its_message(crds, custom, namespace, builder, message):
    obj = builder.obj()
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural(obj), obj)
    assert err.value.status == 422
    assert message in json.loads(err.value.body)["message"]
    with pytest.raises(ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural(obj), obj["metadata"]["name"])
    assert missing.value.status == 404  # nothing half-stored


def test_a_bad_update_is_refused_and_the_stored_object_is_unchanged(crds, custom, namespace):
    obj = dataset("keep").obj()
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", obj)
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "datasets", "keep", {"spec": {"split": {"train": 0.9, "val": 0.9, "test": 0.0}}}
        )
    assert "must sum to 1" in json.loads(err.value.body)["message"]
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "keep")
    assert stored["spec"] == created["spec"]
    assert stored["metadata"]["generation"] == 1


def test_the_api_server_fills_in_defaults(crds, custom, namespace):
    obj = model_deployment("defaults").obj()
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", obj)
    steps = stored["spec"]["rollout"]["steps"]
    assert [s.get("setWeight") for s in steps] == [10, None, 50, None]
    assert steps[1]["analysis"]["metrics"][0] == {
        "name": "errorRate",
        "template": "errorRate",
        "max": 0.01,
        "compareToStable": False,
    }
    assert stored["spec"]["autoscaling"]["minReplicas"] == 1


EXAMPLES = REPO / "examples"


def modelops_docs(path):
    return [
        d
        for d in yaml.safe_load_all(path.read_text())
        if d and str(d.get("apiVersion", "")).startswith("modelops.dev/")
    ]


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.rglob("*.yaml") if modelops_docs(p)), ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_api_server(crds, namespace, path):
    """Server-side dry run: the schema, defaults and CEL rules of the real API server accept it."""
    stdin = yaml.safe_dump_all(modelops_docs(path))
    out = kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", stdin=stdin, check=False)
    assert out.returncode == 0, out.stderr
