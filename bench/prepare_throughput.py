"""Images/s of the data-preparation program against the source document's naive loop.

The baseline is section 4.1's loop: `Image.open(path)`, `img.resize((S, S))`, `img.save(...)`, one
image after another in one process. The contender is `modelops_trainer.prepare` on the same files
with the same output size, doing its whole job (hashing, cleaning, perceptual hashes, split,
shards, manifest) with worker processes on every core. Both run in this script, alternately,
three times each; the best run of each counts. Images per CPU-second (this process and its
workers) are printed too: on a shared machine they move less than wall-clock rates. Two inputs:

- photos: scikit-learn's two sample photos upscaled to 1920x1080 JPEGs (variants of each), to 224;
- digits: scikit-learn's 1,797 digits as 32x32 PNGs, to 32 (small images: only parallelism helps).

    .venv/bin/python bench/prepare_throughput.py [--photos 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from modelops_trainer.prepare import pipeline
from modelops_trainer.prepare.config import PrepareConfig
from modelops_trainer.prepare.samples import write_digits, write_photos


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def naive(files: list[Path], size: int, out: Path) -> tuple[float, float]:
    """The source document's loop; returns (images/s, images per CPU-second)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    for i, path in enumerate(files):
        img = Image.open(path)
        img = img.resize((size, size))
        img.save(out / f"{i}{path.suffix}")
    return len(files) / (time.perf_counter() - start), len(files) / (cpu_seconds() - cpu)


def ours(root: Path, size: int, fmt: str, out: Path, color: str) -> tuple[float, float]:
    """The preparation program on the same tree; returns (images/s, images per CPU-second)."""
    config = PrepareConfig.model_validate(
        {
            "dataset": {"name": "bench"},
            "sources": [{"uri": f"file://{root}"}],
            "output": {"uri": f"file://{out}"},
            "cleaning": {"minWidth": 8, "minHeight": 8, "nearDuplicateDistance": 0, "dropDuplicates": False},
            "preprocessing": {"imageSize": size, "format": fmt, "shardSize": 1000, "colorMode": color},
        }
    )
    start, cpu = time.perf_counter(), cpu_seconds()
    result = pipeline.run(config)  # its worker pool is joined before it returns: children's CPU counts
    elapsed, used = time.perf_counter() - start, cpu_seconds() - cpu
    images = sum(s.count for s in result.version.manifest.splits.values())
    return images / elapsed, images / used


def compare(name: str, root: Path, size: int, fmt: str, color: str, scratch: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    best_naive = best_ours = (0.0, 0.0)
    for attempt in range(3):
        out = scratch / f"naive-{name}-{attempt}"
        out.mkdir()
        best_naive = max(best_naive, naive(files, size, out))
        best_ours = max(best_ours, ours(root, size, fmt, scratch / f"ours-{name}-{attempt}", color))
        shutil.rmtree(out)
    print(
        f"{name:7} {len(files):5d} images -> {size}px: naive {best_naive[0]:8.1f} img/s, prepare "
        f"{best_ours[0]:8.1f} img/s, ratio {best_ours[0] / best_naive[0]:5.2f}x; per CPU-second "
        f"{best_naive[1]:8.1f} vs {best_ours[1]:8.1f}, ratio {best_ours[1] / best_naive[1]:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=60, help="variants of each sample photo (default 60)")
    args = parser.parse_args()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"{os.cpu_count()} cores, {cpu}; Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        write_photos(scratch / "photos", args.photos)
        write_digits(scratch / "digits")
        compare("photos", scratch / "photos", 224, "jpeg", "RGB", scratch)
        compare("digits", scratch / "digits", 32, "png", "L", scratch)  # grayscale, as the naive loop keeps them


if __name__ == "__main__":
    main()
