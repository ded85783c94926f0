"""A batch sent as one NumPy array instead of encoded images.

Clients that already hold decoded pixels (a video pipeline, a preprocessing service) skip
PNG encoding and decoding and the per-part multipart cost: one `.npy` upload (`np.save`
format, never pickled objects) of N images at the model's input size. Accepted: uint8
(0-255) or float (0-1), shaped N x H x W for one-channel models or N x C x H x W.
Everything else is a clear client error, NaN and infinities included.
"""

from __future__ import annotations

import io

import numpy as np

from core.errors import InputError
from monitors.reference import InputSpec

_FLOATS = (np.float16, np.float32, np.float64)


def decode_array(data: bytes, spec: InputSpec, max_images: int) -> np.ndarray:
    """N x C x H x W float32 in [0, 1] (the same scale decoded images have)."""
    if not data:
        raise InputError("empty_upload", "the uploaded array is empty (0 bytes)")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # not .npy, truncated, pickled objects, .npz
        raise InputError("malformed_array", f"send one array in NumPy .npy format: {type(exc).__name__}: {exc}") from None
    if not isinstance(array, np.ndarray):
        array.close()  # an .npz archive
        raise InputError("malformed_array", "send one array in .npy format, not an .npz archive")
    shapes = [f"N x {spec.channels} x {spec.height} x {spec.width}"]
    if spec.channels == 1:
        shapes.insert(0, f"N x {spec.height} x {spec.width}")
    if array.ndim == 3 and spec.channels == 1:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != (spec.channels, spec.height, spec.width):
        raise InputError("malformed_array", f"array shape {array.shape}; this model takes {' or '.join(shapes)}")
    if not 1 <= len(array) <= max_images:
        reason = "too_many_images" if len(array) > max_images else "malformed_array"
        raise InputError(reason, f"{len(array)} images in the array; send 1 to {max_images}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype.type not in _FLOATS:
        raise InputError("malformed_array", f"array dtype {array.dtype}; send uint8 (0-255) or float (0-1)")
    if not np.isfinite(array).all():
        raise InputError("invalid_array_values", "the array holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError("invalid_array_values", f"float values must lie in [0, 1]; got {low:g} to {high:g}")
    return array.astype(np.float32, copy=False)
