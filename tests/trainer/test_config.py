"""The training config: bad configs refused with messages that name the field, the command line's
answers, and the contract with the operator's TrainingRun models."""

from __future__ import annotations

import json
import re
import typing

import pytest
from pydantic import BaseModel

from modelops_operator.api import trainingrun as operator_api
from modelops_trainer import train
from modelops_trainer.config import SEARCHABLE, Hyperparameters, TrainConfig, parse_config
from modelops_trainer.errors import ConfigError, DigestMismatch
from tests.support.trainconfig import config_doc, make_config
from tests.trainer.conftest import REPO, run_trainer, termination_message

GOOD_DIGEST = "sha256:" + "a" * 64


def _doc(**sections):
    base = {
        "apiVersion": "modelops.dev/train-config/v1",
        "dataset": {"uri": "file:///data/digits/0123456789ab", "digest": GOOD_DIGEST},
        "output": {"uri": "file:///runs/r1"},
    }
    base.update(sections)
    return base


def _without(key):
    doc = _doc()
    del doc[key]
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(apiVersion="modelops.dev/train-config/v2"), "apiVersion must be 'modelops.dev/train-config/v1'"),
        (_without("dataset"), "dataset: Field required"),
        (_without("output"), "output: Field required"),
        (_doc(dataset={"uri": "file:///d", "digest": "md5:abc"}), "dataset.digest: String should match pattern"),
        (_doc(dataset={"uri": "not a uri", "digest": GOOD_DIGEST}), "dataset.uri: String should match pattern"),
        (_doc(dataset={"uri": "gs://b/d", "digest": GOOD_DIGEST}), "dataset.uri: gs:// is not supported"),
        (_doc(output={"uri": "abfs://c/runs"}), "output.uri: abfs:// is not supported"),
        (_doc(hyperparameters={"learningRate": -1}), "hyperparameters.learningRate: Input should be greater than 0"),
        (
            _doc(hyperparameters={"batchSize": 0}),
            "hyperparameters.batchSize: Input should be greater than or equal to 1",
        ),
        (_doc(hyperparameters={"optimizer": "adam"}), "hyperparameters.optimizer: Input should be 'adamw' or 'sgd'"),
        (_doc(hyperparameters={"mixedPrecision": "fp8"}), "hyperparameters.mixedPrecision"),
        (_doc(hyperparameters={"epochs": "many"}), "hyperparameters.epochs: Input should be a valid integer"),
        (_doc(hyperparameters={"learningrate": 0.1}), "hyperparameters.learningrate: Extra inputs are not permitted"),
        (_doc(model={"architecture": "resnet19"}), "unknown architecture 'resnet19' (similar: resnet101"),
        (_doc(model={"weightsUri": "file:///w.pt"}), "weightsUri and weightsDigest go together"),
        (_doc(objective={"metric": "accuracy"}), "objective.metric: Input should be 'val_accuracy'"),
        (_doc(export={"opset": 11}), "export.opset: Input should be greater than or equal to 18"),
        (_doc(trial={"name": "t1", "parameters": {"dropout": "0.1"}}), "trial.parameters.dropout.[key]"),
        (_doc(trial={"name": "t1", "parameters": {"learningRate": "fast"}}), "trial.parameters: learningRate"),
        (_doc(trial={"name": "t1", "parameters": {"architecture": "lenet"}}), "unknown architecture 'lenet'"),
        (_doc(trial={"name": "Trial_1"}), "trial.name: String should match pattern"),
        (_doc(surprise=True), "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(doc, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(json.dumps(doc))
    assert message in str(refused.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as refused:
        parse_config(json.dumps(_doc(hyperparameters={"epochs": 0, "momentum": 1.5}, output={})))
    text = str(refused.value)
    assert "hyperparameters.epochs" in text and "hyperparameters.momentum" in text and "output.uri" in text


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null"])
def test_non_json_configs_are_refused(text):
    with pytest.raises(ConfigError, match="config"):
        parse_config(text)


def test_the_command_line_refuses_a_bad_config_with_exit_status_2(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_doc(hyperparameters={"learningRate": 0})))
    result = run_trainer(["--config", str(path)], timeout=120)
    assert result.returncode == 2
    assert "hyperparameters.learningRate: Input should be greater than 0 (got 0)" in result.stderr
    missing = run_trainer(["--config", str(tmp_path / "absent.json")], timeout=120)
    assert missing.returncode == 2 and "cannot read the config" in missing.stderr


def test_check_prints_the_effective_config_and_schema_documents_every_field(capsys):
    doc = _doc(trial={"name": "t1", "parameters": {"epochs": "3", "architecture": "mobilenet_v3_small"}})
    assert train.main(["--check", "--config-json", json.dumps(doc)]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert effective["hyperparameters"]["epochs"] == 3
    assert effective["model"]["architecture"] == "mobilenet_v3_small"
    assert effective["hyperparameters"]["batchSize"] == 64  # the default, written out
    assert train.main(["--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    hyper = schema["$defs"]["Hyperparameters"]["properties"]
    assert all(field.get("description") for field in hyper.values())


def test_help_explains_the_program(capsys):
    with pytest.raises(SystemExit) as exited:
        train.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("--config", "model.onnx.card.json", "torchrun", "ParityCheckFailed", "rerun to resume"):
        assert phrase in text


def test_runtime_refusals_name_the_cause(tiny, tmp_path):
    too_big = make_config(tiny, tmp_path / "a", hyperparameters={"batchSize": 200, "gradAccumulationSteps": 2})
    with pytest.raises(ConfigError, match="exceeds the 240 training images"):
        train.run(too_big)
    wrong = make_config(tiny, tmp_path / "b", dataset={"digest": GOOD_DIGEST})
    with pytest.raises(DigestMismatch, match="dataset manifest"):
        train.run(wrong)


def test_a_failed_run_leaves_its_reason_in_the_termination_message(tiny, tmp_path):
    doc = config_doc(tiny, tmp_path / "run", dataset={"digest": GOOD_DIGEST})
    assert train.main(["--config-json", json.dumps(doc)]) == 1
    message = termination_message(TrainConfig.model_validate(doc))
    assert message["status"] == "Failed" and message["reason"] == "DigestMismatch"
    assert GOOD_DIGEST in message["message"]


# --- the contract with the operator ------------------------------------------------------------


def test_hyperparameters_match_the_operators_names_bounds_and_defaults():
    ours = Hyperparameters.model_json_schema(by_alias=True)["properties"]
    theirs = operator_api.Hyperparameters.model_json_schema(by_alias=True)["properties"]
    assert list(ours) == list(theirs)
    keys = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "type")
    for name in ours:
        assert {k: ours[name].get(k) for k in keys} == {k: theirs[name].get(k) for k in keys}, name
    assert Hyperparameters().model_dump(by_alias=True) == operator_api.Hyperparameters().model_dump(by_alias=True)


def test_searchable_names_match_the_operators():
    assert SEARCHABLE == operator_api.SEARCHABLE


def test_the_operators_spec_converts_into_a_config():
    spec = operator_api.TrainingRunSpec.model_validate(
        {
            "datasetRef": {"name": "digits"},
            "model": {"architecture": "resnet34"},
            "hyperparameters": {"epochs": 3, "mixedPrecision": "bf16", "emaDecay": 0.999},
        }
    )
    config = TrainConfig.model_validate(
        _doc(
            model=spec.model.wire(),
            hyperparameters=spec.hyperparameters.wire(),
            checkpointing={"everyEpochs": spec.checkpointing.every_epochs},
        )
    )
    assert config.hyperparameters.model_dump() == spec.hyperparameters.model_dump()
    assert config.model.architecture == "resnet34"


def test_trial_parameters_override_and_change_the_fingerprint_but_output_does_not():
    base = TrainConfig.model_validate(_doc())
    trial = TrainConfig.model_validate(_doc(trial={"name": "t2", "parameters": {"learningRate": "0.01"}}))
    moved = TrainConfig.model_validate(_doc(output={"uri": "file:///elsewhere"}, dataLoader={"workers": 3}))
    assert trial.effective().hyperparameters.learning_rate == 0.01
    assert trial.hyperparameters.learning_rate == 0.001  # the document itself is unchanged
    assert trial.fingerprint() != base.fingerprint()
    assert moved.fingerprint() == base.fingerprint()


def _paths(model, prefix=""):
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        yield path
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _paths(arg, path + ".")


def test_the_readme_documents_every_config_field():
    readme = (REPO / "trainer_image" / "README.md").read_text()
    readme = readme.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z.]+)` \|", readme, re.MULTILINE))
    leaves = {p for p in _paths(TrainConfig) if not any(q.startswith(p + ".") for q in _paths(TrainConfig))}
    assert leaves - documented == set()
    assert documented - set(_paths(TrainConfig)) == set()
