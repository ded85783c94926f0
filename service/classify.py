"""The classify endpoints: what happens to a request, from its multipart form to its answer.

read the form with limits -> decode + preprocess -> resolve subgroup -> Serving (micro-batched
forward pass, monitors, guardrails, log) -> JSON answer + metrics. Every client mistake
becomes an InputError (a counted 4xx with a JSON reason); the model answers everything else.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import orjson
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse

from core import metrics
from core.config import LimitsConfig
from core.errors import InputError
from core.ids import CORRELATION_ID_HEADER, REQUEST_ID_HEADER, correlation_id, slot_id, time_ordered_id
from monitors.reference import InputSpec
from runtime.array_input import decode_array
from runtime.preprocess import load, metadata_bytes, normalise, open_image, refuse_costly, to_pixels
from runtime.serving import Serving
from runtime.subgroups import SubgroupResolver
from service.http_errors import internal_error
from service.http_input import Upload, batch_contexts, image_uploads, parse_context, read_form

_DECODE_IN_THREAD_BYTES = 256 * 1024  # bigger uploads (a batch's, in all) are read off the event loop
# Images whose preparation (decoding included) takes at most this, a batch's in all, are prepared
# on the event loop; anything larger goes to the decode pool. Judged from the headers, not the
# upload's size: a 77 KB PNG can hold 6300 x 6300 16-bit pixels.
_PREPARE_INLINE_BYTES = 256 * 1024
_KEEP_HEADER_TEXT_BYTES = 64 * 1024
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


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
_DECODE_POOL = ThreadPoolExecutor(max_workers=min(8, usable_cpus()), thread_name_prefix="classguard-decode")
T = TypeVar("T")
CLASSIFY_FIELDS = frozenset({"image", "context"})
BATCH_FIELDS = frozenset({"images", "array", "contexts"})


class FastJSONResponse(JSONResponse):
    """Starlette's JSONResponse, rendered by orjson: the same compact UTF-8 JSON, several times
    faster for a batch of answers (numpy numbers, should one reach a body, as numbers)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class Prepared:
    """One image ready for the model."""

    pixels: np.ndarray
    subgroup: dict[str, str]


@dataclass
class Opened:
    """One upload whose header passed the limits, and what preparing it will cost."""

    upload: Upload
    cost: int  # bytes preparing it takes (`preparing_bytes`)
    context: dict[str, Any] | None
    image: Image.Image | None  # the header read, kept unless it carries much text (read again then)


@dataclass
class Decoded:
    """One upload decoded: its pixels (channels x height x width uint8) and its context."""

    pixels: np.ndarray
    context: dict[str, Any] | None


@dataclass
class PreparedBatch:
    """A batch's images that passed preparation, ready for the model, and each refusal."""

    slots: list[int]  # the upload index of each ready image
    pixels: np.ndarray  # N x C x H x W, normalised
    subgroups: list[dict[str, str]]
    refused: dict[int, InputError]


class ClassifyEndpoints:
    def __init__(self, *, serving: Serving, resolver: SubgroupResolver, spec: InputSpec, limits: LimitsConfig,
                 model_tag: str, hash_images: bool) -> None:
        self.serving, self.resolver, self.spec, self.limits, self.model_tag = serving, resolver, spec, limits, model_tag
        self.hash_images = hash_images  # the log hashes each image: hand it the bytes
        self.budget = DecodeBudget(limits.max_decoded_bytes)

    def open(self, upload: Upload, raw_context: Any) -> Opened:
        """The context and the image's header, checked against every limit (no pixels decoded).
        A header holding more than `_KEEP_HEADER_TEXT_BYTES` of text (a PNG's, decompressed: up
        to 1 MB from 1 KB) is not kept, so a batch's headers waiting for the pool stay small."""
        context = parse_context(raw_context, self.limits.max_context_bytes)
        image = self._header(upload)
        try:
            cost = refuse_costly(image, self.spec, self.limits.max_decoded_bytes)
        except InputError:
            image.close()
            raise
        if metadata_bytes(image) > _KEEP_HEADER_TEXT_BYTES:
            image.close()
            return Opened(upload, cost, context, None)
        return Opened(upload, cost, context, image)

    def pixels(self, opened: Opened) -> Decoded:
        """Decode and reduce to the model's input; the full-size image is released on return."""
        image, opened.image = opened.image or self._header(opened.upload), None
        try:
            return Decoded(to_pixels(load(image), self.spec), opened.context)
        finally:
            image.close()

    def _header(self, upload: Upload) -> Image.Image:
        return open_image(upload.data, max_pixels=self.limits.max_image_pixels, max_side=self.limits.max_image_side)

    def pixels_within_budget(self, opened: Opened) -> Decoded:
        """`pixels` once the worker's budget has room for it (may wait: never on the event loop)."""
        with self.budget.hold(opened.cost):
            return self.pixels(opened)

    def decode(self, upload: Upload, raw_context: Any) -> Decoded:
        return self.pixels_within_budget(self.open(upload, raw_context))

    def prepare(self, upload: Upload, raw_context: Any) -> Prepared:
        return self._prepared(self.decode(upload, raw_context))

    def _prepared(self, decoded: Decoded) -> Prepared:
        unit = decoded.pixels.astype(np.float32) / np.float32(255.0)
        return Prepared(normalise(unit, self.spec), self.resolver.resolve(decoded.context, unit))

    async def prepare_many(self, uploads: Sequence[Upload], raw_contexts: Sequence[Any],
                           pool: ThreadPoolExecutor | None) -> PreparedBatch:
        """`prepare` for a batch: the headers read (in `pool` if the uploads are large), then the
        images decoded side by side in `pool` within the worker's budget when their cost in all
        is more than `_PREPARE_INLINE_BYTES`, else one after another here; then scaling,
        normalisation and subgroups once for the whole batch (tests/service/test_decode_pool.py
        holds it equal to `prepare` image by image)."""
        large = sum(len(u.data) for u in uploads) > _DECODE_IN_THREAD_BYTES
        opened = await run_in(pool if large else None, self.open_all, uploads, raw_contexts)
        if pool is not None and sum(o.cost for o in opened if isinstance(o, Opened)) > _PREPARE_INLINE_BYTES:
            outcomes = await decode_in_pool(self.pixels_within_budget, opened, pool)
        else:
            outcomes = [attempt(self.pixels, o) if isinstance(o, Opened) else o for o in opened]
        refused = {i: o for i, o in enumerate(outcomes) if isinstance(o, InputError)}
        ready = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Decoded)]
        if not ready:
            return PreparedBatch([], np.zeros((0, self.spec.channels, self.spec.height, self.spec.width), np.float32),
                                 [], refused)
        unit = np.stack([d.pixels for _, d in ready]).astype(np.float32) / np.float32(255.0)
        subgroups = self.resolver.resolve_many([d.context for _, d in ready], unit)
        return PreparedBatch([i for i, _ in ready], normalise(unit, self.spec), subgroups, refused)

    def open_all(self, uploads: Sequence[Upload], raw_contexts: Sequence[Any]) -> list[Opened | InputError]:
        return [attempt(self.open, upload, raw) for upload, raw in zip(uploads, raw_contexts)]

    async def prepare_async(self, upload: Upload, raw_context: Any) -> Prepared:
        """`prepare`: the header read in the pool if the upload is large, the pixels decoded in
        the pool within the worker's budget unless the image is small."""
        large = len(upload.data) > _DECODE_IN_THREAD_BYTES
        opened = await run_in(_DECODE_POOL if large else None, self.open, upload, raw_context)
        if opened.cost > _PREPARE_INLINE_BYTES:
            return self._prepared(await run_in(_DECODE_POOL, self.pixels_within_budget, opened))
        return self._prepared(self.pixels(opened))

    async def classify(self, request: Request) -> JSONResponse:
        return await self._handle("classify", request, self._classify)

    async def classify_batch(self, request: Request) -> JSONResponse:
        return await self._handle("classify_batch", request, self._classify_batch)

    async def _handle(self, endpoint: str, request: Request, work) -> JSONResponse:
        started = time.perf_counter()
        request_id = time_ordered_id()
        correlation = correlation_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            status, body = 200, await work(request, request_id, correlation)
        except InputError as exc:
            metrics.REJECTED.labels(endpoint, exc.reason).inc()
            status, body = exc.status, exc.body(request_id)
        except Exception:
            status, body = 500, internal_error(endpoint, request_id)
        metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)
        headers = {REQUEST_ID_HEADER: request_id}
        if correlation is not None:
            headers[CORRELATION_ID_HEADER] = correlation
        return FastJSONResponse(body, status_code=status, headers=headers)

    async def _classify(self, request: Request, request_id: str, correlation: str | None) -> dict[str, Any]:
        fields = await read_form(request, self.limits, max_files=1, allowed=CLASSIFY_FIELDS)
        uploads = image_uploads(fields, "image")  # a second file part is refused by read_form
        contexts = fields.get("context", [None])
        if len(contexts) > 1:
            raise InputError("malformed_context", "send at most one `context` field")
        item = await self.prepare_async(uploads[0], contexts[0])
        return (await self.serving.answer_all(item.pixels[None], [item.subgroup], [request_id], [correlation],
                                              [uploads[0].data]))[0]

    async def _classify_batch(self, request: Request, request_id: str, correlation: str | None) -> dict[str, Any]:
        limit = self.limits.max_batch_images
        fields = await read_form(request, self.limits, max_files=limit, allowed=BATCH_FIELDS)
        if "array" in fields:
            return await self._classify_array(fields, request_id, correlation)
        uploads = image_uploads(fields, "images")
        raw_contexts = batch_contexts(fields, len(uploads))
        results: list[dict[str, Any] | None] = [None] * len(uploads)
        batch = await self.prepare_many(uploads, raw_contexts, _DECODE_POOL)
        for i, error in batch.refused.items():  # one bad image fails only its own slot
            metrics.REJECTED.labels("classify_batch", error.reason).inc()
            results[i] = {"index": i, **error.body(slot_id(request_id, i))}
        if batch.slots:
            await self._answer_slots(results, batch.slots, batch.pixels, batch.subgroups, request_id, correlation,
                                     [uploads[i].data for i in batch.slots])
        return {"request_id": request_id, "correlation_id": correlation, "model": self.model_tag, "results": results}

    async def _classify_array(self, fields: dict[str, list[Any]], request_id: str,
                              correlation: str | None) -> dict[str, Any]:
        """One .npy upload of N images: decoded and normalised in one piece, subgroups per image."""
        arrays = fields["array"]
        if "images" in fields or len(arrays) != 1 or not isinstance(arrays[0], Upload):
            raise InputError("malformed_array", "send one `array` file upload, or `images`, not both")
        data, max_images = arrays[0].data, self.limits.max_batch_images
        if len(data) > _DECODE_IN_THREAD_BYTES:
            unit = await asyncio.to_thread(decode_array, data, self.spec, max_images)
        else:
            unit = decode_array(data, self.spec, max_images)
        raw_contexts = batch_contexts(fields, len(unit))
        limit = self.limits.max_context_bytes
        results: list[dict[str, Any] | None] = [None] * len(unit)
        ready: list[tuple[int, dict[str, Any] | None]] = []
        for i, raw in enumerate(raw_contexts):
            try:
                ready.append((i, parse_context(raw, limit)))
            except InputError as exc:  # one bad context fails only its own image
                metrics.REJECTED.labels("classify_batch", exc.reason).inc()
                results[i] = {"index": i, **exc.body(slot_id(request_id, i))}
        if ready:
            idx = [i for i, _ in ready]
            unit = unit if len(idx) == len(unit) else unit[idx]
            subgroups = self.resolver.resolve_many([c for _, c in ready], unit)
            await self._answer_slots(results, idx, normalise(unit, self.spec), subgroups, request_id, correlation,
                                     [u.tobytes() for u in unit] if self.hash_images else None)
        return {"request_id": request_id, "correlation_id": correlation, "model": self.model_tag, "results": results}

    async def _answer_slots(self, results: list, idx: list[int], pixels: np.ndarray, subgroups: list[dict[str, str]],
                            request_id: str, correlation: str | None, images: list[bytes] | None) -> None:
        """Answer the images that passed preparation into their slots of `results`."""
        answers = await self.serving.answer_all(pixels, subgroups, [slot_id(request_id, i) for i in idx],
                                                [slot_id(correlation, i) for i in idx], images)
        for i, answer in zip(idx, answers):
            results[i] = {"index": i, **answer}


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
