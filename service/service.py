"""The BentoML service: a thin shell. runtime.engine.Engine wires the request path; the
endpoints (service.classify, service.feedback_endpoint, service.admin) receive its parts.

    bentoml serve            # from the repository root (bentofile.yaml names this service)
"""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

from core.config import load_settings
from runtime.active_chain import chain_context, check_startup_chain
from runtime.models import find_stored, stored_labels, stored_regions
from service import admin, bentoml_patches, http_server
from service.bentoml_patches import EndpointNames
from service.schemas import BatchResponse, ClassifyBatchForm, ClassifyForm, FeedbackForm, FeedbackResponse, Prediction

settings = load_settings()
# bounded request heads in the HTTP server, bounded BentoML request metrics, its timer fixed
http_server.install(settings.limits.max_header_bytes, settings.limits.header_timeout_seconds)
bentoml_patches.apply(EndpointNames(
    exact=["/", "/docs", "/docs.json", "/schema.json", "/healthz", "/livez", "/readyz", "/metrics",
           "/classify", "/classify_batch", "/feedback", *admin.endpoint_names()],
    templates=[*admin.endpoint_templates(), (r"/static_content/.*", "/static_content/{path}"),
               (r"/assets/.*", "/assets/{path}")],
))


class Classguard:
    """Image classification, watched: every prediction carries its subgroup, model and flags."""

    def __init__(self) -> None:
        from runtime.engine import Engine  # torch loads in the worker, not at import
        from service.classify import ClassifyEndpoints
        from service.feedback_endpoint import FeedbackEndpoint

        engine = self.engine = Engine(settings)
        self.endpoints = ClassifyEndpoints(serving=engine.serving, resolver=engine.resolver, spec=engine.spec,
                                           limits=settings.limits, model_tag=engine.primary.tag,
                                           keep_images=settings.log.store_image_hash or settings.capture.policy != "off")
        self.feedback_endpoint = FeedbackEndpoint(
            token=settings.feedback_token, log=engine.log, limits=settings.limits, labels_of=engine.labels_of(),
            pairs=engine.pairs(), hold=engine.hold, estimates=engine.estimates())
        self.admin = admin.Admin(token=settings.admin_token, max_body_bytes=settings.limits.max_admin_body_bytes,
                                 chain=engine.guardrails, models=engine.models, primary=engine.primary.name,
                                 monitors=engine.monitors, log=engine.log, regions=engine.regions,
                                 log_mode=settings.log.mode, capture_policy=settings.capture.policy,
                                 automation=engine.automation, alerts_token=settings.alerts_token)
        self._tasks: list = []

    @bentoml.on_startup
    async def start_background(self) -> None:
        import asyncio
        import gc

        # Everything loaded so far (torch, BentoML, the models, the profiles) lives as long as
        # the worker. Frozen, the garbage collector's full passes stop walking it: they had
        # cost about a quarter of the CPU under load (README, "Design choices, measured").
        gc.freeze()
        loop = asyncio.get_running_loop()
        # keep references: the event loop holds tasks only weakly
        self._tasks = [loop.create_task(work) for work in self.engine.background()]

    @bentoml.on_shutdown
    def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.engine.log.flush()  # rows still queued are written, not lost

    @bentoml.api(route="/classify", input_spec=ClassifyForm, output_spec=Prediction)
    async def classify(self, ctx: bentoml.Context, **_: object) -> JSONResponse:
        """Classify one image (multipart field `image`, optional `context` JSON)."""
        return _passthrough(ctx, await self.endpoints.classify(ctx.request))

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchForm, output_spec=BatchResponse)
    async def classify_batch(self, ctx: bentoml.Context, **_: object) -> JSONResponse:
        # one line: BentoML keeps a docstring's line breaks and indentation in the OpenAPI document
        """Classify many images in one request (repeated `images` or one `.npy` `array`, optional `contexts`), in order; `?format=columns`: one object of arrays."""  # noqa: E501
        return _passthrough(ctx, await self.endpoints.classify_batch(ctx.request))

    @bentoml.api(route="/feedback", input_spec=FeedbackForm, output_spec=FeedbackResponse)
    async def feedback(self, ctx: bentoml.Context, **_: object) -> JSONResponse:
        """True labels for answered requests (bearer CLASSGUARD_FEEDBACK_TOKEN): one item or `items`."""
        return _passthrough(ctx, await self.feedback_endpoint(ctx.request))


def _passthrough(ctx: bentoml.Context, response: JSONResponse) -> JSONResponse:
    # BentoML copies ctx.response's status onto a returned Response; keep ours.
    ctx.response.status_code = response.status_code
    return response


# Every configured model becomes a class attribute before decoration, so BentoML sees it
# and `bentoml build` packs it into the Bento.
_labels: set[str] = set()
_stored = [find_stored(_tag) for _tag in settings.models.tags()]  # a missing model is a clear error now, not a failed cloud pull later
for _i, (_tag, _model) in enumerate(zip(settings.models.tags(), _stored)):
    _labels.update(stored_labels(_model))
    setattr(Classguard, f"model_{_i}", bentoml.models.BentoModel(_tag))
_regions = stored_regions(_stored[0])  # the primary's
check_startup_chain(settings, chain_context(settings, _labels, _regions))  # a chain naming what does not exist fails here

# the worker's own Admin answers each admin request (no module-level engine to bind)
Classguard = bentoml.asgi_app(admin.admin_app(lambda: bentoml.get_current_service().admin), path=admin.MOUNT)(Classguard)
Classguard = bentoml.service(
    name="classguard",
    workers=settings.workers,
    logging={"access": {"enabled": settings.access_log}},
    traffic={"timeout": settings.limits.request_timeout_seconds},
)(Classguard)
