"""Batch jobs: a folder of images or a Dataset version in, JSONL out; on a real Redis and server process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from modelops_trainer.datasetfmt import DatasetWriter, ImageFormat
from tests.support.jobs import NEEDS_REDIS, expected_top, kill_consumer_mid_job, wait_job
from tests.support.s3 import S3Server
from tests.support.serving import CLASSES, SIZE, ExportedModel, ServerProcess, image_bytes

pytestmark = NEEDS_REDIS
MAX_IMAGES = 150


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 server on loopback (moto is a development requirement)."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's only local batch root; `outside` beside it is not one."""
    base = tmp_path_factory.mktemp("batch")
    (base / "outside").mkdir()
    (base / "outside" / "secret.png").write_bytes(image_bytes(1))
    (base / "root").mkdir()
    return base / "root"


@pytest.fixture(scope="module")
def batch_server(
    model_v1: ExportedModel,
    redis_url: str,
    roots: Path,
    s3: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *["--model-version", "v1", "--job-workers", "1", "--max-batch-size", "4", "--batch-max-images"],
            str(MAX_IMAGES),
            *("--redis-url", redis_url, "--batch-roots", f"file://{roots}/,s3://data/batch/"),
            *("--job-stream", "modelops:batch-test"),  # its own stream: the module's other server has its consumers
        ],
        env=s3.env,
    ).start(tmp_path_factory.mktemp("batch-server"))
    yield server
    assert server.stop() == 0, server.logs()


def submit(server: ServerProcess, body: dict) -> dict:
    r = requests.post(f"{server.url}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sync_predictions(server: ServerProcess, data: bytes, top_k: int) -> list[dict]:
    r = requests.post(
        f"{server.url}/v1/models/tiny-cnn:classify?top_k={top_k}",
        data=data,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert [(p["label"], p["index"]) for p in got] == [(p["label"], p["index"]) for p in want]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)


def test_a_folder_becomes_jsonl_beside_it_with_error_lines_for_a_broken_image_and_a_link_out(
    batch_server: ServerProcess, roots: Path
):
    folder = roots / "photos"
    (folder / "cats" / "small").mkdir(parents=True)
    images = {
        "a.png": image_bytes(10),
        "cats/b.PNG": image_bytes(11),
        "cats/small/c.png": image_bytes(12, size=40),
        "d.jpg": image_bytes(13, fmt="JPEG"),
        "e.webp": image_bytes(14, fmt="WEBP"),
        "f.bmp": image_bytes(15, fmt="BMP"),
    }
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "cats" / "broken.png").write_bytes(image_bytes(16)[:200])  # a PNG cut short
    (folder / "notes.txt").write_text("not an image: not listed")
    (folder / "cats" / "leak.png").symlink_to(roots.parent / "outside" / "secret.png")
    (folder / "cats" / "elsewhere").symlink_to(roots.parent / "outside")  # a link to a folder: not followed
    (folder / ".cache").mkdir()
    (folder / ".cache" / "thumb.png").write_bytes(image_bytes(17))  # hidden: not listed
    job = submit(batch_server, {"source": f"file://{folder}/", "topK": 3})
    assert job["total"] == 8
    assert job["source"] == f"file://{folder}"
    assert job["output"] == f"file://{folder}.predictions/{job['id']}.jsonl"
    doc = wait_job(batch_server, job["id"])
    assert doc["done"] == doc["total"] == 8 and doc["kind"] == "batch" and "results" not in doc
    assert doc["output"] == job["output"]
    out = Path(f"{folder}.predictions")
    assert sorted(p.name for p in out.iterdir()) == [f"{job['id']}.jsonl"]  # the temporary file is gone
    lines = read_jsonl(out / f"{job['id']}.jsonl")
    assert [line["path"] for line in lines] == sorted([*images, "cats/broken.png", "cats/leak.png"])
    by_path = {line["path"]: line for line in lines}
    broken = by_path.pop("cats/broken.png")
    leak = by_path.pop("cats/leak.png")  # a link out of the source folder is not followed
    assert (
        leak["error"] == "the file leads outside the source folder through a symbolic link"
        and "predictions" not in leak
    )
    assert "predictions" not in broken and broken["reason"] == "corrupt_image"
    assert broken["error"].startswith("the image data is truncated or corrupt: ")
    for path, line in by_path.items():
        assert "error" not in line, line
        assert_same_predictions(line["predictions"], sync_predictions(batch_server, images[path], 3))


def test_a_dataset_version_is_read_from_its_shards(batch_server: ServerProcess, roots: Path):
    fmt = ImageFormat(size=SIZE, encoding="png")
    with DatasetWriter(str(roots / "datasets" / "digits"), classes=CLASSES, image=fmt, shard_size=2) as writer:
        samples = {"train": [(f"t{i}", image_bytes(100 + i), i % len(CLASSES)) for i in range(5)]}
        samples["val"] = [(f"v{i}", image_bytes(200 + i), (i + 1) % len(CLASSES)) for i in range(3)]
        for split, rows in samples.items():
            for key, data, label in rows:
                writer.add(split, key, data, label)  # type: ignore[arg-type]
        version = writer.finish()
    job = submit(batch_server, {"source": version.uri, "topK": 2})
    assert job["total"] == 8
    wait_job(batch_server, job["id"])
    lines = read_jsonl(Path(f"{version.uri.removeprefix('file://')}.predictions") / f"{job['id']}.jsonl")
    expected = [(split, key, data, label) for split in ("train", "val") for key, data, label in samples[split]]
    assert [(line["split"], line["key"]) for line in lines] == [(s, k) for s, k, _, _ in expected]
    for line, (_, _, data, label) in zip(lines, expected, strict=True):
        assert line["datasetLabel"] == CLASSES[label]
        assert_same_predictions(line["predictions"], sync_predictions(batch_server, data, 2))
    # One split, to another folder under the roots.
    job = submit(batch_server, {"source": version.uri, "split": "val", "output": f"file://{roots}/out/val"})
    wait_job(batch_server, job["id"])
    val = read_jsonl(roots / "out" / "val" / f"{job['id']}.jsonl")
    assert [line["key"] for line in val] == ["v0", "v1", "v2"]


def test_a_tampered_shard_fails_only_its_own_images(batch_server: ServerProcess, roots: Path):
    fmt = ImageFormat(size=SIZE, encoding="png")
    with DatasetWriter(str(roots / "datasets" / "tampered"), classes=CLASSES, image=fmt, shard_size=2) as writer:
        for i in range(4):
            writer.add("train", f"k{i}", image_bytes(300 + i), 0)
        version = writer.finish()
    shard = Path(version.uri.removeprefix("file://")) / "train-00001.tar"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    job = submit(batch_server, {"source": version.uri})
    doc = wait_job(batch_server, job["id"])
    lines = read_jsonl(Path(doc["output"].removeprefix("file://")))
    assert [("predictions" in line) for line in lines] == [True, True, False, False]
    assert all("train-00001.tar has SHA-256" in line["error"] for line in lines[2:])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"source": "file:///etc"}, "source file:///etc is outside --batch-roots (file://{root}, s3://data/batch)"),
        ({"source": "file://{root}/../outside"}, "must not hold '..' segments"),
        ({"source": "file://{root}/a/%2e%2e/%2E%2E/outside"}, "must not hold '..' segments"),
        ({"source": "file://{root}/photos", "output": "file://{root}/../outside"}, "must not hold '..'"),
        ({"source": "file://{root}/photos", "output": "file:///tmp/x"}, "output file:///tmp/x is outside"),
        ({"source": "s3://other-bucket/batch/x"}, "source s3://other-bucket/batch/x is outside --batch-roots"),
        ({"source": "https://169.254.169.254/latest"}, "is outside --batch-roots"),
        ({"source": "file://{root}/link"}, "leads outside --batch-roots through a symbolic link"),
        ({"source": "file://{root}/photos?x=1"}, "must not hold a query or fragment"),
        ({"source": "images"}, "must be a URI such as file:///data/images"),
        ({"source": 7}, "source must be a URI string"),
        ({"source": "file://{root}/photos", "ouput": "x"}, "unknown: ouput"),
        ({"source": "file://{root}/photos", "images": []}, "either images or a batch source"),
        ({"source": "file://{root}/photos", "split": "val"}, "split applies to a Dataset version source only"),
        ({"source": "file://{root}/nothing-here"}, "is not a folder (or does not exist)"),
        ({"source": "file://{root}/empty"}, "holds no images"),
        ({"source": "file://{root}/many"}, f"holds more than {MAX_IMAGES} images"),
        ({"source": "file://{root}/photos", "topK": 0}, "topK must be between 1 and 100"),
    ],
    ids=[
        "outside-roots",
        "dot-dot",
        "encoded-dot-dot",
        "output-dot-dot",
        "output-outside",
        "other-bucket",
        "http-source",
        "symlink-escape",
        "query",
        "not-a-uri",
        "not-a-string",
        "unknown-field",
        "images-and-source",
        "split-on-a-folder",
        "missing",
        "empty",
        "too-many",
        "bad-topk",
    ],
)
def test_bad_batch_jobs_are_refused(batch_server: ServerProcess, roots: Path, body: dict, fragment: str):
    (roots / "photos").mkdir(exist_ok=True)
    (roots / "empty").mkdir(exist_ok=True)
    if not (roots / "link").exists():
        (roots / "link").symlink_to(roots.parent / "outside")
    if not (roots / "many").exists():
        (roots / "many").mkdir()
        for i in range(MAX_IMAGES + 1):
            (roots / "many" / f"{i:04d}.png").write_bytes(b"")
    body = {k: v.replace("{root}", str(roots)) if isinstance(v, str) else v for k, v in body.items()}
    r = requests.post(f"{batch_server.url}/v1/jobs", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment.replace("{root}", str(roots)) in r.json()["error"]


def test_an_output_that_cannot_be_written_fails_the_job_and_says_why(batch_server: ServerProcess, roots: Path):
    (roots / "few").mkdir()
    (roots / "few" / "a.png").write_bytes(image_bytes(50))
    (roots / "a-file").write_text("a file where the output folder should be")
    job = submit(batch_server, {"source": f"file://{roots}/few", "output": f"file://{roots}/a-file"})
    doc = wait_job(batch_server, job["id"], status="failed")
    assert doc["error"].startswith("batch output or source failed: NotADirectoryError")
    (result,) = requests.get(f"{batch_server.url}/v1/jobs/{job['id']}?results=true", timeout=10).json()["results"]
    assert result["path"] == "a.png" and len(result["predictions"]) == 5  # kept in Redis meanwhile


def test_a_server_without_batch_roots_refuses_every_batch_job(job_server: ServerProcess, roots: Path):
    r = requests.post(f"{job_server.url}/v1/jobs", json={"source": f"file://{roots}"}, timeout=30)
    assert r.status_code == 400
    assert "batch jobs are off on this server" in r.json()["error"] and "--batch-roots" in r.json()["error"]


def test_a_batch_survives_its_consumer_killed_mid_job_with_every_image_once(
    batch_server: ServerProcess, roots: Path, model_v1: ExportedModel
):
    folder = roots / "many-big"
    folder.mkdir()
    images = {f"{i:03d}.png": image_bytes(700 + i, size=256) for i in range(120)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    not_yet: list[bool] = []  # the output is written only once the job is complete
    job_id, _ = kill_consumer_mid_job(
        batch_server,
        {"source": f"file://{folder}", "topK": 1},
        lambda doc: not_yet.append(not Path(doc["output"].removeprefix("file://")).exists()),
    )
    assert not_yet == [True]
    final = wait_job(batch_server, job_id)
    assert final["done"] == final["total"] == len(images) and final["runs"] == 2
    lines = read_jsonl(Path(final["output"].removeprefix("file://")))
    assert [line["path"] for line in lines] == sorted(images)  # every image exactly once, in order
    for line in lines:
        best, _ = expected_top(model_v1, images[line["path"]])
        assert line["predictions"][0]["index"] == best


def test_an_s3_folder_becomes_jsonl_on_s3(batch_server: ServerProcess, s3: S3Server):
    fs = s3.bucket("data")
    images = {f"{i}.png": image_bytes(400 + i) for i in range(3)}
    for name, data in images.items():
        fs.pipe(f"data/batch/in/{name}", data)
    job = submit(batch_server, {"source": "s3://data/batch/in", "topK": 1})
    doc = wait_job(batch_server, job["id"])
    assert doc["output"] == f"s3://data/batch/in.predictions/{job['id']}.jsonl"
    lines = [json.loads(line) for line in fs.cat(doc["output"]).decode().splitlines()]
    assert [line["path"] for line in lines] == sorted(images)
    for line in lines:
        assert_same_predictions(line["predictions"], sync_predictions(batch_server, images[line["path"]], 1))
