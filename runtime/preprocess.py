"""Uploaded bytes to model input, with every failure mapped to a clear client error."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from monitors.reference import InputSpec
from service.errors import InputError


def decode_image(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Decode a PIL-readable image, refusing decompression bombs before any pixel is decoded."""
    if not data:
        raise InputError("empty_upload", "the uploaded image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("image_too_large", f"image dimensions refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise InputError("not_an_image", "the upload is not an image format this service can read") from None
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise InputError("not_an_image", f"could not read the image header: {type(exc).__name__}") from None
    width, height = image.size
    if width < 1 or height < 1 or width > max_side or height > max_side or width * height > max_pixels:
        raise InputError(
            "image_too_large",
            f"image is {width}x{height}; the limit is {max_side} pixels a side and {max_pixels} pixels in all",
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError("truncated_image", f"the image data is truncated or corrupt: {exc}") from None
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer (16/32-bit) and float images scaled to 8 bits instead of clipped."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F":
        scale = 1.0 if array.size and float(np.nanmax(np.abs(array))) <= 1.0 else 255.0
    else:
        scale = max(float(np.nanmax(array)) if array.size else 0.0, 255.0)
    array = np.nan_to_num(array, nan=0.0, posinf=scale, neginf=0.0)
    return Image.fromarray(np.clip(array / scale * 255.0, 0, 255).astype(np.uint8), mode="L")


def to_unit_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """channels x height x width float32 in [0, 1]; alpha is composited onto black."""
    return to_pixels(image, spec).astype(np.float32) / np.float32(255.0)


def to_pixels(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """channels x height x width uint8 at the model's size; alpha is composited onto black. A
    batch's images stack as uint8 and scale to [0, 1] in one pass (as `decode_array` does)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    try:
        mode = "L" if spec.channels == 1 else "RGB"
        image = image if image.mode == mode else image.convert(mode)
    except (OSError, ValueError) as exc:
        raise InputError("unsupported_image", f"cannot convert image mode {image.mode}: {exc}") from None
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BOX)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if spec.channels == 1 else array.transpose(2, 0, 1)


def normalise(unit: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.mean == (0.0,) * spec.channels and spec.std == (1.0,) * spec.channels:
        return unit
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return (unit - mean) / std


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 H x W (or H x W x 3) array to PNG bytes: how demos and tests send real images."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()
