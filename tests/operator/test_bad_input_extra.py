"""Bad inputs that had no test of their own (see docs/bad-input.md): the preparation program on
tmp files, the trainer's command line and config, the server's request parser in process and a
live server (``tests/support/serving.ServerProcess``). Everything is real: real files, a real ONNX
model, a real server process on a loopback port.

A known defect gets a test marked ``xfail(strict=True)``: it asserts the answer the input should get,
fails until the defect is fixed (the reason says what the input gets meanwhile), and fails loudly
as XPASS once it is, so the marker is removed and the test then guards the fix. The defects found
so far (D1-D8 in docs/bad-input.md) are all fixed.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from modelops_server import errors, protocol
from modelops_server.modelcard import ModelCard
from modelops_trainer import train
from modelops_trainer.config import parse_config
from modelops_trainer.errors import ConfigError
from modelops_trainer.prepare.__main__ import main as prepare_main
from modelops_trainer.prepare.config import CONFIG_ENV
from modelops_trainer.prepare.config import load_config as load_prepare_config
from tests.support.serving import CLASSES, MEAN, SIZE, STD, ServerProcess, export_model, image_bytes, metric_value

# --- the preparation program ------------------------------------------------------------------------


def _prepare(tmp: Path, sources: list[dict[str, Any]] | None = None, *, text: str | None = None) -> tuple[int, dict]:
    """Run `python -m modelops_trainer.prepare --config FILE` in process: (exit status, termination message)."""
    doc = {
        "dataset": {"name": "t"},
        "sources": sources,
        "output": {"uri": f"file://{tmp / 'out'}"},
        "preprocessing": {"imageSize": 16, "format": "png"},
        "workers": 1,
    }
    path = tmp / "config.json"
    path.write_text(text if text is not None else json.dumps(doc))
    term = tmp / "termination-log"
    code = prepare_main(["--config", str(path), "--termination-log", str(term), "--log-format", "json"])
    return code, json.loads(term.read_text())


def _corrupt_archive(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "corrupt.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    return [{"uri": f"file://{path}", "format": "archive"}]


def _csv_without_columns(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "list.csv"
    path.write_text("path,class\nx.png,a\n")
    return [{"uri": f"file://{path}", "format": "csv"}]


def _jsonl_not_objects(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "list.jsonl"
    path.write_text("[1, 2]\n")
    return [{"uri": f"file://{path}", "format": "jsonl"}]


def _jsonl_not_json(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "list.jsonl"
    path.write_text("{not json\n")
    return [{"uri": f"file://{path}", "format": "jsonl"}]


def _tar_with_symlink(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("digits/1/a.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    return [{"uri": f"file://{path}", "format": "archive"}]


def _zip_with_absolute_name(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "abs.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("/abs/1/a.png", b"x")
    return [{"uri": f"file://{path}", "format": "archive"}]


def _file_as_folder(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "image.png"
    path.write_bytes(image_bytes(0))
    return [{"uri": f"file://{path}"}]


@pytest.mark.parametrize(
    ("make", "reason", "fragment"),
    [
        (_corrupt_archive, "InvalidSource", "is not a readable tar or zip archive"),
        (_csv_without_columns, "InvalidSource", "row 1 lacks 'uri' or 'label'"),
        (_jsonl_not_objects, "InvalidSource", "row 1 lacks 'uri' or 'label'"),
        (_jsonl_not_json, "InvalidSource", "cannot be parsed"),
        (_tar_with_symlink, "UnsafeArchive", "'digits/1/a.png' is a link, a device or escapes the archive's root"),
        (_zip_with_absolute_name, "UnsafeArchive", "'/abs/1/a.png' is a link, a device or escapes the archive's root"),
        (_file_as_folder, "SourceUnreachable", "is not a folder (or does not exist)"),
    ],
    ids=[
        "corrupt-archive",
        "csv-without-columns",
        "jsonl-not-objects",
        "jsonl-not-json",
        "tar-symlink",
        "zip-absolute-name",
        "file-as-folder",
    ],
)
def test_prepare_refuses_a_bad_source_with_its_reason(tmp_path, make, reason, fragment):
    code, message = _prepare(tmp_path, make(tmp_path))
    assert code == 1
    assert message["ok"] is False and message["reason"] == reason
    assert fragment in message["message"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*/manifest.json"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "the config is not JSON"),
        (
            json.dumps({"dataset": {"name": "t"}, "sources": [{"uri": "file:///x", "format": "parquet"}]}),
            "invalid config: sources.0.format: Input should be 'imageFolder', 'archive', 'csv' or 'jsonl'",
        ),
    ],
    ids=["not-json", "unknown-format-and-no-output"],
)
def test_prepare_refuses_a_bad_config_file_with_exit_2(tmp_path, text, fragment):
    code, message = _prepare(tmp_path, text=text)
    assert code == 2 and message["reason"] == "InvalidConfig"
    assert fragment in message["message"]


PREPARE_BASE = {"dataset": {"name": "t"}, "sources": [{"uri": "file:///x"}], "output": {"uri": "file:///o"}}


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"workers": True}, "invalid config: workers: Input should be a valid integer, not a boolean"),
        ({"preprocessing": {"imageSize": True}}, "preprocessing.imageSize: Input should be a valid integer, not a"),
        ({"cleaning": {"minWidth": False}}, "cleaning.minWidth: Input should be a valid integer, not a boolean"),
        ({"split": {"train": True}}, "split.train: Input should be a valid number, not a boolean"),
        ({"split": {"seed": False}}, "split.seed: Input should be a valid integer, not a boolean"),
        ({"augmentation": {"randAugmentOps": True}}, "augmentation.randAugmentOps: Input should be a valid integer"),
        ({"augmentation": {"colorJitter": {"hue": False}}}, "augmentation.colorJitter.hue: Input should be a valid"),
        (
            {"augmentation": {"randomResizedCropScale": [0.5, True]}},
            "augmentation.randomResizedCropScale: item 1: Input should be a valid number, not a boolean",
        ),
    ],
    ids=["workers", "image-size", "min-width", "split-train", "split-seed", "rand-augment-ops", "hue", "crop-scale"],
)
def test_prepare_refuses_booleans_for_every_number(tmp_path, section, fragment):
    code, message = _prepare(tmp_path, text=json.dumps({**PREPARE_BASE, **section}))
    assert code == 2 and message["reason"] == "InvalidConfig"
    assert fragment in message["message"]


def test_prepare_still_takes_booleans_and_numeric_strings_where_they_belong(tmp_path):
    path = tmp_path / "config.json"
    doc = {
        **PREPARE_BASE,
        "workers": "3",
        "cleaning": {"dropDuplicates": False},
        "augmentation": {"horizontalFlip": False, "verticalFlip": True, "randomResizedCropScale": [0.5, 1]},
    }
    path.write_text(json.dumps(doc))
    config = load_prepare_config(path)
    assert (config.workers, config.cleaning.drop_duplicates) == (3, False)
    augmentation = config.augmentation
    assert (augmentation.horizontal_flip, augmentation.vertical_flip) == (False, True)
    assert augmentation.random_resized_crop_scale == [0.5, 1.0]


def test_prepare_without_any_config_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    term = tmp_path / "termination-log"
    assert prepare_main(["--termination-log", str(term), "--log-format", "json"]) == 2
    message = json.loads(term.read_text())
    assert message == {
        "ok": False,
        "reason": "InvalidConfig",
        "message": "no config: pass --config FILE or set MODELOPS_PREPARE_CONFIG",
    }
    assert prepare_main(["--config", str(tmp_path / "absent.json"), "--termination-log", str(term)]) == 2
    assert "cannot read the config file" in json.loads(term.read_text())["message"]


def test_an_empty_source_says_it_listed_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    code, message = _prepare(tmp_path, [{"uri": f"file://{tmp_path / 'empty'}"}])
    assert code == 1 and message["reason"] == "NoImagesLeft"
    assert message["message"].startswith(f"the sources listed no images (file://{tmp_path / 'empty'}): ")


def test_a_manifest_that_is_not_utf8_is_an_invalid_source(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"uri,label\n/x/\xe9.png,a\n")
    code, message = _prepare(tmp_path, [{"uri": f"file://{path}", "format": "csv"}])
    assert code == 1 and message["reason"] == "InvalidSource"
    assert message["message"] == (
        f"manifest file://{path} is not UTF-8 text: line 2: invalid continuation byte (byte 0xe9); save it as UTF-8"
    )


def test_a_broken_jsonl_row_is_named(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"uri": "a.png", "label": "a"}\n{not json\n')
    code, message = _prepare(tmp_path, [{"uri": f"file://{path}", "format": "jsonl"}])
    assert code == 1 and message["reason"] == "InvalidSource"
    expected = "cannot be parsed: line 2 column 2: Expecting property name enclosed in double quotes"
    assert message["message"] == f"manifest file://{path} {expected}"


# --- the trainer ----------------------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
BASE = (
    '{"apiVersion": "modelops.dev/train-config/v1", "dataset": {"uri": "file:///d", "digest": "' + DIGEST + '"}, '
    '"output": {"uri": "file:///o"}, %s}'
)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ('"hyperparameters": {"learningRate": NaN}', "hyperparameters.learningRate: Input should be less than or"),
        ('"hyperparameters": {"learningRate": Infinity}', "hyperparameters.learningRate: Input should be less than"),
        ('"hyperparameters": {"epochs": 1e9}', "hyperparameters.epochs: Input should be less than or equal to 10000"),
        ('"export": {"parityAtol": NaN}', "export.parityAtol: Input should be greater than or equal to 0 (got nan)"),
        ('"trial": {"name": "t", "parameters": {"epochs": "2.5"}}', "epochs: Input should be a valid integer"),
        ('"trial": {"name": "t", "parameters": {"batchSize": "-3"}}', "batchSize: Input should be greater than or"),
    ],
    ids=["lr-nan", "lr-infinity", "epochs-huge", "parity-atol-nan", "trial-epochs-fraction", "trial-batch-negative"],
)
def test_trainer_refuses_non_finite_and_out_of_range_numbers(section, fragment):
    """Python's JSON reader accepts NaN and Infinity; the config's bounds refuse them."""
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE % section)
    assert fragment in str(refused.value)
    assert refused.value.exit_code == 2 and refused.value.reason == "InvalidConfig"


def test_trainer_refuses_two_config_sources_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        train.main(["--config", "/c.json", "--config-json", "{}"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_trainer_refuses_a_boolean_epoch_count():
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE % '"hyperparameters": {"epochs": true}')
    assert str(refused.value) == (
        "config is invalid: hyperparameters.epochs: Input should be a valid integer, not a boolean (got True)"
    )
    assert refused.value.reason == "InvalidConfig" and refused.value.exit_code == 2


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ('"hyperparameters": {"batchSize": true}', "hyperparameters.batchSize: Input should be a valid integer, not a"),
        ('"hyperparameters": {"seed": false}', "hyperparameters.seed: Input should be a valid integer, not a boolean"),
        (
            '"hyperparameters": {"learningRate": true}',
            "hyperparameters.learningRate: Input should be a valid number, not",
        ),
        ('"dataLoader": {"workers": true}', "dataLoader.workers: Input should be a valid integer, not a boolean"),
        ('"export": {"parityAtol": false}', "export.parityAtol: Input should be a valid number, not a boolean"),
        ('"trial": {"name": "t", "parameters": {"epochs": "true"}}', "trial.parameters: epochs: Input should be a"),
    ],
    ids=["batch-size", "seed", "learning-rate", "workers", "parity-atol", "trial-epochs"],
)
def test_trainer_refuses_booleans_for_every_number(section, fragment):
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE % section)
    assert fragment in str(refused.value)
    assert refused.value.reason == "InvalidConfig" and refused.value.exit_code == 2


def test_trainer_still_takes_booleans_and_numeric_trial_strings_where_they_belong():
    config = parse_config(
        BASE % '"hyperparameters": {"compile": true, "channelsLast": false}, '
        '"trial": {"name": "t", "parameters": {"epochs": "3", "learningRate": "0.02"}}'
    )
    hyper = config.effective().hyperparameters
    assert (hyper.compile, hyper.channels_last, hyper.epochs, hyper.learning_rate) == (True, False, 3, 0.02)


def test_a_bad_trial_parameter_message_is_not_a_config_dump():
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE % '"trial": {"name": "t", "parameters": {"learningRate": "fast"}}')
    # The whole message: the field, the rule and the value given, and nothing else (no config dump).
    assert str(refused.value) == (
        "config is invalid: trial.parameters: learningRate: Input should be a valid number, "
        "unable to parse string as a number (got 'fast')"
    )
    assert refused.value.reason == "InvalidConfig" and refused.value.exit_code == 2


# --- the server's request parser, in process ----------------------------------------------------------------

CARD = ModelCard.model_validate(
    {
        "format": "modelops.modelcard/v1",
        "name": "extra",
        "classes": CLASSES,
        "input": {
            "name": "input",
            "imageSize": 8,
            "colorMode": "RGB",
            "resizeMode": "shorterSideCrop",
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits"},
        "onnx": {"file": "model.onnx", "digest": DIGEST},
    }
)
PIXEL_ROW = [0] * (2 * 2 * 3)
IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}


@pytest.mark.parametrize(
    ("doc", "header", "fragment"),
    [
        ({"inputs": [IMAGE, IMAGE]}, None, "exactly one input is expected ('input' (FP32), 'image' (BYTES)"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}, None, "has neither 'data' nor"),
        ({"inputs": [{**IMAGE, "shape": [2]}]}, None, "input 'image' has shape [2] but 1 elements"),
        ({"inputs": [{**IMAGE, "shape": [1, 2]}]}, None, "input 'image' must have shape [N] or [N, 1]; got [1, 2]"),
        ({"inputs": []}, None, "invalid inference request: inputs: List should have at least 1 item"),
        ({"inputs": [IMAGE]}, 0, "Inference-Header-Content-Length 0 is outside the body"),
        ({"inputs": [{"name": "input", "shape": [], "datatype": "FP32", "data": []}]}, None, "invalid shape []"),
        (
            {"inputs": [{"name": "pixels", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1.5] * 12}]},
            None,
            "UINT8 data must be integers in 0..255",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [True] * 192}]},
            None,
            "got 192 of kind bool",
        ),
        (
            {"inputs": [{"name": "pixels", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": PIXEL_ROW}]},
            None,
            None,
        ),
    ],
    ids=[
        "two-inputs",
        "no-data",
        "bytes-count",
        "bytes-2d-shape",
        "empty-inputs",
        "header-length-zero",
        "empty-shape",
        "uint8-fractions",
        "fp32-booleans",
        "good-pixels",
    ],
)
def test_parser_refuses_with_a_request_error(doc, header, fragment):
    body = json.dumps(doc).encode()
    if fragment is None:  # the control: the same shapes done right parse
        assert protocol.parse_request(body, header, CARD, max_rows=16).rows == 1
        return
    with pytest.raises(errors.RequestError) as refused:
        protocol.parse_request(body, header, CARD, max_rows=16, content_type="application/json")
    assert fragment in str(refused.value)
    assert errors.http_status(refused.value) == 400


# --- a live server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = export_model(tmp_path_factory.mktemp("extra-model"), seed=1)
    proc = ServerProcess(model=model.path, args=["--model-digest", model.digest, "--max-body-bytes", str(4 << 20)])
    proc.start(tmp_path_factory.mktemp("extra-logs"))
    yield proc
    assert proc.stop() == 0, proc.logs()


def _infer(server: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{server.url}/v2/models/tiny-cnn/infer",
        data=body,
        headers=headers or {"Content-Type": "application/json"},
        timeout=30,
    )


def _binary(doc: dict[str, Any], raw: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def test_classify_refuses_top_k_above_100(server):
    r = requests.post(
        f"{server.url}/v1/models/tiny-cnn:classify",
        data=image_bytes(1),
        headers={"Content-Type": "image/png"},
        params={"top_k": "101"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json() == {"error": "top_k must be between 1 and 100"}


def test_classify_of_an_unknown_model_is_404(server):
    r = requests.post(
        f"{server.url}/v1/models/nope:classify", data=image_bytes(1), headers={"Content-Type": "image/png"}, timeout=30
    )
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope' is not served here; this server serves 'tiny-cnn'"}


def test_pixels_with_a_zero_dimension_in_binary_are_400(server):
    body, headers = _binary(
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 0, 2, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 0}}
            ]
        },
        b"",
    )
    r = _infer(server, body, headers)
    assert r.status_code == 400 and r.json() == {"error": "UINT8 pixels have a zero dimension"}


def test_fp32_json_beyond_float32_is_400(server):
    n = 3 * SIZE * SIZE
    doc = {"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [1e39] * n}]}
    r = _infer(server, json.dumps(doc).encode())
    assert r.status_code == 400 and r.json() == {"error": "input 'input': FP32 data must be finite numbers"}


@pytest.mark.parametrize("shape", [[1, 0, 2, 3], [0, 2, 2, 3]], ids=["zero-height", "zero-rows"])
def test_pixels_with_a_zero_dimension_in_json_are_400(server, shape):
    doc = {"inputs": [{"name": "pixels", "shape": shape, "datatype": "UINT8", "data": []}]}
    r = _infer(server, json.dumps(doc).encode())
    assert r.status_code == 400 and r.json() == {"error": f"input 'pixels': shape {shape} has a zero dimension"}


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_fp32_in_binary_is_400(server, value):
    n = 3 * SIZE * SIZE
    body, headers = _binary(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIZE, SIZE],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4 * n},
                }
            ]
        },
        np.full(n, value, dtype="<f4").tobytes(),
    )
    r = _infer(server, body, headers)
    assert r.status_code == 400 and r.json() == {"error": "input 'input': FP32 data must be finite numbers"}, r.text


def test_a_malformed_multipart_body_is_400(server):
    r = requests.post(
        f"{server.url}/v1/models/tiny-cnn:classify",
        data=b"--xx\r\nbroken",
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"].startswith("malformed multipart body: "), r.text


def test_the_server_still_serves_after_the_extra_bad_input(server):
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    r = requests.post(
        f"{server.url}/v1/models/tiny-cnn:classify",
        data=image_bytes(2),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric_value(metrics, "modelops_requests_total", code="200") >= 1
