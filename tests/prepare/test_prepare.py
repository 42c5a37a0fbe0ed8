"""The preparation program on real images: cleaning, split, sources, failures, resumption."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from modelops_trainer.datasetfmt import SPLITS, DatasetReader
from modelops_trainer.prepare import images, pipeline, sources
from modelops_trainer.prepare.__main__ import main
from modelops_trainer.prepare.config import Preprocessing
from modelops_trainer.prepare.errors import EmptyClass, NoImagesLeft, SourceUnreachable, UnsafeArchive
from tests.prepare.conftest import config, photos, run_cli, write_digits


def keys_by_split(result: pipeline.Result) -> dict[str, str]:
    """Sample key -> split, read back from the shards (checked against their digests)."""
    reader = DatasetReader(result.version.uri, digest=result.version.digest)
    out = {}
    for split in SPLITS:
        for entry in reader.manifest.split(split).shards:
            with tarfile.open(reader.local_shard(entry)) as tar:
                out.update({m.name.split(".")[0]: split for m in tar.getmembers() if m.name.endswith(".png")})
    return out


def test_digits_become_a_stratified_verified_version(digits_root, tmp_path):
    result = pipeline.run(config(f"file://{digits_root}", tmp_path / "out"))
    manifest = result.version.manifest
    assert manifest.classes == [str(d) for d in range(10)]
    assert sum(manifest.split(s).count for s in SPLITS) == 1797  # nothing dropped from clean digits
    for cls in manifest.classes:  # every class split in the declared proportions
        total = sum(manifest.split(s).per_class[cls] for s in SPLITS)
        assert 0.7 < manifest.split("train").per_class[cls] / total < 0.9
        assert manifest.split("val").per_class[cls] > 0 and manifest.split("test").per_class[cls] > 0
    reader = DatasetReader(result.version.uri, digest=result.version.digest)
    image, label = next(reader.iter_split("train"))
    assert Image.open(io.BytesIO(image)).size == (16, 16) and 0 <= label < 10


def test_the_same_input_gives_the_same_version_and_new_images_move_no_old_one(tmp_path):
    src = tmp_path / "src"
    write_digits(src, per_class=40)
    first = pipeline.run(config(f"file://{src}", tmp_path / "out"))
    again = pipeline.run(config(f"file://{src}", tmp_path / "out"))
    assert again.version.digest == first.version.digest
    write_digits(src, start=1000)  # more images of every class
    grown = pipeline.run(config(f"file://{src}", tmp_path / "out"))
    assert grown.version.digest != first.version.digest
    before, after = keys_by_split(first), keys_by_split(grown)
    assert len(after) > len(before)
    assert {k: after[k] for k in before} == before


def test_a_different_seed_reshuffles(small_digits, tmp_path):
    a = keys_by_split(pipeline.run(config(f"file://{small_digits}", tmp_path / "a")))
    b = keys_by_split(pipeline.run(config(f"file://{small_digits}", tmp_path / "b", split={"seed": 1})))
    assert a.keys() == b.keys() and a != b


@pytest.mark.parametrize("distance", [3, 15, 16, 40, 63, 64])
def test_near_duplicates_at_exactly_the_distance_are_found_for_every_distance(distance):
    """Two hashes `distance` bits apart, the bits spread as evenly as possible over the 64, must
    clash; one bit further must not. (The band index once stopped at 16 bands, and missed pairs
    16 or more bits apart whose differences fell in every band.)"""
    step = 64 / max(distance, 1)
    bits = {min(63, int(i * step)) for i in range(distance)}
    assert len(bits) == distance
    a = 0x0123_4567_89AB_CDEF
    near = a ^ sum(1 << b for b in bits)

    def kept(n: int, dhash: int) -> pipeline.Kept:
        return pipeline.Kept(ref=f"img-{n}", label="x", sha256=f"{n:064x}", dhash=dhash, batch=0, offset=0, size=1)

    found = pipeline.cross_split_near_duplicates([kept(0, a), kept(1, near)], {0: "train", 1: "val"}, distance)
    assert list(found) == [1]
    if distance > 1:
        assert (
            pipeline.cross_split_near_duplicates([kept(0, a), kept(1, near)], {0: "train", 1: "val"}, distance - 1)
            == {}
        )


def test_byte_identical_copies_kept_when_duplicates_are_not_dropped(small_digits, tmp_path):
    """`dropDuplicates: false` keeps every copy: two copies of the same bytes in one class (so in one
    shard) get distinct sample keys instead of failing the run as an internal error."""
    three = small_digits / "3"
    good = (three / next(p.name for p in three.iterdir())).read_bytes()
    (three / "copy-a.png").write_bytes(good)
    (three / "copy-b.png").write_bytes(good)
    kept = pipeline.run(config(f"file://{small_digits}", tmp_path / "kept", cleaning={"dropDuplicates": False}))
    dropped = pipeline.run(config(f"file://{small_digits}", tmp_path / "dropped"))
    assert dropped.dropped[images.DUPLICATE] == 2
    assert kept.dropped[images.DUPLICATE] == 0
    keys = keys_by_split(kept)
    assert len(keys) == len(keys_by_split(dropped)) + 2
    base = next(k for k in keys if k + "-1" in keys)
    assert {base, base + "-1", base + "-2"} <= keys.keys()


def test_each_cleaning_rule_drops_with_its_reason(small_digits, tmp_path):
    three = small_digits / "3"
    (three / "text.png").write_bytes(b"this is not an image")
    good = (three / next(p.name for p in three.iterdir())).read_bytes()
    photo = io.BytesIO()
    photos()[0].save(photo, "JPEG", quality=90)
    (three / "truncated.jpg").write_bytes(photo.getvalue()[: len(photo.getvalue()) // 2])
    Image.new("RGB", (4, 4), "white").save(three / "tiny.png")
    Image.new("F", (32, 32)).save(three / "float.tiff")
    (three / "copy.png").write_bytes(good)
    Image.new("1", (20000, 20000)).save(three / "bomb.png")  # 400 Mpx, a few KB
    result = pipeline.run(config(f"file://{small_digits}", tmp_path / "out"))
    assert result.dropped == Counter(
        {
            images.UNDECODABLE: 1,
            images.TRUNCATED: 1,
            images.TOO_SMALL: 1,
            images.UNSUPPORTED_MODE: 1,
            images.DUPLICATE: 1,
            images.TOO_LARGE: 1,
        }
    )
    report = json.loads(Path(result.report_uri.removeprefix("file://")).read_text())
    assert {Path(r["ref"]).name: r["reason"] for r in report["images"]} == {
        "text.png": "Undecodable",
        "truncated.jpg": "Truncated",
        "tiny.png": "TooSmall",
        "float.tiff": "UnsupportedMode",
        "copy.png": "Duplicate",
        "bomb.png": "TooLarge",
    }
    assert result.version.manifest.dropped == dict(result.dropped)


def test_near_duplicates_never_straddle_two_splits(tmp_path):
    src = tmp_path / "src"
    china, flower = photos()
    variants = [(china, "a"), (china.resize((320, 213)), "b"), (china.rotate(0.5), "c"), (flower, "x")]
    for seed in range(50):  # find a seed that puts the re-encoded copies in different splits
        for img, name in variants:
            for q in (95, 60):
                path = src / ("flower" if name == "x" else "china") / f"{name}{q}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path, quality=q)
        cfg = config(
            f"file://{src}",
            tmp_path / f"out{seed}",
            cleaning={"nearDuplicateDistance": 6},
            split={"train": 0.5, "val": 0.25, "test": 0.25, "seed": seed},
            preprocessing={"imageSize": 64, "format": "jpeg"},
        )
        result = pipeline.run(cfg)
        if result.dropped[images.NEAR_DUPLICATE]:
            break
    else:
        pytest.fail("no seed put near-duplicates into two splits")
    manifest = result.version.manifest
    china_by_split = {s: manifest.split(s).per_class.get("china", 0) for s in SPLITS}
    assert sum(1 for n in china_by_split.values() if n) == 1  # every copy of the photo in one split
    assert result.dropped[images.NEAR_DUPLICATE] >= 1


def test_jpeg_photos_are_decoded_at_reduced_scale_and_resized(tmp_path):
    src = tmp_path / "src" / "photo"
    src.mkdir(parents=True)
    for i, img in enumerate(photos()):
        img.resize((1920, 1080)).save(src / f"{i}.jpg", quality=90)
    for mode in ("shorterSideCrop", "pad", "stretch"):
        result = pipeline.run(
            config(
                f"file://{tmp_path / 'src'}",
                tmp_path / mode,
                preprocessing={"imageSize": 96, "format": "jpeg", "resizeMode": mode},
                split={"train": 1.0, "val": 0.0, "test": 0.0},
            )
        )
        reader = DatasetReader(result.version.uri, digest=result.version.digest)
        sizes = {Image.open(io.BytesIO(b)).size for b, _ in reader.iter_split("train")}
        assert sizes == {(96, 96)}


def test_a_local_folder_is_listed_as_fsspec_lists_it(tmp_path):
    root = tmp_path / "src"
    for name in ("a/1.png", "a/deep/er/2.png", "b/.hidden/3.png", "b/.4.png", "c/5.jpg", "top.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "d").mkdir()
    (root / "d" / "to-file.png").symlink_to(root / "a" / "1.png")
    (root / "d" / "to-folder").symlink_to(root / "a")
    (root / "d" / "dangling.png").symlink_to(root / "gone.png")
    os.mkfifo(root / "d" / "fifo")
    fs = fsspec.filesystem("file")
    assert sources._local_files(str(root)) and sorted(sources._local_files(str(root))) == fs.find(str(root))
    assert [ref for ref, _ in sources.image_folder(f"file://{root}")] == [
        f"file://{root}/{name}"
        for name in (
            "a/1.png",
            "a/deep/er/2.png",
            "c/5.jpg",
            "d/dangling.png",
            "d/fifo",
            "d/to-file.png",
            "d/to-folder",
        )
    ]


def test_archives_and_manifests_merge(tmp_path, small_digits):
    tgz, zipped = tmp_path / "digits.tar.gz", tmp_path / "digits.zip"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(small_digits / "1", arcname="digits/1")
    with zipfile.ZipFile(zipped, "w") as z:
        for p in (small_digits / "2").iterdir():
            z.write(p, f"2/{p.name}")
    rows = [{"uri": str(p), "label": "seven"} for p in (small_digits / "7").iterdir()]
    (tmp_path / "list.csv").write_text("uri,label\n" + "".join(f"{r['uri']},{r['label']}\n" for r in rows))
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps({"path": p.name, "cls": "eight"}) + "\n" for p in (small_digits / "8").iterdir())
    )
    for p in (small_digits / "8").iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    sources = [
        {"uri": f"file://{tgz}", "format": "archive"},
        {"uri": f"file://{zipped}", "format": "archive"},
        {"uri": f"file://{tmp_path / 'list.csv'}", "format": "csv"},
        {"uri": f"file://{tmp_path / 'list.jsonl'}", "format": "jsonl", "uriColumn": "path", "labelColumn": "cls"},
    ]
    manifest = pipeline.run(config(sources, tmp_path / "out")).version.manifest
    assert manifest.classes == ["1", "2", "eight", "seven"]
    assert all(sum(manifest.split(s).per_class[c] for s in SPLITS) == 12 for c in manifest.classes)


def test_an_archive_that_escapes_its_root_is_refused_and_nothing_is_written(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"gotcha"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchive, match="escapes"):
        pipeline.run(config([{"uri": f"file://{evil}", "format": "archive"}], tmp_path / "out"))
    assert not list(tmp_path.parent.glob("escaped.txt")) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "error", "reason"),
    [
        ("missing", SourceUnreachable, "SourceUnreachable"),
        ("empty-class", EmptyClass, "EmptyClass"),
        ("all-broken", NoImagesLeft, "NoImagesLeft"),
    ],
)
def test_failures_name_their_reason_in_the_termination_message(tmp_path, small_digits, case, error, reason):
    src, extra = f"file://{small_digits}", {}
    if case == "missing":
        src = f"file://{tmp_path / 'nowhere'}"
    elif case == "empty-class":
        extra = {"classes": ["1", "2", "ten"]}
    else:
        broken = tmp_path / "broken" / "x"
        broken.mkdir(parents=True)
        (broken / "a.png").write_bytes(b"nope")
        src = f"file://{tmp_path / 'broken'}"
    cfg = config(src, tmp_path / "out", **extra)
    with pytest.raises(error):
        pipeline.run(cfg)
    code, message = run_cli(cfg, tmp_path)
    assert code == 1 and message["ok"] is False and message["reason"] == reason and message["message"]


def test_a_bad_config_exits_2_with_the_fields(tmp_path):
    os.environ["MODELOPS_PREPARE_CONFIG"] = json.dumps(
        {
            "dataset": {"name": "t"},
            "sources": [],
            "split": {"train": 0.5, "val": 0.1, "test": 0.1},
            "output": {"uri": "file:///x"},
        }
    )
    try:
        code = main(["--termination-log", str(tmp_path / "t")])
    finally:
        del os.environ["MODELOPS_PREPARE_CONFIG"]
    message = json.loads((tmp_path / "t").read_text())
    assert code == 2 and message["reason"] == "InvalidConfig"
    assert "sources" in message["message"] and "must sum to 1" in message["message"]


def test_a_scheme_without_a_file_system_exits_2_naming_the_supported_ones(tmp_path):
    os.environ["MODELOPS_PREPARE_CONFIG"] = json.dumps(
        {"dataset": {"name": "t"}, "sources": [{"uri": "gs://bucket/pets"}], "output": {"uri": "az://c/out"}}
    )
    try:
        code = main(["--termination-log", str(tmp_path / "t")])
    finally:
        del os.environ["MODELOPS_PREPARE_CONFIG"]
    message = json.loads((tmp_path / "t").read_text())
    assert code == 2 and message["reason"] == "InvalidConfig"
    assert "gs:// is not supported" in message["message"] and "az:// is not supported" in message["message"]
    assert "file://, s3://, http:// or https://" in message["message"]


def test_an_interrupted_run_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_digits(src, per_class=60)  # 600 images: 16 chunks of 38
    cfg = config(f"file://{src}", tmp_path / "out")
    real = images.process
    doomed = sorted(str(p) for p in src.rglob("*.png"))[400]  # in a later chunk

    def crash(ref, label, cleaning, pre, *rest):
        if ref.endswith(doomed):
            raise RuntimeError("the pod was killed")
        return real(ref, label, cleaning, pre, *rest)

    monkeypatch.setattr(images, "process", crash)  # worker processes are forked: they see it too
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.run(cfg)
    finished = len(list((tmp_path / "out").glob(".work-*/batch-*.json")))
    assert 3 <= finished < 16
    monkeypatch.setattr(images, "process", real)
    first, second = sorted(next((tmp_path / "out").glob(".work-*")).glob("batch-*.json"))[:2]
    torn = first.with_suffix(".bin")  # work files are not fsynced: a power loss may tear them
    torn.write_bytes(b"\0" * torn.stat().st_size)
    second.write_text('{"inputs": [')
    resumed = pipeline.run(cfg)
    assert resumed.reused_chunks == finished - 2  # both processed again, the rest trusted by size and digest
    assert resumed.version.digest == pipeline.run(config(f"file://{src}", tmp_path / "fresh")).version.digest
    assert not list((tmp_path / "out").glob(".work-*"))  # cleaned up once published


def test_a_version_costs_one_fsync_per_shard_and_the_manifest_and_report(tmp_path, small_digits, monkeypatch):
    log = tmp_path / "fsyncs"
    real = os.fsync

    def fsync(fd):  # in the worker processes too (forked)
        with log.open("a") as f:
            f.write(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1] + "\n")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = pipeline.run(config(f"file://{small_digits}", tmp_path / "out", preprocessing={"shardSize": 40}))
    synced = sorted(name.split(".")[1] for name in log.read_text().split())  # .<name>.<random>.tmp
    shards = sorted(
        s.file.removesuffix(".tar") for split in result.version.manifest.splits.values() for s in split.shards
    )
    assert synced == sorted([*shards, "manifest", "report"])  # no work file
    log.unlink()
    again = pipeline.run(config(f"file://{small_digits}", tmp_path / "fast"), durable=False)
    assert (
        not log.exists()
        and again.version.digest == pipeline.run(config(f"file://{small_digits}", tmp_path / "x")).version.digest
    )


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_warm_up_before_the_workers_fork_loads_each_output_format(fmt, mode):
    images.warm_up(Preprocessing(format=fmt, colorMode=mode))
    assert images.FORMATS[fmt][0] in Image.SAVE and "JPEG" in Image.OPEN and "PNG" in Image.OPEN


def test_the_summary_fits_the_termination_message(tmp_path, small_digits):
    code, message = run_cli(config(f"file://{small_digits}", tmp_path / "out"), tmp_path)
    assert code == 0 and message["ok"] is True
    assert message["images"] == 120 and message["classes"] == 10
    assert message["digest"].startswith("sha256:") and message["version"] == message["digest"][7:19]
    assert sum(s["total"] for s in message["splits"].values()) == 120
