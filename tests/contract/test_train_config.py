"""The operator and the training program agree on the config, the progress document and the summary.

Neither imports the other (separate distributions and images); these tests feed one side's output
to the other side's parser: the config a built PyTorchJob carries in `MODELOPS_TRAIN_CONFIG` must
be accepted by `python -m modelops_trainer.train`, and what the trainer serves on `/progress` and
leaves in its termination message must be what the reconciler reads.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from modelops_operator.api.trainingrun import Architecture, TrainingRunSpec, TrainingRunStatus
from modelops_operator.builders.trainingrun import CONFIG_ENV, build_pytorchjob
from modelops_operator.progress import endpoint
from modelops_operator.reconcile.progress import curve, parse_progress
from modelops_operator.reconcile.trainingrun import (
    TrainingRunObserved,
    parse_summary,
    reconcile_training_run,
)
from modelops_operator.settings import OperatorSettings
from modelops_trainer import progress as trainer_progress
from modelops_trainer.config import TrainConfig, parse_config
from modelops_trainer.reporting import write_termination_message
from tests.support.objects import search, training_run

SETTINGS = OperatorSettings(artifact_pvc="modelops-artifacts")
DIGEST = "sha256:" + "a" * 64
DATASET = {
    "status": {
        "version": "v1",
        "digest": DIGEST,
        "artifactURI": "file:///var/lib/modelops/artifacts/datasets/ns/digits/v1",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
}
ARCH = {"name": "architecture", "type": "choice", "values": ["resnet34", "mobilenet_v3_small", "efficientnet_b0"]}
LR = {"name": "learningRate", "type": "logUniform", "min": 1e-4, "max": 1e-1}
BATCH = {"name": "batchSize", "type": "int", "min": 16, "max": 256}
EPOCHS = {"name": "epochs", "type": "int", "min": 2, "max": 20}
OPTIMIZER = {"name": "optimizer", "type": "choice", "values": ["adamw", "sgd"]}
MOMENTUM = {"name": "momentum", "type": "uniform", "min": 0.5, "max": 0.99}
REALS = [
    {"name": "weightDecay", "type": "logUniform", "min": 1e-5, "max": 0.1},
    {"name": "labelSmoothing", "type": "uniform", "min": 0.0, "max": 0.3},
    {"name": "warmupEpochs", "type": "uniform", "min": 0.0, "max": 3.0},
    {"name": "gradClipNorm", "type": "uniform", "min": 0.1, "max": 5.0},
    {"name": "emaDecay", "type": "uniform", "min": 0.9, "max": 0.9999},
]


def run_obj(spec: dict[str, Any], name: str = "digits") -> dict[str, Any]:
    body = training_run(name, "digits").obj()
    body["spec"].update(spec)
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    return body


def configs(spec: dict[str, Any], name: str = "digits") -> list[tuple[dict[str, str], str]]:
    """(parameters, config JSON) of every job the first reconcile of a run creates."""
    body = run_obj(spec, name)
    out = reconcile_training_run(
        body,
        TrainingRunSpec.model_validate(body["spec"]),
        TrainingRunStatus(),
        TrainingRunObserved(dataset=DATASET),
        SETTINGS,
    )
    found = []
    for action in out.actions:
        assert action.verb == "create" and action.body is not None
        for replica in action.body["spec"]["pytorchReplicaSpecs"].values():
            env = replica["template"]["spec"]["containers"][0]["env"]
            text = next(e["value"] for e in env if e["name"] == CONFIG_ENV)
            parameters = json.loads(action.body["metadata"]["annotations"]["modelops.dev/parameters"])
            found.append((parameters, text))
    assert found
    return found


SPECS = {
    "plain": {},
    "everything-set": {
        "model": {"architecture": "convnext_tiny", "weightsUri": "s3://w/convnext.pt", "weightsDigest": DIGEST},
        "hyperparameters": {
            "epochs": 7,
            "batchSize": 128,
            "optimizer": "sgd",
            "learningRate": 0.05,
            "weightDecay": 0.0001,
            "momentum": 0.8,
            "labelSmoothing": 0.0,
            "lrSchedule": "oneCycle",
            "warmupEpochs": 0.5,
            "gradClipNorm": 0.0,
            "gradAccumulationSteps": 4,
            "mixedPrecision": "bf16",
            "channelsLast": False,
            "compile": True,
            "emaDecay": 0.999,
            "earlyStoppingPatience": 3,
            "seed": 42,
        },
        "checkpointing": {"everyEpochs": 5, "uri": "s3://bucket/ckpt"},
        "workers": {"nodes": 3, "gpusPerNode": 2},
    },
    "grid-architecture": {"search": search(ARCH, OPTIMIZER, algorithm="grid", maxTrials=6, parallelism=6)},
    "random-everything": {
        "search": search(ARCH, LR, BATCH, EPOCHS, OPTIMIZER, MOMENTUM, *REALS, maxTrials=8, parallelism=8, seed=3)
    },
    "bayesian": {"search": search(ARCH, LR, BATCH, algorithm="bayesian", maxTrials=4, parallelism=3)},
    "val-loss": {
        "search": search(LR, objective={"metric": "val_loss", "direction": "minimize"}, maxTrials=2, parallelism=2)
    },
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_config_the_operator_writes_is_one_the_trainer_accepts(spec):
    operator_spec = TrainingRunSpec.model_validate(run_obj(spec)["spec"])
    for parameters, text in configs(spec):
        config = parse_config(text, source=CONFIG_ENV)
        assert config == TrainConfig.model_validate(json.loads(text))
        assert config.dataset.uri == DATASET["status"]["artifactURI"] and config.dataset.digest == DIGEST
        assert config.trial is not None and config.trial.parameters == parameters
        assert config.lineage.training_run == "digits" and config.lineage.dataset == "digits"
        assert config.checkpointing.every_epochs == operator_spec.checkpointing.every_epochs
        assert config.output.uri.endswith(f"/runs/ns/digits/r1/{config.trial.name}")
        # the document itself carries the spec's values; the trial's apply on top
        assert config.hyperparameters.model_dump() == operator_spec.hyperparameters.model_dump()
        assert config.model.model_dump(by_alias=True, exclude_none=True) == operator_spec.model.wire()
        effective = config.effective()
        hyper = effective.hyperparameters.model_dump(by_alias=True)
        for name, value in parameters.items():
            if name == "architecture":
                assert effective.model.architecture == value
            else:
                assert str(hyper[name]) == value or float(hyper[name]) == pytest.approx(float(value)), name
        untouched = set(hyper) - set(parameters)
        assert {k: hyper[k] for k in untouched} == {k: operator_spec.hyperparameters.wire()[k] for k in untouched}
        if "architecture" not in parameters:
            assert effective.model.architecture == operator_spec.model.architecture


@pytest.mark.parametrize(
    ("spec", "metric", "maximize"),
    [
        ({}, "val_accuracy", True),
        ({"search": search(LR)}, "val_accuracy", True),
        ({"search": search(LR, objective={"metric": "val_top5"})}, "val_top5", True),
        ({"search": search(LR, objective={"metric": "val_loss", "direction": "minimize"})}, "val_loss", False),
    ],
    ids=["plain", "search-default", "top5", "val-loss-minimize"],
)
def test_the_trainer_optimises_the_operators_objective(spec, metric, maximize):
    for _, text in configs(spec):
        objective = parse_config(text).objective
        assert (objective.metric, objective.maximize) == (metric, maximize)


def _job(spec: dict[str, Any], round_: int = 1, index: int = 0, parameters: dict[str, str] | None = None):
    body = run_obj(spec)
    return build_pytorchjob(
        body,
        TrainingRunSpec.model_validate(body["spec"]),
        SETTINGS,
        round_=round_,
        index=index,
        parameters=parameters or {},
        dataset_uri=DATASET["status"]["artifactURI"],
        dataset_digest=DIGEST,
    )


def test_trial_parameters_apply_over_the_spec():
    params = {"architecture": "mobilenet_v3_small", "learningRate": "0.0123", "batchSize": "32", "epochs": "4"}
    job = _job({"hyperparameters": {"learningRate": 0.001, "batchSize": 64}}, round_=2, index=3, parameters=params)
    text = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    config = parse_config(text)
    assert config.trial.name == "digits-r2-t3"
    assert (config.model.architecture, config.hyperparameters.learning_rate) == ("resnet18", 0.001)
    eff = config.effective()
    assert eff.model.architecture == "mobilenet_v3_small"
    assert (eff.hyperparameters.learning_rate, eff.hyperparameters.batch_size, eff.hyperparameters.epochs) == (
        0.0123,
        32,
        4,
    )
    assert eff.fingerprint() != parse_config(text.replace('"0.0123"', '"0.02"')).effective().fingerprint()


@pytest.mark.parametrize("architecture", get_args(Architecture))
def test_every_architecture_the_operator_offers_exists_in_the_trainer(architecture):
    for _, text in configs({"model": {"architecture": architecture}}):
        assert parse_config(text).model.architecture == architecture


@pytest.mark.parametrize(
    "name",
    [
        "digits",
        "a" * 63,
        "a" * 45 + "-" + "b" * 17,
        "digits.v2",
    ],
    ids=["short", "63-chars", "cut-at-dash", "dotted"],
)
def test_any_run_name_gives_an_acceptable_trial_name(name):
    for _, text in configs({}, name=name):
        assert parse_config(text).lineage.training_run == name


@pytest.mark.parametrize(
    "parameter",
    [
        BATCH,
        EPOCHS,
        {"name": "batchSize", "type": "choice", "values": ["32", "64"]},
        {"name": "learningRate", "type": "int", "min": 1, "max": 3},
    ],
    ids=["batch-int", "epochs-int", "batch-choice", "lr-int"],
)
def test_a_search_the_operator_accepts_proposes_values_the_trainer_accepts(parameter):
    for _, text in configs({"search": search(parameter, algorithm="random", maxTrials=4, parallelism=4)}):
        parse_config(text).effective()


# --- what the trainer reports ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["val_accuracy", "val_top5", "val_loss"])
def test_the_trainers_progress_document_is_what_the_operator_reads(metric):
    board = trainer_progress.ProgressBoard(metric=metric, epochs=6, steps_per_epoch=10, images_per_step=64)
    history: list[dict[str, Any]] = []
    values = [0.123456789, 0.5, float("nan"), 12.75]
    for epoch, value in enumerate(values, start=1):
        for step in range(1, 11):
            board.stepped((epoch - 1) * 10 + step, step)
        history.append({"epoch": epoch, metric: value, "train_loss": 1.0 / epoch})
        board.epoch_finished(history)
    board.stepped(41, 1)
    body = json.dumps(board.snapshot(), allow_nan=False).encode()  # as the server sends it
    seen = parse_progress(body)
    assert seen is not None
    assert (seen.epoch, seen.epochs, seen.step, seen.steps_per_epoch, seen.metric) == (4, 6, 41, 10, metric)
    assert seen.images_per_second is not None and seen.images_per_second > 0
    # 19 steps of 64 images are left, at the measured rate (both rounded as served).
    assert seen.eta_seconds == pytest.approx(19 * 64 / seen.images_per_second, abs=0.1)
    assert curve(seen.history, []) == [0.123456789, 0.5, 0.5, 12.75]  # the NaN epoch: the value before


def test_the_trial_pods_progress_port_is_where_the_trainer_serves():
    job = _job({"workers": {"nodes": 2}})
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    container = master["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = trainer_progress.port_from_env(env)
    pod = {**master, "status": {"phase": "Running", "podIP": "10.1.2.3"}}
    assert endpoint(pod) == f"http://10.1.2.3:{port}/progress"
    assert master["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert master["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    assert "prometheus.io/scrape" not in (worker["metadata"].get("annotations") or {})  # only rank 0 serves


def _summary(message: str = "trained", **extra: Any) -> dict[str, Any]:
    return {
        "status": "Succeeded",
        "reason": "Succeeded",
        "message": message,
        "epochs": 3,
        "steps": 300,
        "bestEpoch": 2,
        "stoppedEarly": False,
        "objective": {"metric": "val_accuracy", "value": 0.91},
        "metrics": {"val_accuracy": 0.91, "test_top1": 0.9},
        "model": {
            "uri": "file:///var/lib/modelops/artifacts/runs/ns/digits/r1/digits-r1-t0/model.onnx",
            "digest": "sha256:" + "b" * 64,
            "opset": 18,
            "modelCardUri": "file:///var/lib/modelops/artifacts/runs/ns/digits/r1/digits-r1-t0/model.onnx.card.json",
        },
        "datasetVersion": "v1",
        "datasetDigest": DIGEST,
        "trial": "digits-r1-t0",
        **extra,
    }


@pytest.mark.parametrize(
    ("summary", "status", "reason"),
    [
        (_summary(), "Succeeded", "Succeeded"),
        (_summary("x" * 5000, parity={"maxAbsDiff": 1e-6, "samples": [0.1] * 300}), "Succeeded", "Succeeded"),
        (
            {"status": "Failed", "reason": "ParityCheckFailed", "message": "logits differ"},
            "Failed",
            "ParityCheckFailed",
        ),
        ({"status": "Preempted", "reason": "Preempted", "message": "SIGTERM"}, "Preempted", "Preempted"),
    ],
    ids=["succeeded", "oversized", "failed", "preempted"],
)
def test_the_trainers_termination_message_is_what_the_operator_reads(tmp_path, summary, status, reason):
    path = tmp_path / "termination-log"
    write_termination_message(str(path), summary)
    data = path.read_bytes()
    assert len(data) < 4096
    parsed = parse_summary(data.decode())
    assert parsed is not None and (parsed.status, parsed.reason) == (status, reason)
    if status == "Succeeded":
        assert parsed.model["uri"] == summary["model"]["uri"] and parsed.model["digest"] == summary["model"]["digest"]
        assert parsed.objective["value"] == 0.91 and parsed.epochs == 3


@pytest.mark.parametrize(
    "parameter",
    [
        {"name": "batchSize", "type": "logUniform", "min": 16, "max": 256},
        {"name": "epochs", "type": "uniform", "min": 2, "max": 9},
        {"name": "optimizer", "type": "int", "min": 1, "max": 2},
    ],
    ids=["batch-loguniform", "epochs-uniform", "optimizer-int"],
)
def test_a_search_whose_values_the_trainer_would_refuse_is_refused_up_front(parameter):
    """The same rule is a CEL rule in the CRD (the API server refuses) and a validator in the model."""
    with pytest.raises(ValidationError, match="search them with type"):
        TrainingRunSpec.model_validate({"datasetRef": {"name": "d"}, "search": search(parameter)})
