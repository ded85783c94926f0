"""A request's inputs prepared for the model: uploaded bytes (images, or one .npy array) and the
client's contexts in, normalised pixels and subgroups out, every client mistake an InputError.

Images are opened (the header checked against every limit, no pixel decoded), decoded within the
worker's byte budget (in the bounded decode pool when they are large), reduced to the model's
input, then scaled, normalised and given subgroups, once for a whole batch. A batch's mistakes
stay in their slots: one bad image or context fails only its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image

from core.config import LimitsConfig
from core.errors import InputError
from monitors.reference import InputSpec
from runtime.array_input import decode_array
from runtime.fast_png import model_shaped_png
from runtime.preprocess import load, metadata_bytes, normalise, open_image, refuse_costly, to_pixels
from runtime.subgroups import ImageFacts, SubgroupResolver, camera_of

_DECODE_IN_THREAD_BYTES = 256 * 1024  # bigger uploads (a batch's, in all) are read off the event loop
# Images whose preparation (decoding included) takes at most this, a batch's in all, are prepared
# on the event loop; anything larger goes to the decode pool. Judged from the headers, not the
# upload's size: a 77 KB PNG can hold 6300 x 6300 16-bit pixels.
_PREPARE_INLINE_BYTES = 256 * 1024
_KEEP_HEADER_TEXT_BYTES = 64 * 1024
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
T = TypeVar("T")


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota when one is set
    (`os.cpu_count()` is the node's, which on a large node multiplied the images decoding at once)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller here: affinity alone
    return max(1, cpus)


class DecodeBudget:
    """Bytes of image preparation (as `preparing_bytes` states them) a worker holds at once.
    A holder waits until its bytes are free; holders are admitted in arrival order, so a large
    image is not starved by a stream of small ones. One hold is at most the capacity: larger
    images are refused before they get here."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held = 0
        self._tickets = 0
        self._serving = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = min(size, self.capacity)
        with self._changed:
            ticket, self._tickets = self._tickets, self._tickets + 1
            self._changed.wait_for(lambda: self._serving == ticket and self._held + size <= self.capacity)
            self._serving += 1
            self._held += size
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._held -= size
                self._changed.notify_all()


# A large batch's images decode side by side in this pool (Pillow releases the interpreter lock
# while decoding): as many threads as the CPUs the process may use, at most 8. What they hold at
# once is bounded by each worker's DecodeBudget, not by the thread count.
DECODE_POOL = ThreadPoolExecutor(max_workers=min(8, usable_cpus()), thread_name_prefix="classguard-decode")


@dataclass
class Prepared:
    """One image ready for the model."""

    pixels: np.ndarray
    subgroup: dict[str, str]


@dataclass
class Opened:
    """One upload whose header passed the limits, and what preparing it will cost."""

    data: bytes
    cost: int  # bytes preparing it takes (`preparing_bytes`)
    context: dict[str, Any] | None
    image: Image.Image | None  # the header read, kept unless it carries much text (read again then)
    facts: ImageFacts | None = None  # gathered only when a subgroup deriver reads them
    pixels: np.ndarray | None = None  # decoded already: a PNG in the model's shape (runtime/fast_png.py)


@dataclass
class Decoded:
    """One upload decoded: its pixels (channels x height x width uint8) and its context."""

    pixels: np.ndarray
    context: dict[str, Any] | None
    facts: ImageFacts | None = None


@dataclass
class PreparedBatch:
    """A batch's images that passed preparation, ready for the model, and each refusal."""

    slots: list[int]  # the upload index of each ready image
    pixels: np.ndarray  # N x C x H x W, normalised
    subgroups: list[dict[str, str]]
    refused: dict[int, InputError]
    # each ready image as sent (an upload's bytes, or the array's row), for the log's hash and
    # capture (None: not kept)
    images: list[bytes] | list[np.ndarray] | None


def parse_context(raw: str | bytes | None, limit: int) -> dict[str, Any] | None:
    """A JSON object of subgroup attributes (sent as text, or as a file's bytes), or None when
    absent/empty/null."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if len(raw.encode()) > limit:
        raise InputError("malformed_context", f"context is larger than {limit} bytes")
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deeply nested JSON exhausts the parser's recursion
        raise InputError("malformed_context", f"context is not valid JSON: {type(exc).__name__}: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError("malformed_context", f"context must be a JSON object, got {type(value).__name__}")
    return value


class Preparer:
    """Built once per worker from the model's input spec, the subgroup resolver and the limits."""

    def __init__(self, *, resolver: SubgroupResolver, spec: InputSpec, limits: LimitsConfig) -> None:
        self.resolver, self.spec, self.limits = resolver, spec, limits
        self.budget = DecodeBudget(limits.max_decoded_bytes)

    def open(self, data: bytes, raw_context: str | bytes | None) -> Opened:
        """The context and the image's header, checked against every limit (no pixels decoded).
        A header holding more than `_KEEP_HEADER_TEXT_BYTES` of text (a PNG's, decompressed: up
        to 1 MB from 1 KB) is not kept, so a batch's headers waiting for the pool stay small."""
        context = parse_context(raw_context, self.limits.max_context_bytes)
        if not self.resolver.wants_facts:  # the facts come from Pillow's header
            pixels = model_shaped_png(data, self.spec)
            if pixels is not None:
                return Opened(data, 0, context, None, pixels=pixels)
        image = self._header(data)
        try:
            cost = refuse_costly(image, self.spec, self.limits.max_decoded_bytes)
        except InputError:
            image.close()
            raise
        facts = ImageFacts(image.width, image.height, image.format or "unknown",
                           camera_of(image)) if self.resolver.wants_facts else None
        if metadata_bytes(image) > _KEEP_HEADER_TEXT_BYTES:
            image.close()
            return Opened(data, cost, context, None, facts)
        return Opened(data, cost, context, image, facts)

    def pixels(self, opened: Opened) -> Decoded:
        """Decode and reduce to the model's input; the full-size image is released on return."""
        if opened.pixels is not None:
            return Decoded(opened.pixels, opened.context, opened.facts)
        image, opened.image = opened.image or self._header(opened.data), None
        try:
            return Decoded(to_pixels(load(image), self.spec), opened.context, opened.facts)
        finally:
            image.close()

    def _header(self, data: bytes) -> Image.Image:
        return open_image(data, max_pixels=self.limits.max_image_pixels, max_side=self.limits.max_image_side)

    def pixels_within_budget(self, opened: Opened) -> Decoded:
        """`pixels` once the worker's budget has room for it (may wait: never on the event loop)."""
        with self.budget.hold(opened.cost):
            return self.pixels(opened)

    def prepare(self, data: bytes, raw_context: str | bytes | None) -> Prepared:
        return self._prepared(self.pixels_within_budget(self.open(data, raw_context)))

    def _prepared(self, decoded: Decoded) -> Prepared:
        unit = decoded.pixels.astype(np.float32) / np.float32(255.0)
        return Prepared(normalise(unit, self.spec), self.resolver.resolve(decoded.context, unit, decoded.facts))

    async def prepare_async(self, data: bytes, raw_context: str | bytes | None) -> Prepared:
        """`prepare`: the header read in the pool if the upload is large, the pixels decoded in
        the pool within the worker's budget unless the image is small."""
        large = len(data) > _DECODE_IN_THREAD_BYTES
        opened = await run_in(DECODE_POOL if large else None, self.open, data, raw_context)
        if opened.cost > _PREPARE_INLINE_BYTES:
            return self._prepared(await run_in(DECODE_POOL, self.pixels_within_budget, opened))
        return self._prepared(self.pixels(opened))

    async def prepare_many(self, uploads: Sequence[bytes], raw_contexts: Sequence[str | bytes | None],
                           pool: ThreadPoolExecutor | None = DECODE_POOL) -> PreparedBatch:
        """`prepare` for a batch: the headers read (in `pool` if the uploads are large), then the
        images decoded side by side in `pool` within the worker's budget when their cost in all
        is more than `_PREPARE_INLINE_BYTES`, else one after another here; then scaling,
        normalisation and subgroups once for the whole batch (tests/runtime/test_decode_pool.py
        holds it equal to `prepare` image by image)."""
        large = sum(len(data) for data in uploads) > _DECODE_IN_THREAD_BYTES
        opened = await run_in(pool if large else None, self.open_all, uploads, raw_contexts)
        if pool is not None and sum(o.cost for o in opened if isinstance(o, Opened)) > _PREPARE_INLINE_BYTES:
            outcomes = await decode_in_pool(self.pixels_within_budget, opened, pool)
        else:
            outcomes = [attempt(self.pixels, o) if isinstance(o, Opened) else o for o in opened]
        refused = {i: o for i, o in enumerate(outcomes) if isinstance(o, InputError)}
        ready = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Decoded)]
        if not ready:
            return PreparedBatch([], np.zeros((0, self.spec.channels, self.spec.height, self.spec.width), np.float32),
                                 [], refused, [])
        unit = np.stack([d.pixels for _, d in ready]).astype(np.float32) / np.float32(255.0)
        subgroups = self.resolver.resolve_many([d.context for _, d in ready], unit, [d.facts for _, d in ready])
        slots = [i for i, _ in ready]
        return PreparedBatch(slots, normalise(unit, self.spec), subgroups, refused, [uploads[i] for i in slots])

    def open_all(self, uploads: Sequence[bytes],
                 raw_contexts: Sequence[str | bytes | None]) -> list[Opened | InputError]:
        return [attempt(self.open, data, raw) for data, raw in zip(uploads, raw_contexts)]

    async def decode_array(self, data: bytes) -> np.ndarray:
        """One .npy upload of N images as N x C x H x W in [0, 1] (off the event loop when large)."""
        if len(data) > _DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(decode_array, data, self.spec, self.limits.max_batch_images)
        return decode_array(data, self.spec, self.limits.max_batch_images)

    def prepare_array(self, unit: np.ndarray, raw_contexts: Sequence[str | bytes | None],
                      keep_images: bool) -> PreparedBatch:
        """A decoded array's images with their contexts: normalised in one piece, subgroups per
        image; one bad context fails only its own image. `keep_images`: each ready image's
        [0, 1] float32 row (a view), for the log's hash and capture."""
        limit = self.limits.max_context_bytes
        contexts = [attempt(parse_context, raw, limit) for raw in raw_contexts]
        refused = {i: c for i, c in enumerate(contexts) if isinstance(c, InputError)}
        slots = [i for i, c in enumerate(contexts) if not isinstance(c, InputError)]
        unit = unit if len(slots) == len(unit) else unit[slots]
        facts = [ImageFacts(unit.shape[3], unit.shape[2], "npy")] * len(slots)  # an array has no header
        subgroups = self.resolver.resolve_many([contexts[i] for i in slots], unit, facts) if slots else []
        return PreparedBatch(slots, normalise(unit, self.spec), subgroups, refused,
                             list(unit) if keep_images else None)


async def decode_in_pool(decode: Callable[[Opened], Decoded], opened: Sequence[Opened | InputError],
                         pool: ThreadPoolExecutor) -> list[Decoded | InputError]:
    """Each opened upload decoded in `pool`, all at once; in upload order, a client's mistake
    (found at its header, or while decoding) in its slot."""

    async def one(item: Opened | InputError) -> Decoded | InputError:
        return item if isinstance(item, InputError) else await run_in(pool, attempt, decode, item)

    return list(await asyncio.gather(*(one(item) for item in opened)))


async def run_in(pool: ThreadPoolExecutor | None, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in `pool`, or here on the event loop when `pool` is None."""
    if pool is None:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(pool, work, *args)


def attempt(work: Callable[..., T], *args: Any) -> T | InputError:
    """`work(*args)`, or the client's mistake it raised."""
    try:
        return work(*args)
    except InputError as exc:
        return exc
