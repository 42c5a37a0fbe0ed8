"""The preparation's output, pinned: a faster pipeline must publish the same bytes.

A fixed generated input (digits, photos, and every kind of file the cleaning rules drop or
convert) is prepared under three configs. Each version's digest (the SHA-256 of its manifest,
which lists every shard's SHA-256) is compared with

- the digest the pipeline produced before it was made faster (pinned below), and
- what a plain, sequential writer makes of the same images: each image through
  `images.process`, then the cleaning and split rules as docs/contracts.md states them (duplicate
  and near-duplicate checks by brute force), then `DatasetWriter.add` one image at a time.

The pinned digests depend on the encoders (Pillow 13.0, zlib 1.2.13, libjpeg-turbo 3.2, libwebp
1.6 here): an upgrade that changes their output changes them, while the plain writer's comparison
still holds. To re-pin, run `_print_digests()` at the commit the pins name, not at a later one.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from modelops_trainer.datasetfmt import SPLITS, DatasetWriter, ImageFormat
from modelops_trainer.prepare import images, pipeline
from modelops_trainer.prepare.config import PrepareConfig

#: Configs that together use every output format, resize mode, colour mode and rule.
CONFIGS: dict[str, dict[str, Any]] = {
    "png-rgb-crop": {
        "cleaning": {"minWidth": 12, "minHeight": 12, "nearDuplicateDistance": 4},
        "preprocessing": {"imageSize": 16, "format": "png", "shardSize": 40},
        "limits": {"imageMaxBytes": 150_000},
    },
    "jpeg-gray-pad": {
        "cleaning": {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 0},
        "preprocessing": {"imageSize": 24, "format": "jpeg", "quality": 80, "colorMode": "L", "resizeMode": "pad"},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 7},
    },
    "webp-rgb-stretch": {
        "cleaning": {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 3},
        "preprocessing": {"imageSize": 20, "format": "webp", "resizeMode": "stretch", "shardSize": 1000},
        "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "photo"],
    },
    # bench/prepare_throughput.py's digits config, on the digits alone (kept duplicates would clash)
    "png-gray-bench": {
        "cleaning": {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 0, "dropDuplicates": False},
        "preprocessing": {"imageSize": 32, "format": "png", "colorMode": "L"},
    },
}
#: The configs run on the digits alone; the others on everything `write_input` writes.
DIGITS_ONLY = {"png-gray-bench"}

#: The digests of `pipeline.run` at commit 85282ed (before issue #21's changes), on this input.
PINNED = {
    "png-rgb-crop": "sha256:c781679844c922d0d292337403142643a7ed7d762e90ca15c638eafdc6a6c2c1",
    "jpeg-gray-pad": "sha256:093b83a887b585065b05fdd5a8c65bd49d938f3a535139fde9657721f4deadb2",
    "webp-rgb-stretch": "sha256:0bae2b224ea63186c98bac42125e261a61f0c1fc308add0c07b7b15c6f03fd02",
    "png-gray-bench": "sha256:8f3700fb62fa111cb0605a6ffd4d0d120e831483cc33b6564dcb88c7e6fa2a1d",
}


def write_input(root: Path) -> None:
    """The fixed input under `root/all`: 12 digits of each class (32 px PNGs), 16 photos with re-encoded and
    rotated copies, and a class `mixed` of palettes, alpha, CMYK, 1-bit, 16-bit, tiny, truncated,
    garbage, oversized and duplicate files. The digits alone again under `root/digits`."""
    digits = load_digits()
    seen: Counter[int] = Counter()
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        if seen[int(y)] < 12:
            seen[int(y)] += 1
            gray = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST)
            for tree in ("digits", "all"):
                path = root / tree / str(y) / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                gray.save(path)
    root = root / "all"
    photo, mixed = root / "photo", root / "mixed"
    photo.mkdir()
    mixed.mkdir()
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    for n in range(8):
        for name, base in (("china", china), ("flower", flower)):
            img = base.rotate(n * 4).resize((320 + 16 * n, 180 + 8 * n))
            img.save(photo / f"{name}-{n}.jpg", quality=90 - 3 * n)
    china.resize((320, 180)).save(photo / "china-q50.jpg", quality=50)  # a near-duplicate of china-0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90°, so the stored pixels are turned on decode
    flower.resize((240, 320)).save(photo / "flower-exif.jpg", exif=exif)
    flower.resize((1280, 720)).save(photo / "flower-720p.jpg", quality=85)  # JPEG draft decode
    rng = np.random.default_rng(21)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).convert("P", palette=Image.Palette.ADAPTIVE).save(mixed / "palette.png", transparency=0)
    Image.fromarray(noise).convert("LA").save(mixed / "gray-alpha.png")
    Image.fromarray(np.dstack([noise, noise[:, :, :1]])).save(mixed / "rgba.png")
    Image.fromarray(noise).convert("CMYK").save(mixed / "cmyk.jpg")
    Image.fromarray(noise[:, :, 0] > 127).save(mixed / "bilevel.png")
    Image.fromarray(noise[:, :, 0].astype(np.uint16) * 200).save(mixed / "sixteen-bit.png")
    Image.fromarray(noise[:4, :4]).save(mixed / "tiny.png")
    truncated = io.BytesIO()
    china.save(truncated, "JPEG", quality=90)
    (mixed / "truncated.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    (mixed / "garbage.png").write_bytes(rng.bytes(500))
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(mixed / "large-noise.png")
    (mixed / "copy.png").write_bytes((root / "3" / next(p.name for p in sorted((root / "3").iterdir()))).read_bytes())
    (root / "9" / "copy-of-a-photo.jpg").write_bytes((photo / "china-3.jpg").read_bytes())  # another class


def make_config(name: str, root: Path, out: Path) -> PrepareConfig:
    src = root / ("digits" if name in DIGITS_ONLY else "all")
    doc: dict[str, Any] = {
        "dataset": {"name": "pinned"},
        "sources": [{"uri": f"file://{src}"}],
        "output": {"uri": f"file://{out}"},
        "workers": 2,
        **CONFIGS[name],
    }
    return PrepareConfig.model_validate(doc)


def split_of(sha256: str, seed: int, train: float, val: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{sha256}".encode()).digest()[:8], "big") / 2**64
    return "train" if u < train else "val" if u < train + val else "test"


def plain_writer(config: PrepareConfig, src: Path, out: Path) -> tuple[str, dict[str, str]]:
    """The version digest and {file name: drop reason} of the rules applied one image at a time."""
    files = sorted(str(p) for p in src.rglob("*") if p.is_file())
    items = [(f"file://{f}", Path(f).relative_to(src).parts[0]) for f in files]
    cleaning, pre, split = config.cleaning, config.preprocessing, config.split
    dropped: dict[str, str] = {}
    kept: list[tuple[images.Processed, str]] = []
    by_sha: set[str] = set()
    for ref, label in items:
        p = images.process(ref, label, cleaning, pre, config.limits.image_max_bytes)
        if p.dropped:
            dropped[ref] = p.dropped
        elif config.classes and label not in config.classes:
            dropped[ref] = images.UNLISTED_CLASS
        elif cleaning.drop_duplicates and p.sha256 in by_sha:
            dropped[ref] = images.DUPLICATE
        else:
            assert p.sha256 is not None
            by_sha.add(p.sha256)
            name = split_of(p.sha256, split.seed, split.train, split.val)
            d = cleaning.near_duplicate_distance
            if d and any(s != name and bin(q.dhash ^ p.dhash).count("1") <= d for q, s in kept):
                dropped[ref] = images.NEAR_DUPLICATE
            else:
                kept.append((p, name))
    classes = list(config.classes) or sorted({label for _, label in items})
    image = ImageFormat(
        size=pre.image_size, color_mode=pre.color_mode, encoding=pre.format, resize_mode=pre.resize_mode
    )
    with DatasetWriter(
        f"file://{out}",
        classes=classes,
        image=image,
        augmentation=config.augmentation,
        shard_size=pre.shard_size,
        name=config.dataset.name,
        spec_hash=config.spec_hash,
    ) as writer:
        writer.dropped = dict(Counter(dropped.values()))
        for name in SPLITS:
            members = sorted((p for p, s in kept if s == name), key=lambda p: (classes.index(p.label), p.sha256))
            for p in members:
                assert p.sha256 is not None
                writer.add(name, p.sha256[:32], p.data, classes.index(p.label))
        version = writer.finish()
    return version.digest, {Path(ref).name: reason for ref, reason in dropped.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pinned")
    write_input(root)
    return root


@pytest.mark.parametrize("name", CONFIGS)
def test_the_output_is_the_pinned_one_and_the_plain_writers(name, source, tmp_path):
    config = make_config(name, source, tmp_path / "out")
    result = pipeline.run(config)
    report = json.loads(Path(result.report_uri.removeprefix("file://")).read_text())
    src = Path(config.sources[0].uri.removeprefix("file://"))
    digest, dropped = plain_writer(config, src, tmp_path / "plain")
    assert result.version.digest == digest
    assert {Path(r["ref"]).name: r["reason"] for r in report["images"]} == dropped
    assert result.version.digest == PINNED[name]


def _print_digests() -> None:  # pragma: no cover - how the pins were made
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        write_input(Path(tmp))
        for name in CONFIGS:
            result = pipeline.run(make_config(name, Path(tmp), Path(tmp) / "out" / name))
            print(f'    "{name}": "{result.version.digest}",  # dropped {dict(result.dropped)}')


if __name__ == "__main__":
    _print_digests()
