"""A PNG already in the model's shape, decoded by libspng (pyspng) instead of Pillow.

Many clients send what the model takes: the demo's 8 x 8 grayscale digits, a camera pipeline's
224 x 224 RGB crops. For those Pillow's cost is its own machinery (plugin lookup, the header's
object, the mode and size checks the general path needs) more than the pixels: 29 us for an
8 x 8 PNG against libspng's 3.5 on this machine. The fast path takes a PNG only when nothing
but decoding is left to do, read from its header before any pixel is decoded:

- exactly the model's width and height (no resize, so no decompression bomb: the size is the
  model's), 8 bits a sample, not interlaced;
- grayscale for a one-channel model, RGB for a three-channel one (no conversion), and no
  `tRNS` chunk (transparency would be composited onto black by the general path).

Everything else, and any PNG libspng cannot decode (truncated, a bad checksum), goes the
general way (runtime/preprocess.py), which gives the same pixels or the same refusal: the fast
path never answers what the general path would refuse. tests/runtime/test_fast_png.py holds
the two equal.
"""

from __future__ import annotations

import struct

import numpy as np

from monitors.reference import InputSpec

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2}  # model channels -> the PNG colour type that needs no conversion
_MAX_CHUNKS_BEFORE_IDAT = 64  # ancillary chunks a real encoder writes before the pixels: a few


def model_shaped_png(data: bytes, spec: InputSpec) -> np.ndarray | None:
    """channels x height x width uint8 pixels of a PNG already in the model's shape, or None
    when it is not one (or libspng refuses it): the general path then decides."""
    if not data.startswith(SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (width, height) != (spec.width, spec.height) or depth != 8 or interlace != 0 \
            or color != _COLOR_TYPE.get(spec.channels):
        return None
    if not _no_transparency(data):
        return None
    import pyspng  # loaded on first use: a service that never sees such a PNG never loads it

    try:
        pixels = pyspng.load(data)
    except Exception:  # truncated, a bad CRC, anything: Pillow's path names the problem
        return None
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
        return None
    return pixels[None] if spec.channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _no_transparency(data: bytes) -> bool:
    """Whether the chunks before the first IDAT hold no tRNS (False for a file that ends, or
    holds more than _MAX_CHUNKS_BEFORE_IDAT chunks, before its pixels: Pillow decides those)."""
    at = 8
    for _ in range(_MAX_CHUNKS_BEFORE_IDAT):
        if at + 8 > len(data):
            return False
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            return True
        if kind == b"tRNS":
            return False
        at += 12 + length
    return False
