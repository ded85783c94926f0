"""What happens to a classify request, independent of the BentoML shell around it.

decode -> preprocess -> resolve subgroup -> micro-batched forward pass -> response + metrics.
Every client mistake becomes an InputError (a counted 4xx with a JSON reason); the model
answers everything else.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import metrics
from service.array_input import decode_array
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import ENDPOINTS, REASONS, InputError, internal_error
from service.http_input import (Upload, batch_contexts, image_uploads, parse_context, read_body, read_form,
                                require_bearer)
from service.guardrail_runtime import GuardrailRuntime, chain_context
from service.ids import CORRELATION_ID_HEADER, REQUEST_ID_HEADER, correlation_id, slot_id, time_ordered_id
from service.models import ServedModel, find_stored, resolve_device
from service.monitoring import MonitorPipeline, NoMonitors, runtime_dir
from service.prediction_log import NoLog, PredictionLog
from service.preprocess import decode_image, normalise, to_unit_array
from service.serving import Serving
from service.subgroups import SubgroupResolver

_DECODE_IN_THREAD_BYTES = 256 * 1024  # bigger uploads decode off the event loop
CLASSIFY_FIELDS = frozenset({"image", "context"})
BATCH_FIELDS = frozenset({"images", "array", "contexts"})


@dataclass
class Prepared:
    """One image ready for the model."""

    pixels: np.ndarray
    subgroup: dict[str, str]


class Engine:
    def __init__(self, settings: Settings) -> None:
        import torch

        self.settings = settings
        self.device = resolve_device(settings.device)
        if self.device == "cpu":
            torch.set_num_threads(settings.torch_threads)
        self.models: dict[str, ServedModel] = {}
        for i, tag in enumerate(settings.models.tags()):
            model = ServedModel.load(find_stored(tag), "primary" if i == 0 else "secondary", self.device,
                                     settings.half_precision)
            self.models[model.name] = model
            metrics.MODEL_INFO.labels(model.name, model.version, model.role, model.device, model.precision).set(1)
        self.primary = next(iter(self.models.values()))
        self.spec = self.primary.profile.input_spec
        self.resolver = SubgroupResolver(settings.subgroups.attributes)
        self.monitors = (
            MonitorPipeline(settings.monitors, list(self.models), [m.profile for m in self.models.values()],
                            self.resolver.keys())
            if settings.monitors.enabled else NoMonitors()
        )
        labels = {label for model in self.models.values() for label in model.profile.labels}
        self.guardrails = GuardrailRuntime(settings.guardrails, chain_context(settings, labels),
                                           shared_dir=runtime_dir("guardrails"))
        self.batchers = {
            name: MicroBatcher(model.predict, max_batch_size=settings.batching.max_batch_size,
                               max_wait_s=settings.batching.max_wait_ms / 1000.0, name=name,
                               on_batch=self._batch_observer(name))
            for name, model in self.models.items()
        }
        # Shadows are off the response path, so they can wait to share a forward pass: one
        # pass per sparse shadow request costs more in thread hand-offs than the model itself.
        self.shadow_batchers = {
            name: MicroBatcher(model.predict, max_batch_size=settings.batching.max_batch_size,
                               max_wait_s=settings.guardrails.shadow_wait_ms / 1000.0, name=f"shadow-{name}")
            for name, model in self.models.items()
        }
        self.log = PredictionLog(settings.log) if settings.log.enabled else NoLog()
        self.serving = Serving(self)
        self._create_series()
        for model in self.models.values():  # first forward pass pays lazy init, not a client
            model.predict(np.zeros((1, self.spec.channels, self.spec.height, self.spec.width), np.float32))

    def _create_series(self) -> None:
        """Zero-valued series for every bounded label combination, so rate() in alerts and
        dashboards sees them before the first event (a missing series is not a zero)."""
        keys = self.resolver.keys()
        for endpoint in ENDPOINTS:
            metrics.INTERNAL_ERRORS.labels(endpoint)
            for reason in REASONS:
                metrics.REJECTED.labels(endpoint, reason)
        for model in self.models:
            for reason in ("timeout", "error"):
                metrics.ROUTE_FALLBACKS.labels(model, reason)
            for key in keys:
                for outcome in ("correct", "wrong", "abstained"):
                    metrics.FEEDBACK.labels(model, key, outcome)
                metrics.PREDICTIONS.labels(model, key, metrics.ABSTAINED)  # abstention rate reads 0, not nothing
                metrics.ROUTED.labels(model, key)
                metrics.ANOMALIES.labels("low_confidence", model, key)
                metrics.ANOMALIES.labels("known_confusion", model, key)
                for outcome in ("agree", "flip"):
                    metrics.SHADOW_COMPARISONS.labels(model, key, outcome)
                for pair in self.settings.monitors.known_confusions:
                    metrics.KNOWN_CONFUSIONS.labels(pair.name, model, key)
        for outcome in ("applied", "refused", "sync_failed", "audit_failed"):
            metrics.GUARDRAIL_SWAPS.labels(outcome)
        for stage in ("write", "retention", "flush"):
            metrics.LOG_ERRORS.labels(stage)
        metrics.MONITOR_DROPPED.inc(0)
        metrics.MONITOR_EVENTS.inc(0)

    @staticmethod
    def _batch_observer(name: str):
        size, duration = metrics.BATCH_SIZE.labels(name), metrics.INFERENCE_DURATION.labels(name)

        def observe(n: int, seconds: float) -> None:
            size.observe(n)
            duration.observe(seconds)

        return observe

    # -- per image -------------------------------------------------------------------------
    def prepare(self, upload: Upload, raw_context: Any) -> Prepared:
        limits = self.settings.limits
        context = parse_context(raw_context, limits.max_context_bytes)
        image = decode_image(upload.data, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side)
        unit = to_unit_array(image, self.spec)
        return Prepared(normalise(unit, self.spec), self.resolver.resolve(context, unit))

    async def prepare_async(self, upload: Upload, raw_context: Any) -> Prepared:
        if len(upload.data) > _DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(self.prepare, upload, raw_context)
        return self.prepare(upload, raw_context)

    # -- endpoints -------------------------------------------------------------------------
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
        return JSONResponse(body, status_code=status, headers=headers)

    async def feedback(self, request: Request) -> JSONResponse:
        try:
            items = await self._feedback_items(request)
            if not self.settings.log.enabled:
                raise InputError("feedback_disabled", "feedback needs the prediction log (log.enabled: true)")
            labels_of = {m.name: m.profile.labels for m in self.models.values()}
            pairs = [(p.source, p.target) for p in self.settings.monitors.known_confusions]
            results = await asyncio.to_thread(self._record_feedback, items, labels_of, pairs)
        except InputError as exc:
            metrics.REJECTED.labels("feedback", exc.reason).inc()
            return JSONResponse({"error": exc.reason, "detail": exc.detail, "status": exc.status}, status_code=exc.status)
        except Exception:
            return JSONResponse(internal_error("feedback"), status_code=500)
        status = results[0]["status"] if len(results) == 1 else 200
        return JSONResponse({"recorded": sum(r["result"] == "recorded" for r in results), "results": results},
                            status_code=status)

    async def _feedback_items(self, request: Request) -> list[tuple[str, str]]:
        require_bearer(request, self.settings.feedback_token, off_reason="feedback_disabled",
                       variable="CLASSGUARD_FEEDBACK_TOKEN")
        try:
            body = json.loads(await read_body(request, 1_000_000))
        except (ValueError, RecursionError):
            raise InputError("malformed_feedback", "send JSON: {request_id, label} or {items: [...]}") from None
        raw = body.get("items", [body]) if isinstance(body, dict) else None
        if not isinstance(raw, list) or not 1 <= len(raw) <= 1000:
            raise InputError("malformed_feedback", "send {request_id, label} or {items: [...]} with 1 to 1,000 items")
        items = []
        for item in raw:
            if not (isinstance(item, dict) and isinstance(item.get("request_id"), str) and isinstance(item.get("label"), str)):
                raise InputError("malformed_feedback", "each item needs string `request_id` and `label`")
            items.append((item["request_id"], item["label"]))  # ids and labels are judged per item
        return items

    def _record_feedback(self, items, labels_of, pairs) -> list[dict[str, Any]]:
        from service import feedback, prediction_log

        if hasattr(self.log, "flush"):
            self.log.flush()  # this worker's newest answers are findable at once
        conn = prediction_log.connect(self.settings.log.path)
        try:
            return feedback.record(conn, items, labels_of, pairs)
        finally:
            conn.close()

    async def _classify(self, request: Request, request_id: str, correlation: str | None) -> dict[str, Any]:
        fields = await read_form(request, self.settings.limits, max_files=1, allowed=CLASSIFY_FIELDS)
        uploads = image_uploads(fields, "image")  # a second file part is refused by read_form
        contexts = fields.get("context", [None])
        if len(contexts) > 1:
            raise InputError("malformed_context", "send at most one `context` field")
        item = await self.prepare_async(uploads[0], contexts[0])
        return (await self.serving.answer_all(item.pixels[None], [item.subgroup], [request_id], [correlation],
                                              [uploads[0].data]))[0]

    async def _classify_batch(self, request: Request, request_id: str, correlation: str | None) -> dict[str, Any]:
        limit = self.settings.limits.max_batch_images
        fields = await read_form(request, self.settings.limits, max_files=limit, allowed=BATCH_FIELDS)
        if "array" in fields:
            return await self._classify_array(fields, request_id, correlation)
        uploads = image_uploads(fields, "images")
        raw_contexts = batch_contexts(fields, len(uploads))
        results: list[dict[str, Any] | None] = [None] * len(uploads)
        ready: list[tuple[int, Prepared]] = []
        for i, (upload, raw) in enumerate(zip(uploads, raw_contexts)):
            try:
                ready.append((i, await self.prepare_async(upload, raw)))
            except InputError as exc:  # one bad image fails only its own slot
                metrics.REJECTED.labels("classify_batch", exc.reason).inc()
                results[i] = {"index": i, **exc.body(slot_id(request_id, i))}
        if ready:
            await self._answer_slots(results, [i for i, _ in ready], np.stack([p.pixels for _, p in ready]),
                                     [p.subgroup for _, p in ready], request_id, correlation,
                                     [uploads[i].data for i, _ in ready])
        return {"request_id": request_id, "correlation_id": correlation, "model": self.primary.tag, "results": results}

    async def _classify_array(self, fields: dict[str, list[Any]], request_id: str,
                              correlation: str | None) -> dict[str, Any]:
        """One .npy upload of N images: decoded and normalised in one piece, subgroups per image."""
        arrays = fields["array"]
        if "images" in fields or len(arrays) != 1 or not isinstance(arrays[0], Upload):
            raise InputError("malformed_array", "send one `array` file upload, or `images`, not both")
        data, max_images = arrays[0].data, self.settings.limits.max_batch_images
        if len(data) > _DECODE_IN_THREAD_BYTES:
            unit = await asyncio.to_thread(decode_array, data, self.spec, max_images)
        else:
            unit = decode_array(data, self.spec, max_images)
        raw_contexts = batch_contexts(fields, len(unit))
        limit = self.settings.limits.max_context_bytes
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
                                     [u.tobytes() for u in unit])
        return {"request_id": request_id, "correlation_id": correlation, "model": self.primary.tag, "results": results}

    async def _answer_slots(self, results: list, idx: list[int], pixels: np.ndarray, subgroups: list[dict[str, str]],
                            request_id: str, correlation: str | None, images: list[bytes]) -> None:
        """Answer the images that passed preparation into their slots of `results`."""
        answers = await self.serving.answer_all(pixels, subgroups, [slot_id(request_id, i) for i in idx],
                                                [slot_id(correlation, i) for i in idx], images)
        for i, answer in zip(idx, answers):
            results[i] = {"index": i, **answer}
