"""Which answers keep their input image (capture.policy), decided on the request path in O(1),
and the images made ready for the store off it.

Request path: `Capture.offer` sees each logged answer once; the policy picks it or not, and a
picked one joins a queue bounded in bytes (a full queue drops it, counted). Writer thread
(the prediction log's flush): `take()` empties the queue, `prepared()` turns each upload into
what is stored (the upload as received when it is a kept format within the size cap, and a
small PNG thumbnail), and store.inputs writes them in the log's own transaction.

Why strata: uniform sampling keeps a group at 5% of traffic in 5% of its images, so the group
a model fails on (rare by definition: it was under-represented) is kept only by luck. A budget
per model x subgroup x region per period keeps as many of a rare group's images as of a
common one's (benchmarks/capture_retention.py measures both at one byte budget).
"""

from __future__ import annotations

import io
import logging
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core import metrics
from core.config import CaptureConfig

log = logging.getLogger("classguard.capture")
KEPT_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                "BMP": "image/bmp", "TIFF": "image/tiff"}
NPY = "application/x-npy"  # one row of an `array` upload: its raw slice, exactly what the model saw
NOVEL = "novel"


@dataclass(frozen=True)
class Pending:
    """An answer's input waiting to be written."""

    request_id: str
    ts: float
    model: str
    subgroup: str
    region: str | None
    reason: str
    image: bytes | np.ndarray  # the upload's bytes, or an array row (C x H x W float32 in [0, 1])

    @property
    def size(self) -> int:
        return len(self.image) if isinstance(self.image, bytes) else int(self.image.nbytes)


@dataclass(frozen=True)
class Stored:
    """What is written for one input."""

    pending: Pending
    media_type: str | None  # of `original`; None: thumbnail only
    original: bytes | None
    thumbnail: bytes  # PNG

    @property
    def size(self) -> int:
        return len(self.original or b"") + len(self.thumbnail)


class Capture:
    """One worker's capture policy and queue."""

    def __init__(self, config: CaptureConfig, seed: int | None = None) -> None:
        self.config = config
        self.enabled = config.policy != "off"
        self._queue: deque[Pending] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._period = -1
        self._kept: dict[tuple[str, str, str | None], int] = {}  # this period's inputs kept per stratum
        self._seen: dict[tuple[str, str, str | None], int] = {}  # this period's answers per stratum
        self._last: dict[tuple[str, str, str | None], int] = {}  # the period before's answers per stratum
        self._random = random.Random(seed)

    def reason(self, model: str, subgroup: str, region: str | None, flagged: bool, now: float) -> str | None:
        """Why this answer's input is kept (a metrics.CAPTURE_REASONS value), or None."""
        policy = self.config.policy
        if policy == "all":
            return "all"
        flagged = flagged or region == NOVEL
        if policy == "off" or (policy == "flagged" and not flagged):
            return None
        period = int(now // self.config.stratum_seconds)
        if period != self._period:  # a new period: every stratum's budget is whole again
            self._last = self._seen if period == self._period + 1 else {}
            self._period, self._kept, self._seen = period, {}, {}
        stratum = (model, subgroup, region)
        self._seen[stratum] = self._seen.get(stratum, 0) + 1
        kept, budget = self._kept.get(stratum, 0), self.config.per_stratum
        if kept >= budget:
            return None
        # A stratum that outran its budget in the period before is sampled at the rate that spreads
        # the budget over this one (a quarter over, so it fills): first-come would keep only the
        # first minutes of every hour, and nothing of an incident that starts after them. A new
        # stratum (a group that just appeared), and any in the first period, is kept from its
        # first answer.
        expected = self._last.get(stratum, 0)
        if expected > budget and self._random.random() * expected > 1.25 * budget:
            return None
        self._kept[stratum] = kept + 1
        return "flagged" if flagged else "stratified"

    def offer(self, pending: Sequence[Pending]) -> None:
        """Queue the inputs the policy picked; what would pass the byte bound is dropped, counted."""
        dropped = 0
        with self._lock:
            for item in pending:
                size = item.size
                if self._queued_bytes + size > self.config.queue_bytes:
                    dropped += 1
                    continue
                self._queue.append(item)
                self._queued_bytes += size
        if dropped:
            metrics.INPUTS_DROPPED.labels("queue_full").inc(dropped)

    def take(self) -> list[Pending]:
        with self._lock:
            items, self._queue, self._queued_bytes = list(self._queue), deque(), 0
        return items

    def forget(self, request_ids: set[str]) -> int:
        """Drop queued inputs of these requests (an erasure that arrived before their write)."""
        with self._lock:
            kept = [p for p in self._queue if p.request_id not in request_ids]
            gone = len(self._queue) - len(kept)
            self._queue = deque(kept)
            self._queued_bytes = sum(p.size for p in kept)
        return gone

    def prepared(self, items: Sequence[Pending]) -> list[Stored]:
        """Each queued input as it is stored; one that cannot be read again is dropped, counted."""
        out = []
        for item in items:
            try:
                out.append(self._prepare(item))
            except Exception:  # a prediction never fails for its capture
                metrics.INPUTS_DROPPED.labels("unreadable").inc()
                log.warning("captured input of %s could not be read; not kept", item.request_id,
                            exc_info=log.isEnabledFor(logging.DEBUG))
        return out

    def _prepare(self, item: Pending) -> Stored:
        image, media_type, original = _open(item.image)
        if self.config.keep == "thumbnails":
            media_type = original = None
        elif media_type is None:
            metrics.INPUTS_ORIGINAL_SKIPPED.labels("format").inc()
        elif len(original) > self.config.max_original_bytes:  # type: ignore[arg-type]
            metrics.INPUTS_ORIGINAL_SKIPPED.labels("too_large").inc()
            media_type = original = None
        return Stored(item, media_type, original if media_type else None, thumbnail(image, self.config.thumbnail_side))


def _open(image: bytes | np.ndarray) -> tuple[Any, str | None, bytes | None]:
    """(a Pillow image of it, the original's media type or None when not a kept format, the
    original's bytes). The upload was decoded once already, within the service's limits."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(image), allow_pickle=False)
        return Image.fromarray(to_uint8(image)), NPY, buffer.getvalue()
    opened = Image.open(io.BytesIO(image))
    return opened, KEPT_FORMATS.get(opened.format or ""), image


def to_uint8(row: np.ndarray) -> np.ndarray:
    """An array row (C x H x W in [0, 1]) as an 8-bit H x W or H x W x 3 picture."""
    pixels = np.clip(np.rint(np.asarray(row, np.float64) * 255.0), 0, 255).astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels[:3].transpose(1, 2, 0)


def thumbnail(image: Any, side: int) -> bytes:
    """A PNG of at most `side` x `side` pixels (first frame; 8-bit grey or RGB). Small images
    (the incident's 8 x 8 digits) stay at their size: the page scales them up crisply."""
    from PIL import Image

    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    white = _white(image)  # of the whole image: resampling overshoots, and a float image's scale hangs on its peak
    image.thumbnail((side, side))  # before any conversion: a JPEG decodes at a reduced scale
    if white is not None:  # 16-bit, 32-bit and float grey: scaled to 8 bits, not clipped
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=white, neginf=0.0)
        image = Image.fromarray(np.clip(values / white * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif image.mode not in ("L", "RGB"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size)  # composited onto black, as the service does
        image.paste(rgba, mask=rgba.getchannel("A"))
    return png(image)


def _white(image: Any) -> float | None:
    """The value a wide image's white stands for, as runtime.preprocess scales it for the model
    (which this layer cannot import): 65535 for 16-bit; for float, 1 when every finite value is
    within [-1, 1], else 255; for 32-bit, the largest value (at least 255). None: an 8-bit image.
    Converted by Pillow instead, a float image in [0, 1] came out black and a 32-bit one wrapped."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if image.mode not in ("I", "F"):
        return None
    values = np.asarray(image)
    highest = float(np.fmax.reduce(values, axis=None))  # fmax: NaN left out
    if image.mode == "I":
        return max(highest, 255.0)
    peak = max(highest, -float(np.fmin.reduce(values, axis=None)))
    return 1.0 if peak <= 1.0 else 255.0  # NaN everywhere compares False: 255


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
