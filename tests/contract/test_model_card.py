"""The trainer's model card is exactly what the inference server reads.

Neither imports the other (separate distributions and images): the trainer really trains a tiny
model (`python -m modelops_trainer.train`'s `main`, 1 epoch of 8×8 digits) and publishes
`model.onnx` with `model.onnx.card.json` beside it; the server's own loader (`fetch_model`, the
digest checks included) and runner (`ModelRunner`, ONNX Runtime with the card's preprocessing) take
them from there. A field one side writes and the other ignores, a default that differs, or
preprocessing that differs between training and serving fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from modelops_server import modelcard as server_card
from modelops_server.protocol import model_metadata
from modelops_server.runtime import ModelRunner, RuntimeOptions
from modelops_trainer import modelcard as trainer_card
from modelops_trainer import train
from modelops_trainer.config import API_VERSION
from tests.support.digits import CLASSES, digit_samples, write_digits

SIZE = 8
PER_CLASS = 30


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Any]:
    """A model trained and published by the real trainer, as a trial of a TrainingRun would be."""
    root = tmp_path_factory.mktemp("card")
    version = write_digits((root / "data").as_uri(), size=SIZE, mode="RGB", limit=PER_CLASS)
    out = root / "run"
    doc = {
        "apiVersion": API_VERSION,
        "dataset": {"uri": version.uri, "digest": version.digest},
        "model": {"architecture": "resnet18"},
        "hyperparameters": {"epochs": 1, "batchSize": 32, "learningRate": 0.003, "warmupEpochs": 0},
        "output": {"uri": out.as_uri()},
        "dataLoader": {"workers": 0},
        "logging": {"format": "json", "everySteps": 10},
        "trial": {"name": "digits-r1-t0", "parameters": {"learningRate": "0.003"}},
        "lineage": {"dataset": "digits", "trainingRun": "digits"},
        "terminationMessagePath": str(root / "termination-log"),
    }
    assert train.main(["--config-json", json.dumps(doc)]) == 0
    summary = json.loads((root / "termination-log").read_text())
    card_path = out / ("model.onnx" + trainer_card.CARD_SUFFIX)
    return {"summary": summary, "card": json.loads(card_path.read_text()), "cache": root / "cache"}


def aliases(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


#: Each part of the trainer's card and the server's model of it.
PARTS = [
    (trainer_card.ModelCard, server_card.ModelCard),
    (trainer_card.CardInput, server_card.InputSpec),
    (trainer_card.CardOutput, server_card.OutputSpec),
    (trainer_card.CardOnnx, server_card.OnnxSpec),
]


@pytest.mark.parametrize(("written", "read"), PARTS, ids=[w.__name__ for w, _ in PARTS])
def test_every_field_the_trainer_can_write_is_one_the_server_reads(written, read):
    """By the models: the server's card ignores unknown fields (a newer trainer may add some), so a
    field the trainer writes under a name the server does not know would be dropped silently."""
    assert aliases(written) <= aliases(read), aliases(written) - aliases(read)
    required = {info.alias or name for name, info in read.model_fields.items() if info.is_required()}
    assert required <= aliases(written), required - aliases(written)


def test_the_card_the_trainer_publishes_is_read_whole_by_the_server(published):
    """By a real card: parsed by the server and written back, it is the very document written."""
    written = published["card"]
    read = server_card.ModelCard.model_validate(written)
    assert read.model_dump(mode="json", by_alias=True) == written
    assert read.format == server_card.CARD_FORMAT
    assert read.classes == CLASSES and read.name == "digits" and read.architecture == "resnet18"
    assert read.onnx.digest == published["summary"]["model"]["digest"]
    assert read.lineage["trial"] == "digits-r1-t0" and read.lineage["parameters"] == {"learningRate": "0.003"}
    assert published["summary"]["model"]["modelCardUri"] == server_card.card_uri(published["summary"]["model"]["uri"])


def test_the_server_loads_the_published_model_and_scores_the_test_split_as_the_trainer_did(published):
    """The server's loader verifies the digest the operator pins (the summary's), and its
    preprocessing (the card's) with ONNX Runtime classifies the test images exactly as the
    trainer's evaluation (PyTorch, its own transforms) did: same accuracy as the card's metric."""
    model = published["summary"]["model"]
    artifact = server_card.fetch_model(
        model["uri"], expected_digest=model["digest"], version="digits:v1", cache_dir=str(published["cache"])
    )
    assert artifact.digest == model["digest"] and artifact.name == "digits"
    runner = ModelRunner(artifact.local_path, artifact.card, RuntimeOptions(device="cpu", intra_op_threads=1))
    test = [s for s in digit_samples(size=SIZE, mode="RGB", limit=PER_CLASS) if s.split == "test"]
    assert len(test) >= 20
    batch = np.stack([runner.preprocessor.image_row(s.image) for s in test])
    predicted = runner.run(batch).argmax(axis=1)
    accuracy = float(np.mean(predicted == np.array([s.label for s in test])))
    assert accuracy == pytest.approx(artifact.card.metrics["test_accuracy"], abs=1e-9)
    meta = model_metadata(artifact.card, artifact.name, artifact.version, artifact.digest)
    assert meta.inputs[0].shape == [-1, 3, SIZE, SIZE] and meta.outputs[0].shape == [-1, len(CLASSES)]


def test_a_card_that_does_not_match_its_model_is_refused_by_the_server(published, tmp_path):
    """The card's digest binds it to its ONNX file: the trainer's card beside another file (here the
    same model, one byte longer) is refused with the digests named, and nothing is loaded."""
    model = published["summary"]["model"]
    onnx = Path(model["uri"].removeprefix("file://"))
    other = tmp_path / "model.onnx"
    other.write_bytes(onnx.read_bytes() + b"\0")
    (tmp_path / "model.onnx.card.json").write_text(json.dumps(published["card"]))
    with pytest.raises(server_card.DigestMismatch, match=f"but the model card expects {model['digest']}"):
        server_card.fetch_model(other.as_uri(), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.onnx"))
