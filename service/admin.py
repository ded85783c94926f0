"""Authenticated admin routes, mounted at /admin.

    GET  /admin/drift-report?format=html|json&window_seconds=300&model=NAME
    GET  /admin/guardrails                 the active chain;  POST: swap it
    GET  /admin/predictions[/{request_id}]  look up the prediction log
    GET  /admin/predictions-summary        flags per subgroup in the log

Off unless CLASSGUARD_ADMIN_TOKEN is set (they answer 404); with it, every request needs
`Authorization: Bearer <token>`, compared in constant time.
"""

from __future__ import annotations

import asyncio
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import metrics
from service.errors import InputError
from service.http_input import require_bearer


class Admin:
    def __init__(self) -> None:
        self.engine = None  # bound per worker when the service starts
        self.app = Starlette(routes=[
            Route("/drift-report", self.drift_report, methods=["GET"]),
            Route("/guardrails", self.show_guardrails, methods=["GET"]),
            Route("/guardrails", self.swap_guardrails, methods=["POST"]),
            Route("/predictions", self.list_predictions, methods=["GET"]),
            Route("/predictions/{request_id}", self.show_prediction, methods=["GET"]),
            Route("/predictions-summary", self.prediction_summary, methods=["GET"]),
        ])

    def bind(self, engine) -> None:
        self.engine = engine

    def authorize(self, request: Request) -> None:
        token = self.engine.settings.admin_token if self.engine else None
        require_bearer(request, token, off_reason="admin_disabled", variable="CLASSGUARD_ADMIN_TOKEN")

    async def _guarded(self, request: Request, work) -> Response:
        """Authorize, run `work` (a dict becomes JSON), and answer an InputError as a counted 4xx."""
        try:
            self.authorize(request)
            result = await work()
        except InputError as exc:
            return self._refuse(exc)
        return result if isinstance(result, Response) else JSONResponse(result)

    async def drift_report(self, request: Request) -> Response:
        from service.drift_report import NotEnoughData, build

        async def work():
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
            return Response(body, media_type=media)

        return await self._guarded(request, work)

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
            except (ValueError, RecursionError):
                raise InputError("bad_parameter", 'send a JSON object: {"profile": NAME[, "chain": [...]]}') from None
            if not isinstance(body, dict) or not isinstance(body.get("profile"), str):
                raise InputError("bad_parameter", "the JSON object needs a `profile` name")
            try:
                chain = self.engine.guardrails.swap(profile=body["profile"], chain=body.get("chain"))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError too
                raise InputError("invalid_guardrails", str(exc)) from None
            return {"profile": chain.profile, "hash": chain.config_hash, "applied": True}

        return await self._guarded(request, work)

    async def list_predictions(self, request: Request) -> Response:
        """Logged predictions, newest first: ?since=15m&until=&subgroup=&flag=&action=&model=
        &flagged=1&limit=100&format=json|jsonl|csv."""
        from service import prediction_log

        async def work():
            p = request.query_params
            fmt = p.get("format", "json")
            if fmt not in ("json", "jsonl", "csv"):
                raise InputError("bad_parameter", "format must be json, jsonl or csv")
            try:
                filters = dict(since=prediction_log.parse_since(p.get("since")),
                               until=prediction_log.parse_since(p.get("until")),
                               subgroup=p.get("subgroup"), flag=p.get("flag"), action=p.get("action"),
                               model=p.get("model"), flagged_only=p.get("flagged") in ("1", "true"),
                               limit=min(int(p.get("limit", "100")), 10_000))
            except ValueError as exc:
                raise InputError("bad_parameter", str(exc)) from None
            records = await asyncio.to_thread(self._read, prediction_log.query, **filters)
            if fmt == "json":
                return {"count": len(records), "predictions": records}
            media = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
            return Response(prediction_log.export(records, fmt), media_type=media)

        return await self._guarded(request, work)

    async def show_prediction(self, request: Request) -> Response:
        from service import prediction_log

        async def work():
            record = await asyncio.to_thread(self._read, prediction_log.get, request.path_params["request_id"])
            if record is None:
                raise InputError("not_found", "no logged prediction has this request id")
            return record

        return await self._guarded(request, work)

    async def prediction_summary(self, request: Request) -> Response:
        from service import prediction_log

        async def work():
            since = time.time() - _seconds(request.query_params.get("window_seconds", "3600"))
            rows = await asyncio.to_thread(self._read, prediction_log.summary, since)
            return {"since": since, "rows": rows}

        return await self._guarded(request, work)

    def _read(self, fn, *args, **kwargs):
        from service import prediction_log

        config = self.engine.settings.log
        if not config.enabled:
            raise InputError("not_enough_data", "the prediction log is disabled (log.enabled: false)")
        conn = prediction_log.connect(config.path)
        try:
            return fn(conn, *args, **kwargs)
        finally:
            conn.close()

    @staticmethod
    def _refuse(exc: InputError) -> Response:
        metrics.REJECTED.labels("admin", exc.reason).inc()
        return JSONResponse({"error": exc.reason, "detail": exc.detail, "status": exc.status}, status_code=exc.status)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError("bad_parameter", f"window_seconds must be a number, got {text!r}") from None
    if not 1.0 <= value <= 86_400.0:
        raise InputError("bad_parameter", "window_seconds must be within 1..86400")
    return value


ADMIN = Admin()
