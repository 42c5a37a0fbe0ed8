"""One image, start to finish: read, hash, decode, clean, perceptual hash, resize, encode.

Runs in worker processes (everything here is picklable and free of shared state). JPEG sources
are decoded at reduced scale (Pillow's draft mode: the DCT scales by 1/2, 1/4 or 1/8 while
decoding) whenever the target size allows, which is most of the speed on large photos.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from modelops_trainer.prepare.config import Cleaning, Preprocessing
from modelops_trainer.prepare.remote import read_capped

# Drop reasons, as counted in status.dropped and listed in the report.
UNREADABLE = "Unreadable"
UNDECODABLE = "Undecodable"
TRUNCATED = "Truncated"
TOO_SMALL = "TooSmall"
TOO_LARGE = "TooLarge"
UNSUPPORTED_MODE = "UnsupportedMode"
DUPLICATE = "Duplicate"
NEAR_DUPLICATE = "NearDuplicate"
UNLISTED_CLASS = "UnlistedClass"

#: Images with more pixels are refused before decoding (decompression bombs). Pillow's own guard is
#: a process-wide setting another library may change; this one is ours.
MAX_PIXELS = 89_478_485

#: The EXIF orientations `ImageOps.exif_transpose` turns or flips an image for (1 is upright).
TURNED = frozenset(range(2, 9))

FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}


@dataclass(frozen=True)
class Processed:
    """The outcome for one source image: kept (with its encoded bytes) or dropped (with a reason)."""

    ref: str
    label: str
    sha256: str | None = None
    dropped: str | None = None
    detail: str = ""
    dhash: int = 0
    """The perceptual hash; 0 when `nearDuplicateDistance` is 0 (the rule is off: nothing reads it)."""
    data: bytes = b""


def dhash(img: Image.Image) -> int:
    """A 64-bit difference hash: robust to resizing, re-encoding and small colour changes."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    return int.from_bytes(np.packbits(small[:, 1:] > small[:, :-1]).tobytes(), "big")


def _draft(img: Image.Image, size: int, mode: str, resize_mode: str) -> None:
    """Ask the JPEG decoder for the smallest scale that still covers the target size."""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = size / (min(w, h) if resize_mode == "shorterSideCrop" else max(w, h))
    if resize_mode == "stretch":
        scale = max(size / w, size / h)
    img.draft(mode, (math.ceil(w * scale), math.ceil(h * scale)))


def resize(img: Image.Image, size: int, mode: str) -> Image.Image:
    """Bring `img` to `size`×`size` by `mode` (shorterSideCrop, pad or stretch)."""
    if img.size == (size, size):
        return img
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if mode == "pad":
        return ImageOps.pad(img, (size, size), Image.Resampling.BILINEAR, color=0)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


#: PNG output compression: zlib level 1 (small images are mostly the encoder's set-up anyway).
PNG_LEVEL = 1
#: Modes `png` writes itself: PNG's bit depth and colour type for each (Pillow's table).
_PNG_MODES = {"L": b"\x08\x00", "RGB": b"\x08\x02"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png(img: Image.Image, level: int = PNG_LEVEL) -> bytes:
    """`img` as PNG, byte for byte what `img.save(out, "PNG", compress_level=level)` writes, at
    about 30% less CPU for a small image: most of what `save` costs on a 32 px image is Python
    around Pillow's zlib encoder (plugin lookup, encoder info, a file-like wrapper per chunk); this
    runs the same encoder with the same settings and writes the chunks itself. Only for what
    Pillow would write as signature, IHDR, IDAT and IEND alone (an L or RGB image with no ICC
    profile and no transparency key); anything else goes through `save`. Tested against `save`."""
    header = _PNG_MODES.get(img.mode)
    if header is None or img.info.get("icc_profile") or img.info.get("transparency") is not None:
        out = io.BytesIO()
        img.save(out, "PNG", compress_level=level)
        return out.getvalue()
    img.load()
    w, h = img.size
    # Pillow's PngImagePlugin._save: encoder "zip" with rawmode = mode and encoderconfig
    # (optimize, compress_level, compress_type, dictionary); one IDAT chunk per buffer of
    # ImageFile._save's size, as its `_idat` wrapper writes them.
    encoder = Image._getencoder(img.mode, "zip", img.mode, (False, level, -1, b""))
    encoder.setimage(img.im, (0, 0, w, h))
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">II", w, h) + header + b"\0\0\0")]
    bufsize = max(ImageFile.MAXBLOCK, w * 4)
    while True:
        _, status, data = encoder.encode(bufsize)
        parts.append(_chunk(b"IDAT", data))
        if status:
            break
    if status < 0:
        raise OSError(f"PNG encoder error {status}")
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def encode(img: Image.Image, pre: Preprocessing) -> bytes:
    fmt = FORMATS[pre.format][0]
    if fmt == "PNG":
        return png(img)
    out = io.BytesIO()
    img.save(out, fmt, quality=pre.quality)
    return out.getvalue()


def process(ref: str, label: str, cleaning: Cleaning, pre: Preprocessing, max_bytes: int = 64 << 20) -> Processed:
    """Everything for one image; never raises for a bad image (it is dropped with a reason). A file
    of more than `max_bytes` is dropped unread past that (reason `TooLarge`)."""
    try:
        data = read_capped(ref, max_bytes)
    except (OSError, ValueError) as e:
        return Processed(ref, label, dropped=UNREADABLE, detail=str(e)[:200])
    if data is None:
        detail = f"more than {max_bytes} bytes (spec.limits.imageMaxBytes)"
        return Processed(ref, label, dropped=TOO_LARGE, detail=detail)
    digest = hashlib.sha256(data).hexdigest()
    try:
        img = _decode(data, cleaning, pre)
    except _Drop as d:
        return Processed(ref, label, sha256=digest, dropped=d.reason, detail=d.detail)
    out = resize(img, pre.image_size, pre.resize_mode)
    perceptual = dhash(out) if cleaning.near_duplicate_distance else 0
    return Processed(ref, label, sha256=digest, dhash=perceptual, data=encode(out, pre))


def warm_up(pre: Preprocessing) -> None:
    """Import what processing an image imports on first use (Pillow's common format plugins, the
    output format's encoder, EXIF reading), in the process the workers are forked from: each
    worker would otherwise import them on its first image, about 40 ms, as long as processing
    hundreds of small images."""
    Image.preinit()
    data = encode(Image.new(pre.color_mode, (8, 8)), pre)
    _decode(data, Cleaning(min_width=1, min_height=1), pre)


class _Drop(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail[:200]


#: PNGs `plain_png` decodes: the modes `png` writes, by (bit depth, colour type); the most pixels.
_PLAIN_PNG_MODES = {(header[0], header[1]): mode for mode, header in _PNG_MODES.items()}
_PLAIN_PNG_PIXELS = 1 << 22


def plain_png(data: bytes) -> Image.Image | None:
    """A PNG of the plainest kind decoded, or None for Pillow's own reader to handle.

    Plain: the signature, an IHDR for an 8-bit grey or RGB image of at most 4 Mpx, not
    interlaced, then IDAT chunks, then IEND and the end of the file, every CRC right, and a zlib
    stream that Pillow's decoder finishes without error. That is what Pillow (and most encoders)
    write for such an image, and it is decoded here with Pillow's own zip decoder into the image
    `Image.open(...).load()` would give, for about half the CPU on a small image: opening a PNG
    reads its chunks in Python, which for a 32 px image costs more than the decoding. Anything
    else (other chunks, a bad CRC, a truncated or corrupt stream, trailing bytes) returns None,
    so what is dropped and why is Pillow's decision, as before. Tested against Pillow on every
    truncation and every single-bit error of small files."""
    parts = _plain_png_parts(data)
    if parts is None:
        return None
    mode, w, h, stream = parts
    img = Image.new(mode, (w, h))
    decoder = Image._getdecoder(mode, "zip", mode)
    try:
        decoder.setimage(img.im, (0, 0, w, h))
        consumed, status = decoder.decode(stream)
    finally:
        decoder.cleanup()
    return img if consumed < 0 and status >= 0 else None


def _plain_png_parts(data: bytes) -> tuple[str, int, int, bytes] | None:
    """Mode, width, height and the zlib stream of a plain PNG (`plain_png`); None otherwise."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos, end, header, idat = 8, len(data), None, []
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, stop = data[pos + 4 : pos + 8], pos + 12 + length
        body = data[pos + 8 : stop - 4]
        if stop > end or zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[stop - 4 : stop], "big"):
            break
        pos = stop
        if header is None:
            if (header := _plain_png_header(kind, body)) is None:
                break
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND" and idat and not length and pos == end:
            return (*header, b"".join(idat))
        else:
            break
    return None


def _plain_png_header(kind: bytes, body: bytes) -> tuple[str, int, int] | None:
    if kind != b"IHDR" or len(body) != 13:
        return None
    w, h, bits, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    mode = _PLAIN_PNG_MODES.get((bits, color))
    if mode is None or compression or filtering or interlace or not 0 < w * h <= _PLAIN_PNG_PIXELS:
        return None
    return mode, w, h


def _decode(data: bytes, cleaning: Cleaning, pre: Preprocessing) -> Image.Image:
    """Decode and clean; `_Drop` names why an image cannot be kept."""
    img = plain_png(data)
    if img is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _Drop(TOO_LARGE, str(e)) from e
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise _Drop(UNDECODABLE, str(e)) from e
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise _Drop(TOO_LARGE, f"{w}x{h} is over {MAX_PIXELS} pixels (a decompression bomb?)")
    if img.mode not in cleaning.allowed_modes:
        raise _Drop(UNSUPPORTED_MODE, f"mode {img.mode}")
    if w < cleaning.min_width or h < cleaning.min_height:
        raise _Drop(TOO_SMALL, f"{w}x{h}")
    try:
        _draft(img, pre.image_size, pre.color_mode, pre.resize_mode)
        img.load()
    except OSError as e:
        raise _Drop(TRUNCATED if "truncated" in str(e).lower() else UNDECODABLE, str(e)) from e
    except (ValueError, SyntaxError) as e:
        raise _Drop(UNDECODABLE, str(e)) from e
    # exif_transpose returns a copy even when there is nothing to turn: only call it when there is
    oriented: Image.Image = img
    if img.getexif().get(ExifTags.Base.Orientation, 1) in TURNED:
        oriented = ImageOps.exif_transpose(img) or img
    if oriented.mode == pre.color_mode:
        return oriented
    if oriented.mode in ("P", "LA", "PA"):  # palettes and alpha: through RGBA, so transparency is kept apart
        oriented = oriented.convert("RGBA")
    return oriented.convert(pre.color_mode)
