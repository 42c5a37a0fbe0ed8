"""ONNX export and the parity check: the file is valid and has the promised interface, parity
passes for the right file, and fails, failing the run, when the file or the numbers are wrong."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from modelops_trainer import train
from modelops_trainer.config import TrainConfig
from modelops_trainer.data import ImageSamples, Preprocess, eval_transform
from modelops_trainer.datasetfmt import DatasetReader
from modelops_trainer.errors import ExportError, ParityCheckFailed
from modelops_trainer.export import check_parity, export_onnx, validate_onnx
from modelops_trainer.models import build_model
from tests.support.trainconfig import config_doc
from tests.trainer.conftest import termination_message


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """A ResNet-18 for 8×8 RGB digits exported to ONNX, and 30 real validation images."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=8).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(model, path, in_channels=3, image_size=8, opset=18)
    reader = DatasetReader(tiny.uri, digest=tiny.digest)
    samples = ImageSamples(reader.index("val"), reader.manifest.image, eval_transform(reader.manifest.image))
    preprocess = Preprocess("RGB", torch.device("cpu"), channels_last=False)
    images = preprocess.images(torch.stack([samples[i][0] for i in range(len(samples))]))
    return model, path, images


def test_exported_file_is_valid_with_named_io_dynamic_batch_and_opset(exported):
    _, path, images = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, len(images)):
        (logits,) = session.run(["logits"], {"input": images[:n].numpy()})
        assert logits.shape == (n, 10) and logits.dtype == np.float32


def test_parity_passes_for_the_exported_model(exported):
    model, path, images = exported
    report = check_parity(path, model, images, atol=1e-4, rtol=1e-3)
    assert report.samples == len(images) == 30
    assert report.top1_agreement == 1.0
    assert report.max_allowed_ratio <= 1.0
    assert 0.0 <= report.max_abs_diff <= 1e-4 + 1e-3 * 100


def test_parity_fails_when_the_onnx_weights_were_changed(exported, tmp_path):
    model, path, images = exported
    proto = onnx.load(str(path))
    tensor = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight
    values = numpy_helper.to_array(tensor)
    rng = np.random.default_rng(0)
    tensor.CopyFrom(
        numpy_helper.from_array((values + rng.normal(0, 0.5, values.shape)).astype(values.dtype), tensor.name)
    )
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(proto, str(corrupted))
    with pytest.raises(ParityCheckFailed, match=r"disagree on 30 validation images.*top-1 agreement"):
        check_parity(corrupted, model, images, atol=1e-4, rtol=1e-3)


def test_parity_fails_on_a_small_drift_beyond_tolerance_even_when_top1_agrees(exported):
    model, path, images = exported
    drifted = build_model("resnet18", num_classes=10, in_channels=3, image_size=8)
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.fc.bias.add_(1e-2)  # every logit moves by 0.01: same ranking, beyond atol + rtol·|logit|
    with pytest.raises(ParityCheckFailed, match=r"top-1 agreement 100\.0%"):
        check_parity(path, drifted.eval(), images, atol=1e-4, rtol=1e-3)


def test_an_unrunnable_file_fails_parity(exported, tmp_path):
    model, path, images = exported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ParityCheckFailed, match="cannot run"):
        check_parity(broken, model, images, atol=1e-4, rtol=1e-3)


def test_validation_refuses_a_graph_with_other_names(exported, tmp_path):
    _, path, _ = exported
    proto = onnx.load(str(path))
    old = proto.graph.input[0].name
    proto.graph.input[0].name = "pixels"
    for node in proto.graph.node:
        node.input[:] = ["pixels" if name == old else name for name in node.input]
    renamed = tmp_path / "renamed.onnx"
    onnx.save(proto, str(renamed))
    with pytest.raises(ExportError, match=r"inputs \['pixels'\]"):
        validate_onnx(renamed, opset=18)
    with pytest.raises(ExportError, match="opset 18, expected 19"):
        validate_onnx(path, opset=19)


def test_a_run_whose_parity_fails_fails_with_that_reason_and_registers_nothing(tiny, tmp_path):
    """Zero tolerance demands bit-identical logits from two different runtimes (oneDNN vs ONNX
    Runtime's kernels sum in other orders), so the run must fail at parity, after training."""
    doc = config_doc(tiny, tmp_path / "run", export={"parityAtol": 0.0, "parityRtol": 0.0})
    assert train.main(["--config-json", json.dumps(doc)]) == 1
    message = termination_message(TrainConfig.model_validate(doc))
    assert message["status"] == "Failed" and message["reason"] == "ParityCheckFailed"
    assert "is not registered" in message["message"]
    assert not (tmp_path / "run" / "model.onnx").exists()
    assert not (tmp_path / "run" / "model.onnx.card.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()  # training itself succeeded
