"""Subgroup attributes inferred from the input itself.

The people a model fails are rarely labelled at inference time, so the demo infers the
capture process from image statistics instead of trusting the client to send it.
"""

from __future__ import annotations

import numpy as np

PAPER_THRESHOLD = 0.3


def capture_from_border(pixels: np.ndarray) -> str:
    """`phone` when the image's outer ring is bright paper, `scanner` when it is dark.

    Scanner digits are bright ink on a black background; the phone capture inverts that, and
    handwriting rarely touches the border, so the ring's mean brightness separates them."""
    image = pixels.mean(axis=0)
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return "phone" if float(ring.mean()) > PAPER_THRESHOLD else "scanner"


def captures_from_border(batch: np.ndarray) -> list[str]:
    """`capture_from_border` for N images at once (N x C x H x W), one numpy pass."""
    image = batch.mean(axis=1)
    ring = np.concatenate([image[:, 0], image[:, -1], image[:, 1:-1, 0], image[:, 1:-1, -1]], axis=1)
    return np.where(ring.mean(axis=1) > PAPER_THRESHOLD, "phone", "scanner").tolist()


capture_from_border.batch = captures_from_border  # type: ignore[attr-defined]


def camera_maker(pixels: np.ndarray, facts) -> str:
    """The camera maker the upload's EXIF names, as one lowercase word (`apple`, `samsung`,
    `canon`), or `other` when it names none (a screenshot, a scan, an image whose metadata was
    stripped). Declare the makers you expect as the attribute's values: any other maker is
    counted as `unknown` and served as `other`."""
    if not facts.camera:
        return "other"
    word = "".join(c for c in facts.camera.split()[0].lower() if c.isalnum() or c in "_.-")
    return word[:32] or "other"
