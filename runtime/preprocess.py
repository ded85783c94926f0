"""Uploaded bytes to model input, with every failure mapped to a clear client error.

Memory: an upload is decoded once at full size (Pillow's PNG, TIFF and GIF decoders cannot do
less). Bit-depth scaling, alpha compositing and the mode conversion then run strip by strip into
one 8-bit image in the model's mode, which is resized as before; the only other temporaries are
a strip's (about 1 MiB of float64). The full-image float64 copies this replaced took a 77 KB
6300 x 6300 16-bit PNG to 985 MB above the worker's resting size; `preparing_bytes` states the
cost from the header, so a worker can refuse or wait before decoding
(tests/runtime/test_preprocess_bounds.py holds the bound, and the answers equal to the
full-image version's pixel for pixel).
"""

from __future__ import annotations

import io
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, PngImagePlugin

from core.errors import InputError
from monitors.reference import InputSpec

_STRIP_BYTES = 1 << 20  # float64 bytes of one strip of rows: bounds every per-strip temporary
# Peak memory of decoding, as a multiple of the decoded image, measured (VmHWM) on 3000 x 3000
# images with Pillow 13 and rounded up: most decoders write straight into the image; WebP's keeps
# its own canvas and a copy of the frame, OpenJPEG's holds 32 bits a sample, QOI's and others
# decode into a buffer first. A format not measured here is assumed to need three.
_DECODER_FACTOR = {"PNG": 1.1, "JPEG": 1.1, "MPO": 1.1, "BMP": 1.1, "PPM": 1.1, "GIF": 1.4, "TIFF": 1.3,
                   "TGA": 1.3, "PCX": 1.3, "IM": 1.3, "SPIDER": 1.3, "SGI": 1.7, "XBM": 1.9, "QOI": 2.0,
                   "DDS": 2.3, "AVIF": 2.6, "ICNS": 2.8, "WEBP": 4.5, "JPEG2000": 6.4}
_UNMEASURED_FACTOR = 3.0
# The service reads no image metadata, but Pillow decompresses a PNG's text chunks while it reads
# the header, up to 64 MB of them (from a 67 KB upload, 0.2 s of CPU): 1 MB is plenty for real
# metadata, and more is refused as `image_too_large` before it is held.
PngImagePlugin.MAX_TEXT_MEMORY = 1 << 20
# Pillow allocates image memory in 16 MiB blocks; once glibc has unmapped one, it raises its mmap
# threshold and serves later blocks from per-thread arenas, which keep them: two decode threads
# took a worker 392 MiB above rest for images that need 236 MiB at a time. Blocks above glibc's
# highest threshold (32 MiB) are always mapped and returned: 226 MiB.
Image.core.set_block_size(64 << 20)
_UINT16_TO_UINT8 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)


def stored_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel: 8-bit images of more than one band are padded to 4."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def preparing_bytes(image: Image.Image, spec: InputSpec) -> int:
    """Memory preparing `image` for `spec` takes, from its header alone: the decoded pixels times
    what its decoder holds beside them (a progressive JPEG also keeps every DCT coefficient, 2
    bytes a sample: 240 MB for a 6324 x 6324 RGB one), the 8-bit copy in the model's mode, and
    the header's own text."""
    width, height = image.size
    factor = _DECODER_FACTOR.get(image.format or "", _UNMEASURED_FACTOR)
    size = int(width * height * stored_bytes(image.mode) * factor)
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        size += width * height * len(image.getbands()) * 2
    return size + width * height * stored_bytes(_model_mode(spec)) + metadata_bytes(image)


def metadata_bytes(image: Image.Image) -> int:
    """Text the header carried: a PNG's text chunks, decompressed (up to `MAX_TEXT_MEMORY`, from 1 KB a MB)."""
    return sum(len(value) for value in image.info.values() if isinstance(value, (str, bytes)))


def refuse_costly(image: Image.Image, spec: InputSpec, max_bytes: int) -> int:
    """`preparing_bytes`, or `image_too_large` when it exceeds `max_bytes`."""
    cost = preparing_bytes(image, spec)
    if cost > max_bytes:
        width, height = image.size
        raise InputError(
            "image_too_large",
            f"a {width}x{height} {image.format} image in mode {image.mode} takes {cost:,} bytes to decode and "
            f"prepare; the limit is {max_bytes:,}",
        )
    return cost


def open_image(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Read an upload's header, refusing decompression bombs before any pixel is decoded."""
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
    except ValueError as exc:
        if "MAX_TEXT_MEMORY" in str(exc):
            raise InputError("image_too_large", f"the image carries more than {PngImagePlugin.MAX_TEXT_MEMORY:,} "
                                                "bytes of text") from None
        raise InputError("not_an_image", f"could not read the image header: {type(exc).__name__}") from None
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise InputError("not_an_image", f"could not read the image header: {type(exc).__name__}") from None
    width, height = image.size
    if width < 1 or height < 1 or width > max_side or height > max_side or width * height > max_pixels:
        raise InputError(
            "image_too_large",
            f"image is {width}x{height}; the limit is {max_side} pixels a side and {max_pixels} pixels in all",
        )
    return image


def load(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image `open_image` returned."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError("truncated_image", f"the image data is truncated or corrupt: {exc}") from None
    return image


def decode_image(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Decode a PIL-readable image, refusing decompression bombs before any pixel is decoded."""
    return load(open_image(data, max_pixels=max_pixels, max_side=max_side))


def to_unit_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """channels x height x width float32 in [0, 1]; alpha is composited onto black."""
    return to_pixels(image, spec).astype(np.float32) / np.float32(255.0)


def to_pixels(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """channels x height x width uint8 at the model's size; alpha is composited onto black. A
    batch's images stack as uint8 and scale to [0, 1] in one pass (as `decode_array` does)."""
    mode = _model_mode(spec)
    if image.mode != mode:
        image = _converted(image, mode)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BOX)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if spec.channels == 1 else array.transpose(2, 0, 1)


def _model_mode(spec: InputSpec) -> str:
    return "L" if spec.channels == 1 else "RGB"


def _converted(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode`, converted a strip of rows at a time: every step is per pixel, so the
    result equals converting it whole, without whole-image temporaries."""
    scale = _bit_depth_scale(image)
    if image.height <= _strip_rows(image):
        return _to_mode(image, mode, scale)  # one strip: no copy to paste into
    out = Image.new(mode, image.size)
    for top, strip in _strips(image):
        out.paste(_to_mode(strip, mode, scale), (0, top))
    return out


def _strips(image: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(top row, strip) over the whole image, each strip about `_STRIP_BYTES` as float64."""
    width, height = image.size
    rows = _strip_rows(image)
    for top in range(0, height, rows):
        yield top, image.crop((0, top, width, min(top + rows, height)))


def _strip_rows(image: Image.Image) -> int:
    return max(1, _STRIP_BYTES // (8 * image.width))


def _is_wide(image: Image.Image) -> bool:
    """Integer (16/32-bit) and float images, which are scaled to 8 bits rather than clipped."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def _bit_depth_scale(image: Image.Image) -> float:
    """The value that maps to 255: 65535 for 16-bit; for float, 1 if every finite value is
    within [-1, 1], else 255; for 32-bit, the largest value (at least 255)."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if not _is_wide(image):
        return 255.0  # 8-bit: already in range
    peak = np.nan
    for _, strip in _strips(image):
        values = np.asarray(strip, dtype=np.float64)
        peak = np.fmax(peak, np.fmax.reduce(np.abs(values) if image.mode == "F" else values, axis=None))
    if image.mode == "F":
        return 1.0 if peak <= 1.0 else 255.0  # NaN everywhere compares False: 255
    return max(float(peak), 255.0)


def _to_mode(strip: Image.Image, mode: str, scale: float) -> Image.Image:
    """One strip in the model's mode: wide values scaled to 8 bits, alpha composited onto black."""
    if strip.mode.startswith("I;16"):
        strip = Image.fromarray(_UINT16_TO_UINT8[np.asarray(strip)], mode="L")  # no float copy at all
    elif _is_wide(strip):
        values = np.nan_to_num(np.asarray(strip, dtype=np.float64), nan=0.0, posinf=scale, neginf=0.0)
        strip = Image.fromarray(np.clip(values / scale * 255.0, 0, 255).astype(np.uint8), mode="L")
    if strip.mode in ("RGBA", "LA", "PA") or (strip.mode == "P" and "transparency" in strip.info):
        rgba = strip.convert("RGBA")
        strip = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    try:
        return strip if strip.mode == mode else strip.convert(mode)
    except (OSError, ValueError) as exc:
        raise InputError("unsupported_image", f"cannot convert image mode {strip.mode}: {exc}") from None


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
