"""Image decoding and preprocessing, exactly as docs/contracts.md defines the model's input.

Runs in the worker processes' decode threads (Pillow and numpy release the GIL while they work, so
decoding overlaps with ONNX Runtime). Two things make it faster than the naive "decode, then
resize" without changing the contract:

- **Reduced-scale decoding.** For JPEG, ``Image.draft`` asks libjpeg to decode at 1/2, 1/4 or 1/8
  scale (DCT scaling), never below the size the model needs; a 1920×1080 photo for a 224 model
  decodes at 480×270 — about a tenth of the work. Other formats decode fully.
- **One resampling pass.** ``shorterSideCrop`` resizes only the crop box (``resize(box=…)``).

Bad input fails early with a typed error: the dimensions are checked from the header before any
pixel is decoded (decompression bombs), only a fixed set of formats is opened, and truncated data
is an error, not a half-grey image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from modelops_server.errors import CorruptImage, ImageTooLarge, RequestError, UnsupportedMediaType
from modelops_server.modelcard import InputSpec

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
"""Image formats the server decodes; anything else is 415."""

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that; ours is checked
# explicitly (``max_pixels``) before decoding, so switch Pillow's off to get one clear message.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class Preprocessor:
    """Turns encoded images or raw pixels into rows of the model's float32 NCHW input."""

    def __init__(self, spec: InputSpec, *, max_pixels: int, reduced_decode: bool = True) -> None:
        self.spec = spec
        self.size = spec.image_size
        self.mode = spec.color_mode
        self.max_pixels = max_pixels
        self.reduced_decode = reduced_decode
        # x_norm = (x / 255 - mean) / std = x * scale + bias, per channel, shaped to broadcast over (C, H, W).
        std = np.asarray(spec.std, dtype=np.float32)
        mean = np.asarray(spec.mean, dtype=np.float32)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
        self._bias = (-mean / std).astype(np.float32)[:, None, None]

    @property
    def row_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one row of the model input."""
        return (self.spec.channels, self.size, self.size)

    def decode(self, data: bytes) -> Image.Image:
        """Open, check and decode ``data`` into a PIL image in the card's colour mode and size."""
        if not data:
            raise CorruptImage("the image is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(
                f"cannot identify the image format; accepted formats: {', '.join(ACCEPTED_FORMATS)}"
            ) from exc
        except Exception as exc:  # Pillow's plugins raise many types on malformed headers
            raise CorruptImage(f"the image is truncated or corrupt: cannot read its header ({exc})") from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise CorruptImage(f"the image has invalid dimensions {width}x{height}")
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, above the limit of {self.max_pixels}"
            )
        try:
            if self.reduced_decode and img.format == "JPEG" and isinstance(img, ImageFile.ImageFile):
                img.draft(self.mode if self.mode == "L" else "RGB", self._draft_target(width, height))
            img.load()
            img = ImageOps.exif_transpose(img)
            return self._resize(self._convert(img))
        except Exception as exc:  # any failure inside a decoder on untrusted bytes means a bad image
            raise CorruptImage(f"the image data is truncated or corrupt: {exc}") from exc

    def _draft_target(self, width: int, height: int) -> tuple[int, int]:
        """The smallest decode size that still leaves enough pixels for the resize mode."""
        s = self.size
        if self.spec.resize_mode == "shorterSideCrop":
            return (s, s)  # draft keeps both sides >= the request, so the shorter side >= s
        scale = s / max(width, height)  # pad: the longer side becomes s; stretch: both do
        if self.spec.resize_mode == "stretch":
            return (s, s)
        return (max(1, round(width * scale)), max(1, round(height * scale)))

    def _convert(self, img: Image.Image) -> Image.Image:
        if img.mode == self.mode:
            return img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparent images on black, the same as the `pad` colour.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert(self.mode)

    def _resize(self, img: Image.Image) -> Image.Image:
        s = self.size
        width, height = img.size
        mode = self.spec.resize_mode
        if (width, height) == (s, s):
            return img
        if mode == "stretch":
            return img.resize((s, s), Image.Resampling.BILINEAR)
        if mode == "shorterSideCrop":
            # Scale the shorter side to s, centre-crop s×s: resize only the crop box, in one pass.
            side = min(width, height)
            left = (width - side) / 2
            top = (height - side) / 2
            return img.resize((s, s), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        scale = s / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        canvas = Image.new(self.mode, (s, s), 0)
        canvas.paste(resized, ((s - new_w) // 2, (s - new_h) // 2))
        return canvas

    def from_pixels(self, pixels: npt.NDArray[np.uint8]) -> Image.Image:
        """A ``H×W×C`` uint8 array (C = 3 for RGB, 1 for L) as a resized PIL image."""
        channels = self.spec.channels
        if pixels.ndim != 3 or pixels.shape[2] != channels:
            raise RequestError(f"UINT8 pixels must be [N, H, W, {channels}] ({self.mode}); got a row of {pixels.shape}")
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        if height == 0 or width == 0:
            raise RequestError("UINT8 pixels have a zero dimension")
        if height * width > self.max_pixels:
            raise ImageTooLarge(f"the pixel array is {width}x{height}, above the limit of {self.max_pixels} pixels")
        array = np.ascontiguousarray(pixels)
        img = Image.fromarray(array[:, :, 0] if channels == 1 else array)
        return self._resize(img)

    def to_row(self, img: Image.Image, out: npt.NDArray[np.float32]) -> None:
        """Normalise ``img`` (already size×size) into ``out`` (C, H, W) in place."""
        # uint8 HWC read as CHW, scaled straight into ``out`` and shifted there: the same two
        # float32 operations per value as scaling an HWC float copy, without the copy and the
        # transposing pass (0.13 ms for 224×224×3 instead of 0.58).
        hwc = np.asarray(img)
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
        np.multiply(hwc.transpose(2, 0, 1), self._scale, out=out)
        np.add(out, self._bias, out=out)

    def check_request_pixels(self, images: list[bytes], limit: int) -> None:
        """ImageTooLarge when the images of one request hold more than ``limit`` pixels together,
        read from their headers before any is decoded (a 7 MB request can name 64 huge images). An
        unreadable header counts as nothing here: decoding it gives the precise error."""
        total = 0
        for data in images:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    width, height = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).size
            except Exception:  # reported by decode(), with its reason
                continue
            total += max(0, width) * max(0, height)
        if total > limit:
            raise ImageTooLarge(
                f"the request's {len(images)} images hold {total} pixels together, above the limit of {limit} per "
                "request; send fewer or smaller images per request"
            )

    def image_row(self, data: bytes) -> npt.NDArray[np.float32]:
        """Decode ``data`` and return one normalised row (C, H, W): the whole contract in one call."""
        row = np.empty(self.row_shape, dtype=np.float32)
        self.to_row(self.decode(data), row)
        return row

    def pixels_row(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """One normalised row from raw UINT8 pixels."""
        row = np.empty(self.row_shape, dtype=np.float32)
        self.to_row(self.from_pixels(pixels), row)
        return row
