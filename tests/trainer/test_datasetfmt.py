"""The dataset-version format: writer and reader round trip, content addressing, integrity checks,
refused manifests, and the augmentation policy's agreement with the operator's API."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from modelops_operator.api.dataset import Augmentation, DatasetSpec
from modelops_trainer import storage
from modelops_trainer.datasetfmt import (
    FORMAT,
    MANIFEST_FILE,
    AugmentationPolicy,
    DatasetManifest,
    DatasetReader,
    DatasetWriter,
    ImageFormat,
    ShardWriter,
    build_split,
    shard_file_name,
    tar_member,
    version_name,
    write_manifest,
)
from modelops_trainer.errors import DatasetError, DigestMismatch
from tests.support.digits import CLASSES, digit_samples, write_digits

# --- round trip --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "digits"
    version = write_digits(root.as_uri(), size=16, mode="L", shard_size=300, limit=60)
    return version, list(digit_samples(size=16, mode="L", limit=60))


def test_version_is_content_addressed(written):
    version, _ = written
    manifest_path = storage.local_path(version.uri) / MANIFEST_FILE
    assert storage.sha256_bytes(manifest_path.read_bytes()) == version.digest
    assert version.version == version.digest.removeprefix("sha256:")[:12]
    assert version.uri.endswith("/" + version.version)
    assert not [p for p in storage.local_path(version.uri).parent.iterdir() if p.name.startswith(".staging")]


def test_reader_returns_every_image_and_label_as_written(written):
    version, samples = written
    reader = DatasetReader(version.uri, digest=version.digest)
    assert reader.classes == CLASSES
    assert reader.manifest.format == FORMAT
    for split in ("train", "val", "test"):
        expected = [(s.image, s.label) for s in samples if s.split == split]
        assert list(reader.iter_split(split)) == expected
        entry = reader.manifest.split(split)
        assert entry.count == len(expected)
        assert entry.per_class == dict(zip(CLASSES, _label_counts(expected), strict=True))


def _label_counts(pairs):
    counts = Counter(label for _, label in pairs)
    return [counts[i] for i in range(10)]


def test_shards_roll_over_and_hold_webdataset_members(written):
    version, _ = written
    train = version.manifest.split("train")
    assert [s.file for s in train.shards] == ["train-00000.tar", "train-00001.tar"]
    assert [s.count for s in train.shards] == [300, train.count - 300]
    with tarfile.open(storage.local_path(version.uri) / "train-00000.tar") as tar:
        names = tar.getnames()
        first_cls = tar.extractfile(names[1])
        assert first_cls is not None and first_cls.read().decode().isdigit()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names[0].endswith(".png") and names[1] == names[0].replace(".png", ".cls")
    assert len(names) == 600


def test_random_access_index_matches_sequential_order(written):
    version, samples = written
    index = DatasetReader(version.uri, digest=version.digest).index("val")
    val = [(s.image, s.label) for s in samples if s.split == "val"]
    assert len(index) == len(val)
    for i in reversed(range(len(index))):
        assert index.read(i) == val[i]
    index.close()


def test_same_images_give_the_same_version_and_rewriting_is_idempotent(tmp_path):
    a = write_digits((tmp_path / "a").as_uri(), size=8, limit=20, shard_size=50)
    b = write_digits((tmp_path / "b").as_uri(), size=8, limit=20, shard_size=50)
    again = write_digits((tmp_path / "a").as_uri(), size=8, limit=20, shard_size=50)
    other = write_digits((tmp_path / "a").as_uri(), size=8, limit=20, shard_size=51)
    assert a.digest == b.digest == again.digest
    assert other.digest != a.digest
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.version, other.version])


def test_works_over_a_non_local_fsspec_file_system(tmp_path):
    # fsspec's in-memory file system takes the remote path: shards are downloaded into the cache.
    root = "memory://modelops-test/datasets/digits"
    version = write_digits(root, size=8, limit=15, shard_size=40)
    cache = tmp_path / "cache"
    reader = DatasetReader(version.uri, digest=version.digest, cache_dir=cache)
    pairs = list(reader.iter_split("train"))
    assert len(pairs) == version.manifest.split("train").count
    cached = sorted(p.name for p in cache.iterdir())
    assert cached == sorted(s.sha256 for s in version.manifest.split("train").shards)
    storage.remove("memory://modelops-test", recursive=True)


# --- integrity ---------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    return write_digits((tmp_path / "ds").as_uri(), size=8, limit=12, shard_size=1000)


def test_wrong_manifest_digest_is_refused(small):
    other = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match=r"dataset manifest .* expected sha256:0000"):
        DatasetReader(small.uri, digest=other)


def test_a_changed_shard_is_refused_before_use(small):
    shard = storage.local_path(small.uri) / "train-00000.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    reader = DatasetReader(small.uri, digest=small.digest)
    assert list(reader.iter_split("val"))  # other shards are still fine
    with pytest.raises(DigestMismatch, match=r"dataset shard .*train-00000\.tar"):
        reader.index("train")


def test_a_changed_manifest_is_refused(small):
    path = storage.local_path(small.uri) / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["classes"][0] = "zero"
    path.write_text(json.dumps(doc))
    with pytest.raises(DigestMismatch):
        DatasetReader(small.uri, digest=small.digest)


def test_shard_whose_layout_breaks_the_format_is_refused(tmp_path):
    # A shard with a valid hash but an image without its .cls member.
    folder = tmp_path / "v"
    folder.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    (folder / "train-00000.tar").write_bytes(buf.getvalue())
    entry = {"file": "train-00000.tar", "sha256": storage.sha256_bytes(buf.getvalue())[7:], "count": 1}
    manifest = DatasetManifest.model_validate(
        {
            "classes": ["a"],
            "image": {"size": 8, "encoding": "png"},
            "splits": {"train": {"count": 1, "perClass": {"a": 1}, "shards": [entry]}},
        }
    )
    digest = write_manifest(folder.as_uri(), manifest)
    with pytest.raises(DatasetError, match=r"without both an image and a \.cls member"):
        DatasetReader(folder.as_uri(), digest=digest).index("train")


# --- refused manifests -------------------------------------------------------------------------


def _manifest_doc():
    return {
        "format": FORMAT,
        "classes": ["cat", "dog"],
        "image": {"size": 32, "colorMode": "RGB", "encoding": "jpeg", "resizeMode": "shorterSideCrop"},
        "splits": {
            "train": {
                "count": 3,
                "perClass": {"cat": 1, "dog": 2},
                "shards": [{"file": "train-00000.tar", "sha256": "a" * 64, "count": 3}],
            }
        },
    }


def _with(path, value):
    doc = _manifest_doc()
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with("format", "modelops.dataset/v2"), "format"),
        (_with("classes", ["cat", "cat"]), "classes must be unique"),
        (_with("splits.train.count", 4), "differs from the sum of the shard counts"),
        (_with("splits.train.perClass", {"cat": 1, "dog": 1, "eel": 1}), "unknown classes"),
        (_with("splits.train.shards", [{"file": "val-00000.tar", "sha256": "a" * 64, "count": 3}]), "another split"),
        (_with("splits.train.shards", [{"file": "../x.tar", "sha256": "a" * 64, "count": 3}]), "file"),
        (_with("splits.train.shards", [{"file": "train-00000.tar", "sha256": "XYZ", "count": 3}]), "sha256"),
        (_with("image.encoding", "gif"), "image.encoding"),
        (_with("image.shape", [32, 32]), "Extra inputs are not permitted"),
        (_with("augmentation", {"randomResizedCropScale": [0.9, 0.1]}), "min < max"),
        (_with("splits", {"val": {"count": 0}}), "non-empty train split"),
    ],
)
def test_invalid_manifests_are_refused_with_the_field(doc, message):
    with pytest.raises(DatasetError, match=message):
        DatasetManifest.from_bytes(json.dumps(doc).encode())


def test_manifest_bytes_are_canonical():
    m = DatasetManifest.model_validate(_manifest_doc())
    data = m.to_bytes()
    assert data.endswith(b"}\n")
    assert DatasetManifest.from_bytes(data).to_bytes() == data
    assert json.loads(data)["image"]["colorMode"] == "RGB"
    assert version_name(storage.sha256_bytes(data)) == storage.sha256_bytes(data)[7:19]


# --- writer API --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "x" * 81, "ä"])
def test_invalid_sample_keys_are_refused(tmp_path, key):
    with ShardWriter((tmp_path / "train-00000.tar").as_uri(), extension="png", num_classes=2) as w:
        with pytest.raises(ValueError, match="sample key"):
            w.write(key, b"img", 0)
        w.write("ok", b"img", 1)
    assert w.result.label_counts == (0, 1)


def test_writer_refuses_duplicate_keys_and_bad_labels(tmp_path):
    with DatasetWriter(tmp_path.as_uri(), classes=["a", "b"], image=ImageFormat(size=8, encoding="png")) as w:
        w.add("train", "k1", b"img", 0)
        with pytest.raises(ValueError, match="appears twice"):
            w.add("train", "k1", b"img", 1)
        with pytest.raises(ValueError, match="label 2"):
            w.add("train", "k2", b"img", 2)
        w.add("val", "k1", b"img", 1)  # keys are unique per split
        version = w.finish()
    assert version.manifest.split("train").per_class == {"a": 1, "b": 0}


def test_a_failed_write_publishes_nothing(tmp_path):
    image = ImageFormat(size=8, encoding="png")
    with (  # noqa: PT012 - the failure happens mid-write
        pytest.raises(RuntimeError, match="source broke"),
        DatasetWriter(tmp_path.as_uri(), classes=["a"], image=image) as w,
    ):
        w.add("train", "k1", b"img", 0)
        raise RuntimeError("source broke")
    assert list(tmp_path.iterdir()) == []


def test_low_level_shards_and_manifest_compose(tmp_path):
    shards = []
    for i in range(2):
        with ShardWriter(
            storage.join(tmp_path.as_uri(), shard_file_name("train", i)), extension="jpg", num_classes=3
        ) as w:
            for j in range(3):
                w.write(f"s{i}_{j}", b"jpeg-bytes", j)
        shards.append(w.result)
    manifest = DatasetManifest(
        classes=["x", "y", "z"],
        image=ImageFormat(size=8),
        splits={"train": build_split(shards, ["x", "y", "z"])},
    )
    digest = write_manifest(tmp_path.as_uri(), manifest)
    reader = DatasetReader(tmp_path.as_uri(), digest=digest)
    assert [label for _, label in reader.iter_split("train")] == [0, 1, 2, 0, 1, 2]
    assert list(reader.iter_split("test")) == []
    assert reader.manifest.split("train").per_class == {"x": 2, "y": 2, "z": 2}


def tarfile_shard(samples: list[tuple[str, bytes, int]], extension: str) -> bytes:
    """The same shard as `tarfile` writes it in stream mode (how ShardWriter wrote it before)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, label in samples:
            for name, body in ((f"{key}.{extension}", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                    len(body),
                    0,
                    0o644,
                    0,
                    0,
                    "",
                    "",
                )
                tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.mark.parametrize("count", [1, 7, 40])
def test_shards_are_byte_for_byte_what_tarfile_writes(tmp_path, monkeypatch, count):
    samples = [(f"k{i:03d}_" + "x" * (i % 70), bytes([i % 256]) * (i * 37 % 3000 + 1), i % 3) for i in range(count)]
    samples.append(("y" * 80, b"\xff" * 512, 2))  # the longest key, a size on a block boundary
    monkeypatch.setattr(ShardWriter, "FLUSH", 4096)  # several flushes
    with ShardWriter((tmp_path / "train-00000.tar").as_uri(), extension="webp", num_classes=3) as w:
        for key, data, label in samples:
            w.write(key, data, label)
    written = (tmp_path / "train-00000.tar").read_bytes()
    assert written == tarfile_shard(samples, "webp")
    assert w.result.entry.sha256 == storage.sha256_bytes(written)[7:]


@pytest.mark.parametrize(("name", "size"), [("a.cls", 1), ("x" * 100, 0), ("k.png", 8**11 - 1), ("z_-9.jpg", 511)])
def test_tar_headers_are_tarfiles(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert tar_member(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize(("name", "size"), [("x" * 101, 1), ("k.png", 8**11), ("k.png", -1)])
def test_tar_headers_refuse_what_ustar_cannot_hold(name, size):
    with pytest.raises(ValueError, match="does not fit a USTAR header"):
        tar_member(name, size)


def test_empty_shard_cannot_be_closed(tmp_path):
    w = ShardWriter((tmp_path / "train-00000.tar").as_uri(), extension="png", num_classes=1)
    with pytest.raises(ValueError, match="empty"):
        w.close()
    assert not Path(tmp_path / "train-00000.tar").exists()


# --- the contract with the operator ------------------------------------------------------------


def test_augmentation_policy_mirrors_the_operators_augmentation():
    ours = AugmentationPolicy().model_dump(by_alias=True)
    theirs = Augmentation().model_dump(by_alias=True)
    assert ours == theirs
    ours_schema = AugmentationPolicy.model_json_schema(by_alias=True)["properties"]
    theirs_schema = Augmentation.model_json_schema(by_alias=True)["properties"]
    assert set(ours_schema) == set(theirs_schema)
    for name in ("rotationDegrees", "randAugmentOps", "randAugmentMagnitude", "randomErasing"):
        bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        assert {k: ours_schema[name].get(k) for k in bounds} == {k: theirs_schema[name].get(k) for k in bounds}


def test_a_datasets_augmentation_spec_is_accepted_as_it_is():
    spec = DatasetSpec.model_validate(
        {
            "sources": [{"uri": "file:///data"}],
            "augmentation": {
                "horizontalFlip": False,
                "randomResizedCropScale": [0.5, 1.0],
                "colorJitter": {"brightness": 0.2, "hue": 0.1},
                "autoAugment": "randAugment",
                "randAugmentOps": 3,
                "randomErasing": 0.25,
            },
        }
    )
    policy = AugmentationPolicy.model_validate(spec.augmentation.wire())
    assert policy.model_dump(by_alias=True) == spec.augmentation.model_dump(by_alias=True)


def test_shards_written_in_parallel_are_registered_and_published(tmp_path):
    image = ImageFormat(size=8, encoding="png")
    with DatasetWriter(tmp_path.as_uri(), classes=["a", "b"], image=image) as writer:
        shards = []
        for i in range(2):
            with ShardWriter(writer.shard_uri("train", i), extension="png", num_classes=2) as shard:
                shard.write(f"k{i}", b"png-bytes", i)
            shards.append(shard.result)
        writer.add_written("train", shards)
        with pytest.raises(RuntimeError, match="already has shards"):
            writer.add_written("train", shards)
        writer.add("val", "v0", b"png-bytes", 1)
        version = writer.finish()
    reader = DatasetReader(version.uri, digest=version.digest)
    assert [label for _, label in reader.iter_split("train")] == [0, 1]
    assert version.manifest.split("train").per_class == {"a": 1, "b": 1}
