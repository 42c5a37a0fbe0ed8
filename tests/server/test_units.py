"""In-process parts: preprocessing against the contract, the model card, settings, the error table."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modelops_server import errors, protocol
from modelops_server.config import Settings, build_parser, load_settings
from modelops_server.imaging import Preprocessor
from modelops_server.modelcard import InputSpec, fetch_model
from tests.support.serving import MEAN, STD, ExportedModel, write_card
from tests.support.tools import import_or_missing


def spec(mode: str = "shorterSideCrop", color: str = "RGB", size: int = 32) -> InputSpec:
    channels = 3 if color == "RGB" else 1
    return InputSpec.model_validate(
        {
            "name": "input",
            "imageSize": size,
            "colorMode": color,
            "resizeMode": mode,
            "mean": MEAN[:channels],
            "std": STD[:channels],
        }
    )


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth test picture (gradients resample predictably, unlike noise)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8))


def reference(img: Image.Image, mode: str, size: int = 32) -> np.ndarray:
    """The contract's resize written the plain way, step by step (docs/contracts.md)."""
    w, h = img.size
    if mode == "stretch":
        out = img.resize((size, size), Image.Resampling.BILINEAR)
    elif mode == "shorterSideCrop":
        scale = size / min(w, h)
        resized = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        out = resized.crop((left, top, left + size, top + size))
    else:
        scale = size / max(w, h)
        resized = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        out = Image.new("RGB", (size, size))
        out.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("mode", ["shorterSideCrop", "pad", "stretch"])
@pytest.mark.parametrize("dims", [(96, 64), (64, 96), (32, 32), (200, 50)])
def test_resize_modes_match_the_contract(mode: str, dims: tuple[int, int]):
    img = gradient(*dims)
    pre = Preprocessor(spec(mode), max_pixels=10**7)
    got = np.asarray(pre.decode(encode(img)), dtype=np.float32)
    want = reference(img, mode)
    assert got.shape == (32, 32, 3)
    # One resampling pass over the crop box vs resize-then-crop: the same picture within rounding.
    assert np.abs(got - want).mean() < 3.0, np.abs(got - want).mean()
    if mode == "pad" and dims[0] != dims[1]:
        assert got[0].max() == 0 or got[:, 0].max() == 0  # black bars on the short side


def test_normalisation_is_mean_std_per_channel():
    img = Image.new("RGB", (32, 32), (255, 0, 128))
    row = Preprocessor(spec(), max_pixels=10**7).image_row(encode(img))
    want = (np.array([255, 0, 128]) / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(row[:, 5, 7], want, rtol=1e-5)
    assert row.shape == (3, 32, 32) and row.dtype == np.float32


@pytest.mark.parametrize("color", ["RGB", "L"])
def test_normalisation_keeps_every_value_in_its_channel_and_place(color: str):
    # Noise, so that a channel or an axis read in the wrong order cannot pass by symmetry.
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(color)
    card = spec(color=color)
    row = Preprocessor(card, max_pixels=10**7).image_row(encode(img))
    hwc = np.asarray(img, dtype=np.float64).reshape(32, 32, -1)
    want = ((hwc / 255.0 - np.array(card.mean)) / np.array(card.std)).transpose(2, 0, 1)
    assert row.shape == want.shape and row.dtype == np.float32
    np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "text",
    ["", "QQ==", "QUJD", "QUJDRA==", "QUJD====", "-_-_", "QQ=", "QQ", "QU JD", "QUJD\n", "QU=D", "====", "é"],
)
def test_base64_decodes_and_refuses_what_the_standard_library_does(text: str):
    try:
        want: bytes | type[Exception] = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error is one
        want = type(exc)
    try:
        got: bytes | type[Exception] = protocol.decode_base64(text)
    except ValueError as exc:
        got = type(exc)
    assert got == want


def test_reduced_jpeg_decode_gives_the_same_input():
    photo = encode(gradient(1920, 1080), "JPEG", quality=92)
    fast = Preprocessor(spec(size=224), max_pixels=10**8, reduced_decode=True).image_row(photo)
    full = Preprocessor(spec(size=224), max_pixels=10**8, reduced_decode=False).image_row(photo)
    # Normalised units (about 4.4 per 255 levels): DCT scaling and bilinear agree closely.
    assert np.abs(fast - full).mean() < 0.05


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (64, 32))
    img.paste((255, 0, 0), (0, 0, 32, 32))  # left half red, right half blue
    img.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated = Preprocessor(spec("stretch"), max_pixels=10**7).decode(encode(img, "JPEG", exif=exif, quality=95))
    top, bottom = np.asarray(rotated)[2, 16], np.asarray(rotated)[29, 16]
    assert top[0] > 200 and top[2] < 60  # red is on top once displayed upright
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("img", "color", "pixel"),
    [
        (Image.new("RGBA", (32, 32), (255, 255, 255, 0)), "RGB", (0, 0, 0)),  # transparent → black
        (Image.new("L", (32, 32), 200), "RGB", (200, 200, 200)),
        (Image.new("RGB", (32, 32), (10, 200, 30)), "L", (round(0.299 * 10 + 0.587 * 200 + 0.114 * 30),)),
    ],
    ids=["rgba-on-black", "gray-to-rgb", "rgb-to-gray"],
)
def test_colour_modes(img: Image.Image, color: str, pixel: tuple[int, ...]):
    out = np.asarray(Preprocessor(spec(color=color), max_pixels=10**7).decode(encode(img)))
    assert out.reshape(32, 32, -1)[10, 10].tolist() == pytest.approx(list(pixel), abs=1)


def test_pixel_limit_is_checked_before_decoding():
    pre = Preprocessor(spec(), max_pixels=1000)
    with pytest.raises(errors.ImageTooLarge, match="above the limit of 1000"):
        pre.decode(encode(Image.new("RGB", (40, 40))))


def test_fetch_model_verifies_digests(model_v1: ExportedModel, tmp_path: Path):
    artifact = fetch_model(f"file://{model_v1.path}", expected_digest=model_v1.digest, cache_dir=str(tmp_path))
    assert artifact.digest == model_v1.digest and artifact.version == model_v1.digest[7:19]
    assert Path(artifact.local_path).read_bytes() == model_v1.path.read_bytes()
    with pytest.raises(errors.DigestMismatch, match="the deployment expects"):
        fetch_model(str(model_v1.path), expected_digest="sha256:" + "1" * 64, cache_dir=str(tmp_path))
    with pytest.raises(errors.ModelLoadError, match="sha256:<64 lowercase hex>"):
        fetch_model(str(model_v1.path), expected_digest="md5:abc", cache_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"format": "other/v9"}, "format"),
        ({"classes": []}, "classes"),
        (
            {
                "input": {
                    "name": "input",
                    "imageSize": 32,
                    "colorMode": "RGB",
                    "resizeMode": "pad",
                    "mean": [0.5],
                    "std": [0.5],
                }
            },
            "mean and std need 3",
        ),
        (
            {
                "input": {
                    "name": "input",
                    "imageSize": 32,
                    "colorMode": "CMYK",
                    "resizeMode": "pad",
                    "mean": [0.5] * 3,
                    "std": [0.5] * 3,
                }
            },
            "colorMode",
        ),
    ],
    ids=["format", "no-classes", "mean-length", "color-mode"],
)
def test_invalid_cards_are_refused(model_v1: ExportedModel, tmp_path: Path, change: dict, fragment: str):
    model = tmp_path / "model.onnx"
    model.write_bytes(model_v1.path.read_bytes())
    write_card(model, model_v1.digest, name="x", **change)
    with pytest.raises(errors.ModelLoadError, match=fragment):
        fetch_model(str(model), cache_dir=str(tmp_path))


def test_missing_card_is_a_clear_error(tmp_path: Path):
    with pytest.raises(errors.ModelLoadError, match="cannot read the model card"):
        fetch_model(str(tmp_path / "absent.onnx"))


def test_settings_flags_win_over_environment():
    env = {"MODELOPS_MODEL_URI": "/m.onnx", "MODELOPS_WORKERS": "3", "MODELOPS_ORT_SPINNING": "true"}
    s = load_settings(["--workers", "2", "--max-batch-delay-ms", "2.5"], environ=env)
    assert (s.model_uri, s.workers, s.ort_spinning, s.max_batch_delay_s) == ("/m.onnx", 2, "always", 0.0025)
    assert load_settings(["--model-uri", "x", "--no-reduced-decode"], environ={}).reduced_decode is False


@pytest.mark.parametrize(
    ("environ", "flags", "spinning"),
    [
        ({}, [], "off"),
        ({"MODELOPS_ORT_SPINNING": "false"}, [], "off"),  # the boolean it was before "run" existed
        ({"MODELOPS_ORT_SPINNING": "run"}, [], "run"),
        ({"MODELOPS_ORT_SPINNING": "true"}, [], "always"),
        ({"MODELOPS_ORT_SPINNING": "always"}, ["--ort-spinning", "off"], "off"),
    ],
)
def test_ort_spinning_setting(environ: dict[str, str], flags: list[str], spinning: str):
    assert load_settings(["--model-uri", "x", *flags], environ=environ).ort_spinning == spinning


def test_settings_defaults_match_the_modeldeployment_defaults():
    s = Settings(model_uri="x")
    assert (s.workers, s.max_batch_size, s.max_batch_delay_ms, s.queue_capacity) == (1, 16, 5.0, 256)


def test_invalid_settings_exit_with_the_flag_named(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        load_settings(["--model-uri", "x", "--workers", "zero"], environ={})
    assert "--workers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings([], environ={})
    assert "--model-uri" in capsys.readouterr().err
    for roots, problem in [
        ("data/batch/", "must be a URI such as file:///data/images"),
        ("file:///data/../etc", "must not hold '..' segments"),
    ]:
        with pytest.raises(SystemExit):
            load_settings(["--model-uri", "x", "--batch-roots", f"s3://ok/,{roots}"], environ={})
        assert f"--batch-roots: Value error, a --batch-roots entry {roots!r} {problem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spinning", "intra_op", "force_stop"),
    [("off", "0", ""), ("run", "", "1"), ("always", "", "")],  # "": ONNX Runtime's default (spin)
)
def test_ort_spinning_reaches_the_session(model_v1: ExportedModel, spinning: str, intra_op: str, force_stop: str):
    from modelops_server.runtime import ModelRunner, RuntimeOptions  # noqa: PLC0415

    artifact = fetch_model(str(model_v1.path))
    runner = ModelRunner(artifact.local_path, artifact.card, RuntimeOptions(device="cpu", spinning=spinning))  # type: ignore[arg-type]
    options = runner.session.get_session_options()

    def entry(key: str) -> str:
        try:
            return str(options.get_session_config_entry(key))
        except RuntimeError:  # not set
            return ""

    assert entry("session.intra_op.allow_spinning") == intra_op
    assert entry("session.force_spinning_stop") == force_stop
    assert entry("session.inter_op.allow_spinning") == "0"


def test_padded_sizes_are_powers_of_two_up_to_the_limit_and_off_on_the_cpu_unless_asked():
    from modelops_server.runtime import padded_sizes  # noqa: PLC0415

    assert padded_sizes("pow2", 64, on_cpu=True) == (1, 2, 4, 8, 16, 32, 64)
    assert padded_sizes("pow2", 48, on_cpu=False) == (1, 2, 4, 8, 16, 32, 48)
    assert padded_sizes("pow2", 1, on_cpu=False) == (1,)
    assert padded_sizes("auto", 16, on_cpu=False) == (1, 2, 4, 8, 16)
    assert padded_sizes("auto", 16, on_cpu=True) is None
    assert padded_sizes("exact", 16, on_cpu=False) is None


class _SeenShapes:
    """The real ONNX Runtime session, with the batch sizes it was given written down."""

    def __init__(self, session: Any) -> None:
        self.session, self.sizes = session, []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.sizes.append(next(iter(feeds.values())).shape[0])
        return self.session.run(outputs, feeds)


def test_padded_batches_give_each_row_its_own_logits_and_the_model_only_the_warmed_sizes(model_v1: ExportedModel):
    from modelops_server.runtime import ModelRunner, RuntimeOptions  # noqa: PLC0415

    artifact = fetch_model(str(model_v1.path))
    exact = ModelRunner(artifact.local_path, artifact.card, RuntimeOptions(device="cpu", max_batch_size=8))
    padded = ModelRunner(
        artifact.local_path, artifact.card, RuntimeOptions(device="cpu", max_batch_size=8, batch_shapes="pow2")
    )
    exact.session, padded.session = _SeenShapes(exact.session), _SeenShapes(padded.session)
    padded.warm_up()
    assert padded.session.sizes == [1, 2, 4, 8]
    assert padded.describe()["batch_shapes"] == [1, 2, 4, 8] and exact.describe()["batch_shapes"] == "exact"
    rng = np.random.default_rng(5)
    for n in range(1, 9):
        batch = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        got = padded.run(batch)
        assert got.shape == (n, len(artifact.card.classes))
        np.testing.assert_allclose(got, exact.run(batch), rtol=1e-5, atol=1e-5)
    assert set(padded.session.sizes) == {1, 2, 4, 8}
    assert exact.session.sizes == list(range(1, 9))  # exact: as each batch formed


def test_help_names_every_flag_and_variable():
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert "MODELOPS_" + name.upper() in text


def test_every_error_has_a_status_and_survives_the_wire():
    for cls, status in errors.HTTP_STATUS.items():
        rebuilt = errors.from_wire(*errors.to_wire(cls("m")))
        assert type(rebuilt) is cls and str(rebuilt) == "m"
        assert errors.http_status(rebuilt) == status
    assert errors.http_status(errors.Overloaded("x")) == 503
    assert errors.from_wire(*errors.to_wire(KeyError("k"))).reason == "internal"
    assert json.dumps({"e": str(errors.CorruptImage("bad"))})


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.RequestError, "INVALID_ARGUMENT"),
        (errors.BodyTooLarge, "INVALID_ARGUMENT"),
        (errors.CorruptImage, "INVALID_ARGUMENT"),
        (errors.NotFound, "NOT_FOUND"),
        (errors.ModelControlDisabled, "PERMISSION_DENIED"),
        (errors.Unavailable, "UNAVAILABLE"),
        (errors.WorkerCrashed, "UNAVAILABLE"),
        (errors.Overloaded, "RESOURCE_EXHAUSTED"),
        (errors.InferenceTimeout, "DEADLINE_EXCEEDED"),
        (errors.InvalidModelOutput, "INTERNAL"),
        (errors.DigestMismatch, "INTERNAL"),
    ],
)
def test_grpc_status_of_each_error(error, code):
    import grpc  # noqa: PLC0415

    assert errors.grpc_status(error("m")) == code
    assert grpc.StatusCode[code]  # a real gRPC status code name


CONTRACT_CARD = {  # the example in docs/contracts.md
    "format": "modelops.modelcard/v1",
    "name": "digits-resnet",
    "architecture": "resnet18",
    "classes": ["0", "1", "2"],
    "input": {
        "name": "input",
        "layout": "NCHW",
        "dtype": "float32",
        "imageSize": 32,
        "colorMode": "RGB",
        "resizeMode": "shorterSideCrop",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "output": {"name": "logits", "kind": "logits"},
    "onnx": {"file": "model.onnx", "digest": "sha256:" + "ab" * 32, "opset": 17, "dynamicBatch": True},
    "metrics": {"val_top1": 0.97, "test_top1": 0.96},
    "lineage": {
        "dataset": "digits",
        "datasetVersion": "0123456789ab",
        "datasetDigest": "sha256:" + "cd" * 32,
        "trainingRun": "digits-resnet",
        "trial": "digits-resnet-t0",
        "parameters": {"learningRate": "0.002"},
        "codeVersion": "0.1.0",
    },
    "createdAt": "2026-11-29T20:00:00Z",
}


def test_contract_example_card_is_read():
    from modelops_server.modelcard import ModelCard  # noqa: PLC0415

    card = ModelCard.model_validate(CONTRACT_CARD)
    assert (card.input.image_size, card.input.channels, card.onnx.dynamic_batch) == (32, 3, True)


def test_card_written_by_the_trainer_is_read_by_the_server():
    """Contract test: the trainer's own card model, serialised as it writes it, parses here."""
    trainer_card = import_or_missing("modelops_trainer.modelcard", "pip install -e trainer_image (hack/setup.sh does)")
    written = trainer_card.ModelCard.model_validate(CONTRACT_CARD).model_dump_json(by_alias=True)
    from modelops_server.modelcard import ModelCard  # noqa: PLC0415

    card = ModelCard.model_validate_json(written)
    assert card.classes == CONTRACT_CARD["classes"] and card.onnx.digest == CONTRACT_CARD["onnx"]["digest"]
    assert card.input.resize_mode == "shorterSideCrop" and card.output.name == "logits"


def test_cuda_is_chosen_only_where_a_device_exists():
    from modelops_server.runtime import choose_providers, cuda_device_present  # noqa: PLC0415

    if cuda_device_present():
        assert choose_providers("auto")[0] == "CUDAExecutionProvider"
    else:  # onnxruntime-gpu lists CUDA even here; asking for it must not happen on a CPU-only machine
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(errors.ModelLoadError, match="no CUDA device is usable"):
            choose_providers("cuda")
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.gpu
def test_cuda_runner_matches_cpu(model_v1: ExportedModel):
    from modelops_server.modelcard import ModelCard  # noqa: PLC0415
    from modelops_server.runtime import ModelRunner, RuntimeOptions, cuda_device_present  # noqa: PLC0415

    if not cuda_device_present():
        pytest.skip("no CUDA device")
    card = ModelCard.model_validate_json(Path(f"{model_v1.path}.card.json").read_text())
    batch = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    gpu = ModelRunner(str(model_v1.path), card, RuntimeOptions(device="cuda"))
    cpu = ModelRunner(str(model_v1.path), card, RuntimeOptions(device="cpu"))
    assert gpu.providers[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.run(batch), cpu.run(batch), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("files", "quota_cores"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_thread_pools_follow_the_containers_cpu_quota(tmp_path, files, quota_cores):
    from modelops_server.runtime import cpu_count  # noqa: PLC0415 - imports onnxruntime

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    assert cpu_count(tmp_path) == (min(cores, quota_cores) if quota_cores else cores)


def test_batch_locations_are_normalised_and_confined_by_whole_segments(tmp_path: Path):
    from modelops_server import batch  # noqa: PLC0415

    assert batch.parse_location("s3://b/a//./c/", "source").uri == "s3://b/a/c"
    assert batch.parse_location("/data/x/", "source").uri == "file:///data/x"
    roots = batch.parse_roots(f"file://{tmp_path}/data/, s3://bucket/batch/")
    assert [r.uri for r in roots] == [f"file://{tmp_path}/data", "s3://bucket/batch"]
    (tmp_path / "data").mkdir()
    for uri in (f"file://{tmp_path}/data", f"file://{tmp_path}/data/a/b", "s3://bucket/batch/x"):
        assert batch.confine(batch.parse_location(uri, "source"), roots, "source").uri == uri
    for uri in (f"file://{tmp_path}/data2/x", "s3://bucket/batch2", "s3://bucket2/batch/x", "gs://bucket/batch/x"):
        with pytest.raises(errors.RequestError, match="is outside --batch-roots"):
            batch.confine(batch.parse_location(uri, "source"), roots, "source")


def test_a_served_version_has_its_inference_series_at_zero_before_any_request():
    """Prometheus' increase() needs two samples: the series must exist from the first scrape, not
    from the first request (an A/B experiment that ended soon after its traffic found no error
    rate for a variant)."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    from modelops_server.metrics import INFERENCE_ENDPOINTS, Metrics  # noqa: PLC0415

    m = Metrics()
    m.declare_inference_series("digits", "v7")
    text = generate_latest(m.registry).decode()
    for endpoint in INFERENCE_ENDPOINTS:
        labels = f'endpoint="{endpoint}",model="digits",version="v7"'
        assert f'modelops_requests_total{{code="200",{labels}}} 0.0' in text, text
        assert f"modelops_request_duration_seconds_count{{{labels}}} 0.0" in text, text


def test_torchserve_answer_keeps_every_score_when_labels_repeat():
    """TorchServe's answer is keyed by label; a label a card repeats must not drop a score."""
    import orjson  # noqa: PLC0415

    from modelops_server.modelcard import ModelCard  # noqa: PLC0415
    from modelops_server.protocol import encode_label_scores  # noqa: PLC0415

    card = ModelCard.model_validate({**CONTRACT_CARD, "classes": ["cat", "dog", "cat"]})
    logits = np.array([[1.0, 3.0, 2.0]], dtype=np.float32)
    doc = orjson.loads(encode_label_scores(logits, card, 3))
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert list(doc) == ["dog", "cat", "cat (0)"]  # the first "cat" by score is index 2
    assert list(doc.values()) == pytest.approx([probs[1], probs[2], probs[0]], abs=1e-6)
    assert list(orjson.loads(encode_label_scores(logits, card, 1))) == ["dog"]


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # W3C: an all-zero id is invalid
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),  # 31 hex digits
        ("garbage", None),
        (None, None),
    ],
)
def test_request_context_takes_only_a_valid_trace_id(traceparent: str | None, trace_id: str | None):
    from modelops_server.logs import request_context  # noqa: PLC0415

    context = request_context("id-1", traceparent)
    assert context.get("trace_id") == trace_id and context["request_id"] == "id-1"
