"""Authenticated admin routes, mounted at /admin.

    GET /admin/drift-report?format=html|json&window_seconds=300&model=NAME

Off unless CLASSGUARD_ADMIN_TOKEN is set (they answer 404); with it, every request needs
`Authorization: Bearer <token>`, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import metrics
from service.errors import InputError


class Admin:
    def __init__(self) -> None:
        self.engine = None  # bound per worker when the service starts
        self.app = Starlette(routes=[
            Route("/drift-report", self.drift_report, methods=["GET"]),
            Route("/guardrails", self.show_guardrails, methods=["GET"]),
            Route("/guardrails", self.swap_guardrails, methods=["POST"]),
        ])

    def bind(self, engine) -> None:
        self.engine = engine

    def authorize(self, request: Request) -> None:
        token = self.engine.settings.admin_token if self.engine else None
        if token is None:
            raise InputError("admin_disabled", "admin routes are off: set CLASSGUARD_ADMIN_TOKEN to enable them")
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
            raise InputError("unauthorized", "send `Authorization: Bearer <CLASSGUARD_ADMIN_TOKEN>`")

    async def drift_report(self, request: Request) -> Response:
        from service.drift_report import NotEnoughData, build

        try:
            self.authorize(request)
            engine = self.engine
            fmt = request.query_params.get("format", "html")
            if fmt not in ("html", "json"):
                raise InputError("bad_parameter", "format must be html or json")
            window = _seconds(request.query_params.get("window_seconds", "300"))
            model = engine.models.get(request.query_params.get("model", engine.primary.name))
            if model is None:
                raise InputError("bad_parameter", f"unknown model; loaded: {sorted(engine.models)}")
            monitors = engine.monitors
            if not hasattr(monitors, "recent_events"):
                raise InputError("not_enough_data", "monitors are disabled (monitors.enabled: false)")
            recent = await asyncio.to_thread(monitors.recent_events, window, time.time())
            try:
                body, media = await asyncio.to_thread(
                    build, model.reference_rows(), recent, monitors.suite.model_index[model.name], model.name,
                    model.profile.labels, monitors.suite.subgroups, window, fmt)
            except NotEnoughData as exc:
                raise InputError("not_enough_data", str(exc)) from None
        except InputError as exc:
            metrics.REJECTED.labels("admin", exc.reason).inc()
            return JSONResponse({"error": exc.reason, "detail": exc.detail, "status": exc.status}, status_code=exc.status)
        return Response(body, media_type=media)


    async def _guarded(self, request: Request, work) -> Response:
        try:
            self.authorize(request)
            return JSONResponse(await work())
        except InputError as exc:
            metrics.REJECTED.labels("admin", exc.reason).inc()
            return JSONResponse({"error": exc.reason, "detail": exc.detail, "status": exc.status},
                                status_code=exc.status)

    async def show_guardrails(self, request: Request) -> Response:
        async def work():
            runtime = self.engine.guardrails
            runtime.sync()  # this worker may not have picked up a swap made on another yet
            return {**runtime.describe(), "guardrails": [g.name for g in runtime.chain.guardrails]}

        return await self._guarded(request, work)

    async def swap_guardrails(self, request: Request) -> Response:
        """Body: {"profile": NAME} for a declared profile, or {"profile": NAME, "chain": [...]}."""

        async def work():
            try:
                body = await request.json()
            except ValueError:
                raise InputError("bad_parameter", 'send a JSON object: {"profile": NAME[, "chain": [...]]}') from None
            if not isinstance(body, dict) or not isinstance(body.get("profile"), str):
                raise InputError("bad_parameter", "the JSON object needs a `profile` name")
            try:
                chain = self.engine.guardrails.swap(profile=body["profile"], chain=body.get("chain"))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError too
                raise InputError("invalid_guardrails", str(exc)) from None
            return {"profile": chain.profile, "hash": chain.config_hash, "applied": True}

        return await self._guarded(request, work)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError("bad_parameter", f"window_seconds must be a number, got {text!r}") from None
    if not 1.0 <= value <= 86_400.0:
        raise InputError("bad_parameter", "window_seconds must be within 1..86400")
    return value


ADMIN = Admin()
