"""Unannounced input shifts: images no configured subgroup attribute describes.

Each shift is a function `(images, rng) -> images` on the incident's format (uint8, N x 8 x 8,
scanner polarity: bright ink on a dark background, 0..255) and returns the same format. They
stand for real changes in who sends what, none of which the `capture` attribute can see: the
shifted scanner images keep a dark border, so `runtime.derived.capture_from_border` still
says `scanner`. Randomness (per-image angles, offsets, strengths) comes only from `rng`, so
the same generator state gives the same pixels.

The four differ in kind, so that a detector tuned to one of them is not rewarded: a loss of
sharpness and contrast (intensity and spatial frequency), a rotation (geometry), thicker
strokes (more ink, same shapes) and smaller, off-centre writing (scale and position).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images of shape N x H x W, got {images.dtype} {images.shape}")
    return images.astype(np.float64) / 255.0


def _pixels(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _blur(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur with a per-image sigma; outside the frame is dark background."""
    offsets = np.arange(-2, 3)
    kernel = np.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    h, w = x.shape[1:]
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    rows = sum(kernel[:, i, None, None] * padded[:, i:i + h, :] for i in range(5))
    return sum(kernel[:, i, None, None] * rows[:, :, i:i + w] for i in range(5))


def blurry_sensor(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheaper scanner model: soft optics (Gaussian blur, sigma 0.8-1.3 px) and a washed-out
    sensor whose blacks lift to a grey floor (0.02-0.08) and whose whites reach only 0.45-0.65."""
    x = _unit(images)
    n = len(x)
    blurred = _blur(x, rng.uniform(0.8, 1.3, n))
    peak = blurred.max(axis=(1, 2), keepdims=True)
    blurred = blurred / np.where(peak > 0, peak, 1.0)  # blur dims the strokes; the sensor's gain sets the range
    floor = rng.uniform(0.02, 0.08, (n, 1, 1))
    ceiling = rng.uniform(0.45, 0.65, (n, 1, 1))
    return _pixels(floor + (ceiling - floor) * blurred)


def _warp(x: np.ndarray, inverse: np.ndarray, output_centre: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resampling: output pixel p of image i reads the source at
    `inverse[i] @ (p - output_centre[i]) + centre` (output_centre: the image centre unless
    given, N x 2); samples outside the frame read as dark background."""
    n, h, w = x.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    if output_centre is None:
        output_centre = np.broadcast_to(centre, (n, 2))
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1).reshape(-1, 2)
    relative = grid[None] - output_centre[:, None, :]  # n x pixels x (row, col)
    source = np.einsum("nij,npj->npi", inverse, relative) + centre
    r0, c0 = np.floor(source[..., 0]).astype(np.int64), np.floor(source[..., 1]).astype(np.int64)
    fr, fc = source[..., 0] - r0, source[..., 1] - c0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    idx = np.arange(n)[:, None]

    def at(r, c):
        inside = (r >= -1) & (r <= h) & (c >= -1) & (c <= w)
        return np.where(inside, padded[idx, np.clip(r + 1, 0, h + 1), np.clip(c + 1, 0, w + 1)], 0.0)

    out = ((1 - fr) * (1 - fc) * at(r0, c0) + (1 - fr) * fc * at(r0, c0 + 1)
           + fr * (1 - fc) * at(r0 + 1, c0) + fr * fc * at(r0 + 1, c0 + 1))
    return out.reshape(n, h, w)


def rotated(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Forms fed in sideways or photographed at an angle: each image turned by 30-60 degrees,
    clockwise or anticlockwise at random, about its centre."""
    x = _unit(images)
    angle = np.deg2rad(rng.uniform(30.0, 60.0, len(x)) * rng.choice([-1.0, 1.0], len(x)))
    cos, sin = np.cos(angle), np.sin(angle)
    inverse = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], axis=1)
    return _pixels(_warp(x, inverse))


def thick_pen(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Writers with a felt-tip instead of a ballpoint: strokes grow by a pixel (grey dilation
    with a 3 x 3 cross, at 85-100% of the ink's own intensity), so the digit is the same shape
    drawn fatter. The growth stays inside the writing box, whose edge is the image's outer
    ring: a fat stroke does not paint the form's margin."""
    x = _unit(images)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    cross = np.max([padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
                    for dr, dc in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))], axis=0)
    strength = rng.uniform(0.85, 1.0, (len(x), 1, 1))
    inside = np.zeros((h, w), bool)
    inside[1:-1, 1:-1] = True
    return _pixels(np.where(inside, np.maximum(x, strength * cross), x))


def small_off_centre(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new intake form with smaller boxes placed off the scan area's centre: the digit
    written at 60-75% of its usual size and framed up to 1.5 pixels off centre (each axis)."""
    x = _unit(images)
    n = len(x)
    scale = rng.uniform(0.60, 0.75, n)
    offset = rng.uniform(-1.5, 1.5, (n, 2))
    inverse = np.eye(2)[None] / scale[:, None, None]
    h, w = x.shape[1:]
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    return _pixels(_warp(x, inverse, output_centre=centre + offset))


SHIFTS: dict[str, Shift] = {
    "blurry sensor": blurry_sensor,
    "rotated 30-60 deg": rotated,
    "thick pen": thick_pen,
    "small, off-centre": small_off_centre,
}
