"""Real images for the trainer's tests: scikit-learn's bundled handwritten digits (1,797 8×8
grayscale images, 10 classes), upscaled and written as dataset versions with the real writer."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from modelops_trainer.datasetfmt import AugmentationPolicy, DatasetVersion, DatasetWriter, ImageFormat, SplitName

CLASSES = [str(d) for d in range(10)]
#: Augmentation that suits digits: no flips (a flipped 2 is not a 2), mild crops and rotations.
DIGITS_AUGMENTATION = AugmentationPolicy(
    horizontal_flip=False, random_resized_crop_scale=[0.7, 1.0], rotation_degrees=10.0
)


@dataclass(frozen=True)
class Sample:
    split: SplitName
    key: str
    image: bytes
    label: int


def digit_samples(
    *, size: int = 32, mode: str = "RGB", encoding: str = "png", limit: int | None = None, seed: int = 0
) -> Iterator[Sample]:
    """The digits as encoded images with a stratified 80/10/10 split (deterministic in `seed`).

    `limit` keeps the first `limit` images of each class (before splitting)."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[encoding]
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = rng.permutation(idx)[:limit]
        n_val = n_test = max(1, len(idx) // 10)
        n_train = len(idx) - n_val - n_test
        for pos, i in enumerate(idx):
            split: SplitName = "train" if pos < n_train else "val" if pos < n_train + n_val else "test"
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR).convert(mode)
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            yield Sample(split, f"digit{i:04d}", buf.getvalue(), label)


def write_digits(
    root_uri: str,
    *,
    size: int = 32,
    mode: str = "RGB",
    encoding: str = "png",
    shard_size: int = 500,
    limit: int | None = None,
    augmentation: AugmentationPolicy = DIGITS_AUGMENTATION,
) -> DatasetVersion:
    """Write the digits as a dataset version under `root_uri` with the real `DatasetWriter`."""
    image = ImageFormat(size=size, color_mode=mode, encoding=encoding)  # type: ignore[arg-type]
    with DatasetWriter(
        root_uri, classes=CLASSES, image=image, augmentation=augmentation, shard_size=shard_size, name="digits"
    ) as writer:
        for s in digit_samples(size=size, mode=mode, encoding=encoding, limit=limit):
            writer.add(s.split, s.key, s.image, s.label)
        return writer.finish()
