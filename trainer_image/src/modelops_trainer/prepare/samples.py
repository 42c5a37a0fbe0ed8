"""`python -m modelops_trainer.prepare.samples`: write real sample images as an ImageFolder tree.

For the quickstart, tests and benchmarks, with data that ships inside a package (nothing is
downloaded): scikit-learn's bundled handwritten digits (1,797 images, 10 classes, 8x8 upscaled)
and its two sample photos. Needs scikit-learn (`pip install modelops-trainer[samples]`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, size: int = 32) -> int:
    """The digits as `root/<digit>/<index>.png`, upscaled to `size`; returns how many."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # noqa: PLC0415 (optional)

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = root / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST).save(path)
    return len(digits.images)


def write_photos(root: Path, copies: int, size: tuple[int, int] = (1920, 1080)) -> int:
    """`copies` variants of each sample photo, at `size`, as `root/<photo>/<n>.jpg`."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415 (optional)

    sample = load_sample_images()
    for name, array in zip(("china", "flower"), sample.images, strict=True):
        base = Image.fromarray(array).resize(size, Image.Resampling.BICUBIC)
        for n in range(copies):
            path = root / name / f"{n:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            base.rotate(n * 0.7).save(path, quality=90 - n % 10)
    return 2 * copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelops_trainer.prepare.samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=("digits", "photos"), help="which images")
    parser.add_argument("--out", type=Path, required=True, help="the ImageFolder root to write")
    parser.add_argument("--copies", type=int, default=50, help="photos: variants of each photo (default 50)")
    args = parser.parse_args(argv)
    count = write_digits(args.out) if args.kind == "digits" else write_photos(args.out, args.copies)
    print(f"wrote {count} images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
