"""Training for real: ResNet-18 learns the digits, and the run writes everything it promises
(metrics per epoch, evaluation, ONNX model, model card per docs/contracts.md, summary)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from modelops_trainer import storage, train
from modelops_trainer.datasetfmt import DatasetReader
from tests.support.trainconfig import make_config
from tests.trainer.conftest import REPO, termination_message

#: The stated bar: 3 epochs of ResNet-18 on 16×16 digits from scratch reach at least 90% top-1 on
#: the held-out test split (chance is 10%). Measured here: 98–99%.
TARGET_ACCURACY = 0.90


@pytest.fixture(scope="module")
def trained(digits16, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits-resnet"
    config = make_config(
        digits16,
        out,
        hyperparameters={"epochs": 3, "batchSize": 64, "learningRate": 0.003},
        lineage={"dataset": "digits", "trainingRun": "digits-resnet"},
        logging={"everySteps": 10},
    )
    config_path = out.parent / "config.json"
    config_path.write_text(config.to_json())
    assert train.main(["--config", str(config_path)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    return config, summary, out


@pytest.mark.slow
def test_resnet18_learns_the_digits_well_above_chance(trained):
    _, summary, out = trained
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert summary["metrics"]["test_accuracy"] >= TARGET_ACCURACY
    assert summary["metrics"]["val_accuracy"] >= TARGET_ACCURACY
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert summary["bestEpoch"] == max(history, key=lambda r: r["val_accuracy"])["epoch"]
    for record in history:
        assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr", "step"} <= set(record)
        assert 0.0 <= record["val_accuracy"] <= record["val_top5"] <= 1.0


@pytest.mark.slow
def test_evaluation_has_per_class_precision_recall_and_confusion(trained):
    _, summary, out = trained
    report = json.loads((out / "evaluation.json").read_text())
    test = report["test"]
    counts = np.array(test["confusionMatrix"]["counts"])
    assert counts.shape == (10, 10) and counts.sum() == test["images"] == 176
    assert test["top1"] == pytest.approx(np.trace(counts) / counts.sum())
    assert test["top1"] == pytest.approx(summary["metrics"]["test_accuracy"])
    for c, name in enumerate(test["confusionMatrix"]["classes"]):
        per = test["perClass"][name]
        assert per["support"] == counts[c].sum()
        assert per["recall"] == pytest.approx(counts[c, c] / counts[c].sum())
        assert per["precision"] == pytest.approx(counts[c, c] / counts[:, c].sum() if counts[:, c].sum() else 0.0)


def _contract_example() -> dict:
    text = (REPO / "docs" / "contracts.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.DOTALL)
    assert block, "docs/contracts.md has no JSON model card example"
    return json.loads(block.group(1))


def _shape(doc):
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items() if k not in {"metrics", "parameters"}}
    return type(doc).__name__ if not isinstance(doc, int | float) or isinstance(doc, bool) else "number"


@pytest.mark.slow
def test_model_card_follows_the_contract(trained, digits16):
    _, summary, out = trained
    card = json.loads((out / "model.onnx.card.json").read_text())
    assert _shape(card) == _shape(_contract_example())
    onnx_bytes = (out / "model.onnx").read_bytes()
    assert card["onnx"]["digest"] == storage.sha256_bytes(onnx_bytes) == summary["model"]["digest"]
    assert card["onnx"] == {"file": "model.onnx", "digest": card["onnx"]["digest"], "opset": 18, "dynamicBatch": True}
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["input"] | {"mean": None, "std": None} == {
        "name": "input",
        "layout": "NCHW",
        "dtype": "float32",
        "imageSize": 16,
        "colorMode": "L",
        "resizeMode": "shorterSideCrop",
        "mean": None,
        "std": None,
    }
    assert len(card["input"]["mean"]) == len(card["input"]["std"]) == 1
    assert card["lineage"]["datasetDigest"] == digits16.digest
    assert card["lineage"]["datasetVersion"] == digits16.version
    assert (card["name"], card["lineage"]["dataset"], card["lineage"]["trainingRun"]) == (
        "digits-resnet",
        "digits",
        "digits-resnet",
    )
    assert card["metrics"]["test_top1"] == summary["metrics"]["test_accuracy"]


@pytest.mark.slow
def test_termination_message_summarises_the_run(trained):
    config, summary, out = trained
    raw = Path(config.termination_message_path).read_bytes()
    assert len(raw) < 4096
    message = termination_message(config)
    assert message["status"] == "Succeeded"
    assert message["model"]["uri"] == (out / "model.onnx").as_uri()
    assert message["model"]["modelCardUri"] == (out / "model.onnx.card.json").as_uri()
    assert message["objective"] == {"metric": "val_accuracy", "value": summary["metrics"]["val_accuracy"]}
    assert message["parity"]["top1Agreement"] == 1.0
    assert message["metrics"] == summary["metrics"] and message["bestEpoch"] == summary["bestEpoch"]


@pytest.mark.slow
def test_a_server_following_the_card_gets_the_reported_accuracy(trained, digits16):
    """Decode the test images as the card says (mode, scale, mean/std) and run the ONNX file."""
    _, summary, out = trained
    card = json.loads((out / "model.onnx.card.json").read_text())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    mean = np.array(card["input"]["mean"], dtype=np.float32)[:, None, None]
    std = np.array(card["input"]["std"], dtype=np.float32)[:, None, None]
    batch, labels = [], []
    for data, label in DatasetReader(digits16.uri, digest=digits16.digest).iter_split("test"):
        img = Image.open(io.BytesIO(data)).convert(card["input"]["colorMode"])
        assert img.size == (card["input"]["imageSize"],) * 2
        pixels = np.asarray(img, dtype=np.float32)[None] / 255.0
        batch.append((pixels - mean) / std)
        labels.append(label)
    logits = session.run(["logits"], {"input": np.stack(batch)})[0]
    accuracy = float(np.mean(logits.argmax(axis=1) == np.array(labels)))
    assert accuracy == pytest.approx(summary["metrics"]["test_accuracy"], abs=1 / len(labels))


def test_trial_mode_applies_its_parameters_and_reports_the_objective(tiny, tmp_path, capsys):
    config = make_config(
        tiny,
        tmp_path / "trial",
        hyperparameters={"epochs": 2},
        trial={"name": "digits-resnet-t3", "parameters": {"learningRate": "0.002", "batchSize": "16"}},
        lineage={"trainingRun": "digits-resnet"},
    )
    summary = train.run(config)
    used = json.loads((tmp_path / "trial" / "config.json").read_text())
    assert used["hyperparameters"]["learningRate"] == 0.002 and used["hyperparameters"]["batchSize"] == 16
    assert summary["trial"] == "digits-resnet-t3"
    assert summary["steps"] == 2 * (240 // 16)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch=")]
    assert [line.split()[0] for line in lines] == ["epoch=1", "epoch=2"]
    assert all(re.fullmatch(r"epoch=\d+ val_accuracy=[0-9.e-]+", line) for line in lines)
    card = json.loads((tmp_path / "trial" / "model.onnx.card.json").read_text())
    assert card["lineage"]["trial"] == "digits-resnet-t3"
    assert card["lineage"]["parameters"] == {"learningRate": "0.002", "batchSize": "16"}
    assert card["input"]["colorMode"] == "RGB" and len(card["input"]["mean"]) == 3


def test_early_stopping_stops_when_the_objective_stalls(tiny, tmp_path):
    # A learning rate of 1e-8 leaves the weights where they are: the objective cannot keep improving.
    config = make_config(
        tiny,
        tmp_path / "stall",
        hyperparameters={"epochs": 10, "learningRate": 1e-8, "earlyStoppingPatience": 2},
    )
    summary = train.run(config)
    history = [json.loads(line) for line in (tmp_path / "stall" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stoppedEarly"] is True
    assert len(history) < 10
    best = summary["bestEpoch"]
    assert len(history) == best + 2
    assert all(r["val_accuracy"] <= history[best - 1]["val_accuracy"] for r in history[best:])


@pytest.mark.parametrize(
    "hyperparameters",
    [
        pytest.param({"mixedPrecision": "fp16"}, id="fp16-with-loss-scaling"),
        pytest.param({"compile": True}, id="torch-compile", marks=pytest.mark.slow),
    ],
)
def test_other_execution_modes_train_and_export(tiny, tmp_path, hyperparameters):
    config = make_config(tiny, tmp_path / "run", hyperparameters={"epochs": 1, **hyperparameters})
    summary = train.run(config)
    assert summary["status"] == "Succeeded" and summary["parity"]["top1Agreement"] == 1.0
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: used["hyperparameters"][k] for k in hyperparameters} == hyperparameters
