"""`images.png` writes what Pillow's PNG `save` writes, byte for byte, or hands the image to it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms
from sklearn.datasets import load_digits

from modelops_trainer.prepare import images


def pillow(img: Image.Image, level: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=level)
    return out.getvalue()


def noise(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def digits() -> list[Image.Image]:
    return [Image.fromarray((d * 255 / 16).astype(np.uint8), "L").resize((32, 32)) for d in load_digits().images[:50]]


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_small_and_real_images_match_pillow(level):
    cases = digits() + [d.convert("RGB") for d in digits()[:10]]
    shapes = [("L", 1, 1), ("RGB", 3, 17), ("L", 33, 2), ("RGB", 64, 64)]
    cases += [noise(m, w, h, seed) for seed, (m, w, h) in enumerate(shapes)]
    for img in cases:
        assert images.png(img, level) == pillow(img, level), (img.mode, img.size)


def test_an_image_larger_than_one_encoder_buffer_is_split_into_the_same_idat_chunks():
    # noise hardly compresses: ~1.3 MB of output, written by Pillow as ~20 IDAT chunks of 64 KiB
    img = noise("RGB", 700, 600, 1)
    ours = images.png(img, 1)
    assert ours.count(b"IDAT") > 10
    assert ours == pillow(img, 1)
    wide = noise("L", 20_000, 8, 2)  # rows wider than 64 KiB / 4: the buffer (so each chunk) follows the width
    assert images.png(wide, 6) == pillow(wide, 6)


def test_what_pillow_writes_more_chunks_for_goes_through_pillow():
    rgba = noise("RGBA", 16, 16, 3)
    palette = noise("RGB", 16, 16, 4).convert("P")
    keyed = noise("L", 16, 16, 5)
    keyed.info["transparency"] = 7
    profiled = noise("RGB", 16, 16, 6)
    profiled.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for img in (rgba, palette, keyed, profiled, noise("L", 16, 16, 7).convert("1")):
        assert images.png(img, 1) == pillow(img, 1), img.mode
    assert b"tRNS" in images.png(keyed, 1) and b"iCCP" in images.png(profiled, 1)


def test_it_decodes_to_the_same_pixels():
    img = noise("RGB", 40, 30, 8)
    back = Image.open(io.BytesIO(images.png(img)))
    assert back.mode == "RGB" and back.size == (40, 30)
    assert back.tobytes() == img.tobytes()
