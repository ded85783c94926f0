"""The classify endpoints: what happens to a request, from its multipart form to its answer.

read the form with limits -> decode + preprocess -> resolve subgroup -> Serving (micro-batched
forward pass, monitors, guardrails, log) -> JSON answer + metrics. Every client mistake
becomes an InputError (a counted 4xx with a JSON reason); the model answers everything else.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from monitors.reference import InputSpec
from runtime.array_input import decode_array
from runtime.preprocess import decode_image, normalise, to_pixels
from runtime.serving import Serving
from runtime.subgroups import SubgroupResolver
from service import metrics
from service.config import LimitsConfig
from service.errors import InputError, internal_error
from service.http_input import Upload, batch_contexts, image_uploads, parse_context, read_form
from service.ids import CORRELATION_ID_HEADER, REQUEST_ID_HEADER, correlation_id, slot_id, time_ordered_id

_DECODE_IN_THREAD_BYTES = 256 * 1024  # bigger uploads (a batch's, in all) decode off the event loop
# A large batch's images decode side by side in this pool (Pillow releases the interpreter lock
# while decoding); bounded, so a batch of large images holds at most this many decoded at once.
_DECODE_POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="classguard-decode")
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

    def decode(self, upload: Upload, raw_context: Any) -> Decoded:
        limits = self.limits
        context = parse_context(raw_context, limits.max_context_bytes)
        image = decode_image(upload.data, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side)
        return Decoded(to_pixels(image, self.spec), context)

    def prepare(self, upload: Upload, raw_context: Any) -> Prepared:
        decoded = self.decode(upload, raw_context)
        unit = decoded.pixels.astype(np.float32) / np.float32(255.0)
        return Prepared(normalise(unit, self.spec), self.resolver.resolve(decoded.context, unit))

    async def prepare_many(self, uploads: Sequence[Upload], raw_contexts: Sequence[Any],
                           pool: ThreadPoolExecutor | None) -> PreparedBatch:
        """`prepare` for a batch: each upload decoded (side by side in `pool` if given, else one
        after another), then scaling, normalisation and subgroups once for the whole batch
        (tests/service/test_decode_pool.py holds it equal to `prepare` image by image)."""
        if pool is not None:
            outcomes = await decode_in_pool(self.decode, uploads, raw_contexts, pool)
        else:
            outcomes = [attempt(self.decode, upload, raw) for upload, raw in zip(uploads, raw_contexts)]
        refused = {i: o for i, o in enumerate(outcomes) if isinstance(o, InputError)}
        ready = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Decoded)]
        if not ready:
            return PreparedBatch([], np.zeros((0, self.spec.channels, self.spec.height, self.spec.width), np.float32),
                                 [], refused)
        unit = np.stack([d.pixels for _, d in ready]).astype(np.float32) / np.float32(255.0)
        subgroups = self.resolver.resolve_many([d.context for _, d in ready], unit)
        return PreparedBatch([i for i, _ in ready], normalise(unit, self.spec), subgroups, refused)

    async def prepare_async(self, upload: Upload, raw_context: Any) -> Prepared:
        if len(upload.data) > _DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(self.prepare, upload, raw_context)
        return self.prepare(upload, raw_context)

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
        large = sum(len(u.data) for u in uploads) > _DECODE_IN_THREAD_BYTES
        batch = await self.prepare_many(uploads, raw_contexts, _DECODE_POOL if large else None)
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


async def decode_in_pool(decode: Callable[[Upload, Any], Decoded], uploads: Sequence[Upload],
                         contexts: Sequence[Any], pool: ThreadPoolExecutor) -> list[Decoded | InputError]:
    """Each upload decoded in `pool`, all at once; in upload order, a client's mistake in its slot."""
    loop = asyncio.get_running_loop()
    return list(await asyncio.gather(*(loop.run_in_executor(pool, attempt, decode, u, raw)
                                       for u, raw in zip(uploads, contexts))))


def attempt(work: Callable[..., T], *args: Any) -> T | InputError:
    """`work(*args)`, or the client's mistake it raised."""
    try:
        return work(*args)
    except InputError as exc:
        return exc
