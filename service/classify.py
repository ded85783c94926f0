"""The classify endpoints: what happens to a request, from its multipart form to its answer.

read the form with limits -> runtime.prepare (decode, preprocess, resolve subgroups) -> Serving
(micro-batched forward pass, monitors, guardrails, log) -> JSON answer + metrics. Every client
mistake becomes an InputError (a counted 4xx with a JSON reason); the model answers everything else.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from core import metrics
from core.config import LimitsConfig
from core.errors import InputError
from core.ids import CORRELATION_ID_HEADER, REQUEST_ID_HEADER, correlation_id, slot_id, time_ordered_id
from guardrails.answer_table import AnswerTable
from monitors.reference import InputSpec
from runtime.prepare import PreparedBatch, Preparer
from runtime.serving import Serving
from runtime.subgroups import SubgroupResolver
from service.http_errors import internal_error
from service.http_input import Upload, batch_contexts, image_uploads, read_form

CLASSIFY_FIELDS = frozenset({"image", "context"})
BATCH_FIELDS = frozenset({"images", "array", "contexts"})
ANSWER_FORMATS = ("answers", "columns")  # /classify_batch?format=


class FastJSONResponse(JSONResponse):
    """Starlette's JSONResponse, rendered by orjson: the same compact UTF-8 JSON, several times
    faster for a batch of answers (numpy numbers, should one reach a body, as numbers)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def context_texts(raw: list[Any]) -> list[str | bytes | None]:
    """Each raw context as runtime.prepare reads it: a text field as text, a file part as its bytes."""
    return [r.data if isinstance(r, Upload) else r for r in raw]


class ClassifyEndpoints:
    def __init__(self, *, serving: Serving, resolver: SubgroupResolver, spec: InputSpec, limits: LimitsConfig,
                 model_tag: str, keep_images: bool) -> None:
        self.serving, self.limits, self.model_tag = serving, limits, model_tag
        self.keep_images = keep_images  # the log hashes or captures each image: hand it the rows of arrays
        self.preparer = Preparer(resolver=resolver, spec=spec, limits=limits)

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
        item = await self.preparer.prepare_async(uploads[0].data, context_texts(contexts)[0])
        return (await self.serving.answer_all(item.pixels[None], [item.subgroup], [request_id], [correlation],
                                              [uploads[0].data])).row(0)

    async def _classify_batch(self, request: Request, request_id: str, correlation: str | None) -> dict[str, Any]:
        answers = request.query_params.get("format", "answers")
        if answers not in ANSWER_FORMATS:
            raise InputError("bad_parameter", "format must be answers (a JSON object per image, the default) or "
                                              "columns (one object of arrays)")
        limit = self.limits.max_batch_images
        fields = await read_form(request, self.limits, max_files=limit, allowed=BATCH_FIELDS)
        if "array" in fields:
            arrays = fields["array"]
            if "images" in fields or len(arrays) != 1 or not isinstance(arrays[0], Upload):
                raise InputError("malformed_array", "send one `array` file upload, or `images`, not both")
            # one .npy upload of N images: decoded and normalised in one piece, subgroups per image
            unit = await self.preparer.decode_array(arrays[0].data)
            raw_contexts = context_texts(batch_contexts(fields, len(unit)))
            n, batch = len(unit), self.preparer.prepare_array(unit, raw_contexts, keep_images=self.keep_images)
        else:
            uploads = image_uploads(fields, "images")
            raw_contexts = context_texts(batch_contexts(fields, len(uploads)))
            n, batch = len(uploads), await self.preparer.prepare_many([u.data for u in uploads], raw_contexts)
        head = {"request_id": request_id, "correlation_id": correlation, "model": self.model_tag}
        errors = self._refusals(batch, request_id)
        table = await self._answer(batch, request_id, correlation)
        if answers == "columns":
            # the answered images' columns, row j the image at upload position index[j]; each
            # refusal apart, with its position
            return {**head, "format": "columns", "count": n, "index": batch.slots,
                    "answers": table.columns() if table is not None else None, "errors": errors}
        results: list[dict[str, Any] | None] = [None] * n
        for error in errors:
            results[error["index"]] = error
        if table is not None:
            for j, i in enumerate(batch.slots):
                results[i] = {"index": i, **table.row(j)}
        return {**head, "results": results}

    @staticmethod
    def _refusals(batch: PreparedBatch, request_id: str) -> list[dict[str, Any]]:
        """The images refused in preparation, in upload order, counted (one bad image or context
        fails only its own slot)."""
        errors = []
        for i, error in sorted(batch.refused.items()):
            metrics.REJECTED.labels("classify_batch", error.reason).inc()
            errors.append({"index": i, **error.body(slot_id(request_id, i))})
        return errors

    async def _answer(self, batch: PreparedBatch, request_id: str, correlation: str | None) -> AnswerTable | None:
        """The answers to the images that passed preparation (None: none did)."""
        if not batch.slots:
            return None
        idx = batch.slots
        return await self.serving.answer_all(batch.pixels, batch.subgroups, [slot_id(request_id, i) for i in idx],
                                             [slot_id(correlation, i) for i in idx], batch.images)
