"""PNG without Pillow's Python around its zlib codec, and no other difference.

`images.png` writes what Pillow's PNG `save` writes, byte for byte, or hands the image to it;
`images.plain_png` decodes a plain PNG into what `Image.open(...).load()` gives, or leaves the
file to Pillow (None), never accepting one that Pillow refuses.
"""

from __future__ import annotations

import io
import struct
import zlib

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


def pillow_load(data: bytes) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception:  # any refusal: the fast path must refuse it too
        return None
    return img


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def sources() -> list[bytes]:
    return [pillow(digits()[0], 6), pillow(noise("RGB", 9, 7, 9), 1)]


def test_plain_pngs_decode_to_what_pillow_loads():
    for img in [*digits()[:20], noise("RGB", 64, 48, 10), noise("L", 1, 1, 11), noise("RGB", 300, 200, 12)]:
        data = pillow(img, 6)
        ours, theirs = images.plain_png(data), pillow_load(data)
        assert ours is not None and theirs is not None
        assert (ours.mode, ours.size, ours.tobytes()) == (theirs.mode, theirs.size, theirs.tobytes())
        assert ours.tobytes() == img.tobytes()


def test_every_truncation_and_bit_error_of_a_file_goes_to_pillow():
    for src in sources():
        cases = [src[:i] for i in range(len(src))] + [src + b"\0"]
        cases += [src[:i] + bytes([src[i] ^ 1 << k]) + src[i + 1 :] for i in range(len(src)) for k in range(8)]
        assert all(images.plain_png(data) is None for data in cases)  # a CRC, the structure or the end breaks


def test_a_damaged_stream_behind_good_crcs_is_decoded_as_pillow_decodes_it_or_left_to_it():
    decoded = 0
    for src in sources():
        ihdr = src[16:29]
        stream = b"".join(src[p + 8 : p + 8 + n] for p, n in idat_chunks(src))
        variants = [stream[:i] for i in range(len(stream))] + [stream + b"\0" * 5, stream + stream]
        variants += [
            stream[:i] + bytes([stream[i] ^ 1 << k]) + stream[i + 1 :] for i in range(len(stream)) for k in range(8)
        ]
        for v in variants:
            for idats in ([v], [v[: len(v) // 2], v[len(v) // 2 :]]):
                data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                data += b"".join(chunk(b"IDAT", part) for part in idats) + chunk(b"IEND", b"")
                ours, theirs = images.plain_png(data), pillow_load(data)
                if ours is None:
                    continue
                decoded += 1
                assert theirs is not None, "accepted a file Pillow refuses"
                assert (ours.mode, ours.tobytes()) == (theirs.mode, theirs.tobytes())
    assert decoded > 100  # flips in the Adler-32 and in literal bytes still decode: the comparison ran


def test_other_chunks_and_kinds_go_to_pillow():
    img = digits()[0]
    out = io.BytesIO()
    img.save(out, "PNG", dpi=(72, 72))  # a pHYs chunk
    assert images.plain_png(out.getvalue()) is None
    for other in (img.convert("RGBA"), img.convert("P"), img.convert("1"), img.convert("LA")):
        assert images.plain_png(pillow(other, 1)) is None
    out = io.BytesIO()
    img.save(out, "JPEG")
    assert images.plain_png(out.getvalue()) is None
    data = pillow(img, 1)  # the same file marked interlaced (Adam7), its CRC right
    ihdr = data[16:28] + b"\x01"
    assert images.plain_png(data[:8] + chunk(b"IHDR", ihdr) + data[33:]) is None


def idat_chunks(data: bytes) -> list[tuple[int, int]]:
    pos, found = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            found.append((pos, n))
        pos += 12 + n
    return found
