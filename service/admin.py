"""Authenticated admin routes, mounted at /admin.

    GET  /admin/drift-report?format=html|json&window_seconds=300&model=NAME
    GET  /admin/guardrails                 the active chain;  POST: swap it
    GET  /admin/predictions                the prediction log, newest first, a page at a time
    GET  /admin/predictions/{id}           one answer by its request id (or the client's correlation id)
    GET  /admin/predictions-summary        flags per subgroup in the log
    GET  /admin/regions?since=15m&until=&top=10&exemplars=5   regions of the embedding, ranked
    DELETE /admin/regions/{name}           retire new region nNN: its slot is free for the next group
    GET  /admin/inputs                     captured inputs (metadata, oldest first, a page at a time)
    GET  /admin/inputs/{id}[?thumbnail=1]  one captured input, re-encoded as PNG;  DELETE: erase it
    DELETE /admin/inputs?since=&until=     erase the captured inputs of a time range
    GET  /admin/incident?since=30m         the incident page: one self-contained HTML file
    POST /admin/alerts                     Alertmanager's webhook (its own token, CLASSGUARD_ALERTS_TOKEN):
                                           automatic actions (runtime/automation.py)
    GET  /admin/alerts?limit=100           the automatic actions' decisions, newest first

Off unless CLASSGUARD_ADMIN_TOKEN is set (they answer 404); with it, every request needs
`Authorization: Bearer <token>`, compared in constant time.

BentoML mounts the admin application when the service module is imported, before any worker
exists, so `admin_app()` builds a stateless one whose routes ask for the worker's `Admin`
(built in the worker with what it uses) at each request.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Callable, Mapping

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, compile_path

from core import metrics
from core.clock import CLOCK
from core.errors import InputError
from core.ids import is_lookup_id
from monitors.new_regions import new_region_names
from runtime.chain_config import check_profile_name
from runtime.monitor_pipeline import MonitorsDisabled
from service.http_errors import error_response, internal_error, route_error
from service.http_input import read_body, require_bearer
from store.database import StoreUnavailable, off_loop
from store.prediction_log import LogDisabled

if TYPE_CHECKING:  # types only: the models module loads torch
    from runtime.active_chain import GuardrailRuntime
    from runtime.automation import Automation
    from runtime.models import ServedModel
    from runtime.monitor_pipeline import MonitorPipeline, NoMonitors
    from store.prediction_log import NoLog, PredictionLog

MOUNT = "/admin"
ROUTES = [  # path under MOUNT, method, Admin method
    ("/drift-report", "GET", "drift_report"),
    ("/guardrails", "GET", "show_guardrails"),
    ("/guardrails", "POST", "swap_guardrails"),
    ("/predictions", "GET", "list_predictions"),
    ("/predictions/{request_id}", "GET", "show_prediction"),
    ("/predictions-summary", "GET", "prediction_summary"),
    ("/regions", "GET", "regions"),
    ("/regions/{name}", "DELETE", "retire_region"),
    ("/inputs", "GET", "list_inputs"),
    ("/inputs", "DELETE", "erase_inputs"),
    ("/inputs/{request_id}", "GET", "show_input"),
    ("/inputs/{request_id}", "DELETE", "erase_input"),
    ("/incident", "GET", "incident"),
    ("/alerts", "POST", "receive_alerts"),
    ("/alerts", "GET", "list_alert_actions"),
]


def admin_app(current: Callable[[], "Admin"]) -> Starlette:
    """The mounted application: each route calls the same-named method of `current()`."""
    def route(path: str, method: str, name: str) -> Route:
        async def handle(request: Request) -> Response:
            return await getattr(current(), name)(request)

        return Route(path, handle, methods=[method], name=name)

    app = Starlette(routes=[route(*r) for r in ROUTES], exception_handlers={404: route_error, 405: route_error})
    app.router.redirect_slashes = False  # Starlette builds a redirect's Location from the client's Host header
    return app


def endpoint_names() -> list[str]:
    """Admin paths without parameters, as metric label values."""
    return sorted({f"{MOUNT}{path}" for path, _, _ in ROUTES if "{" not in path})


def endpoint_templates() -> list[tuple[str, str]]:
    """(regular expression of the full path, its template) for admin paths with parameters."""
    templates = {path for path, _, _ in ROUTES if "{" in path}
    return [(MOUNT + compile_path(path)[0].pattern.lstrip("^").rstrip("$"), f"{MOUNT}{path}")
            for path in sorted(templates)]


class Admin:
    """One worker's admin routes, given what they use."""

    def __init__(self, *, token: SecretStr | None, max_body_bytes: int, chain: GuardrailRuntime,
                 models: Mapping[str, ServedModel], primary: str, monitors: MonitorPipeline | NoMonitors,
                 log: PredictionLog | NoLog, regions: list[str] | None = None, log_mode: str = "all",
                 capture_policy: str = "off", automation: Automation | None = None,
                 alerts_token: SecretStr | None = None) -> None:
        self.token, self.max_body_bytes, self.chain = token, max_body_bytes, chain
        self.automation, self.alerts_token = automation, alerts_token
        self.models, self.primary, self.monitors, self.log = models, primary, monitors, log
        self.region_names, self.log_mode, self.capture_policy = list(regions or []), log_mode, capture_policy

    def authorize(self, request: Request) -> None:
        require_bearer(request, self.token, off_reason="admin_disabled", variable="CLASSGUARD_ADMIN_TOKEN")

    async def _guarded(self, request: Request, work) -> Response:
        """Authorize, run `work`, and answer an InputError as a counted 4xx and a failure as a
        counted 500. A dict becomes JSON, rendered off the event loop (a page of log rows took
        /classify's loop for 120-220 ms when rendered on it)."""
        try:
            self.authorize(request)
            result = await work()
            if isinstance(result, Response):
                return result
            return Response(await asyncio.to_thread(_json, result), media_type="application/json")
        except InputError as exc:
            return self._refuse(exc)
        except Exception:
            return JSONResponse(internal_error("admin"), status_code=500)

    async def drift_report(self, request: Request) -> Response:
        from runtime.drift_report import NotEnoughData, build

        async def work():
            fmt = request.query_params.get("format", "html")
            if fmt not in ("html", "json"):
                raise InputError("bad_parameter", "format must be html or json")
            window = _seconds(request.query_params.get("window_seconds", "300"))
            model = self.models.get(request.query_params.get("model", self.primary))
            if model is None:
                raise InputError("bad_parameter", f"unknown model; loaded: {sorted(self.models)}")
            try:
                recent = await asyncio.to_thread(self.monitors.recent_events, window)  # fleet time
                body, media = await asyncio.to_thread(
                    lambda: build(model.reference_rows(), recent, self.monitors.model_index(model.name), model.name,
                                  model.profile.labels, self.monitors.subgroups, window, fmt))
            except (NotEnoughData, MonitorsDisabled) as exc:
                raise InputError("not_enough_data", str(exc)) from None
            except FileNotFoundError:
                raise InputError("not_enough_data", f"{model.name} was stored without reference predictions; "
                                 "import it again to compare against them") from None
            return Response(body, media_type=media)

        return await self._guarded(request, work)

    async def show_guardrails(self, request: Request) -> Response:
        async def work():
            runtime = self.chain
            await off_loop(runtime.sync)  # this worker may not have picked up a swap made on another yet
            return {**runtime.describe(), "guardrails": [g.name for g in runtime.chain.guardrails]}

        return await self._guarded(request, work)

    async def swap_guardrails(self, request: Request) -> Response:
        """Body: {"profile": NAME} for a declared profile, or {"profile": NAME, "chain": [...]}."""

        async def work():
            raw = await read_body(request, self.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise InputError("bad_parameter", 'send a JSON object: {"profile": NAME[, "chain": [...]]}') from None
            if not isinstance(body, dict) or not isinstance(body.get("profile"), str) or set(body) - {"profile", "chain"}:
                raise InputError("bad_parameter", 'send a JSON object: {"profile": NAME[, "chain": [...]]}')
            try:
                check_profile_name(body["profile"])
                # off the event loop: a swap waits for the workers' lock and writes files
                chain = await off_loop(self.chain.swap, profile=body["profile"], chain=body.get("chain"))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError too
                raise InputError("invalid_guardrails", str(exc)) from None
            except StoreUnavailable as exc:  # never applied to part of the fleet
                raise InputError("store_unavailable", f"swap not confirmed, this replica keeps its chain: {exc}") from None
            return {"profile": chain.profile, "hash": chain.config_hash, "applied": True}

        return await self._guarded(request, work)

    async def list_predictions(self, request: Request) -> Response:
        """Logged predictions, newest first, at most 1,000 a page: ?since=15m&until=&subgroup=&region=&flag=
        &action=&model=&correlation_id=&flagged=1&limit=100&before=&format=json|jsonl|csv.
        The next page: the same query with `before` set to `next_before` (also the
        X-Next-Before header), until it is null."""
        from store import prediction_log

        async def work():
            p = request.query_params
            fmt = p.get("format", "json")
            if fmt not in ("json", "jsonl", "csv"):
                raise InputError("bad_parameter", "format must be json, jsonl or csv")
            limit = _count(p.get("limit", "100"), "limit", 1, prediction_log.MAX_PAGE)
            try:
                filters = dict(since=prediction_log.parse_since(p.get("since")),
                               until=prediction_log.parse_since(p.get("until")),
                               subgroup=_text(p, "subgroup"), region=_text(p, "region"), flag=_text(p, "flag"),
                               action=_text(p, "action"),
                               model=_text(p, "model"), correlation_id=_text(p, "correlation_id"),
                               flagged_only=p.get("flagged") in ("1", "true"), before=p.get("before"), limit=limit)
            except ValueError as exc:
                raise InputError("bad_parameter", str(exc)) from None
            if filters["before"] is not None and not is_lookup_id(filters["before"]):
                raise InputError("bad_parameter", "before is the request id of the last row of the previous page")
            return await off_loop(self._page, filters, fmt)

        return await self._guarded(request, work)

    def _page(self, filters: dict, fmt: str) -> Response:
        """One page of the log, read and rendered in a worker thread."""
        from store import prediction_log

        if filters["before"] is not None and self._read(prediction_log.get, filters["before"]) is None:
            # an empty page would read as the end of the log
            raise InputError("not_found", "no logged answer has the request id in `before` (it may have aged out "
                                          "of the log); start again without it")
        records = self._read(prediction_log.query, **filters)
        after = records[-1]["request_id"] if len(records) == filters["limit"] else None
        headers = {"X-Next-Before": after} if after else {}
        if fmt == "json":
            body = _json({"count": len(records), "predictions": records, "next_before": after})
            return Response(body, media_type="application/json", headers=headers)
        media = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
        return Response(prediction_log.export(records, fmt), media_type=media, headers=headers)

    async def show_prediction(self, request: Request) -> Response:
        from store import prediction_log

        async def work():
            key = request.path_params["request_id"]
            if not is_lookup_id(key):
                raise InputError("bad_parameter", "a request id is 1-80 of A-Z a-z 0-9 . _ : -")
            records = await off_loop(self._read, prediction_log.find, key)
            if not records:
                raise InputError("not_found", "no logged prediction has this request id or correlation id")
            if len(records) > 1:
                raise InputError("ambiguous_request_id", "this correlation id names several answers; ask for one "
                                 f"by request id: {', '.join(r['request_id'] for r in records)}")
            return records[0]

        return await self._guarded(request, work)

    async def prediction_summary(self, request: Request) -> Response:
        from store import prediction_log

        async def work():
            since = CLOCK.now() - _seconds(request.query_params.get("window_seconds", "3600"))  # rows are in fleet time
            rows = await off_loop(self._read, prediction_log.summary, since)
            return {"since": since, "rows": rows}

        return await self._guarded(request, work)

    async def regions(self, request: Request) -> Response:
        """The primary's regions among the logged answers of a window, ranked by excess share x
        estimated error (store.region_report): ?since=15m&until=&top=10&exemplars=5."""
        from store import prediction_log, region_report

        async def work():
            if not self.region_names:
                raise InputError("not_enough_data", "regions are off: set monitors.regions: true, with a primary "
                                 "model whose profile has a codebook")
            p = request.query_params
            top = _count(p.get("top", "10"), "top", 1, 73)  # at most 64 codebook regions, novel, 8 new
            exemplars = _count(p.get("exemplars", str(region_report.EXEMPLARS)), "exemplars", 0, 50)
            try:
                since = prediction_log.parse_since(p.get("since", "15m"))
                until = prediction_log.parse_since(p.get("until"))
            except ValueError as exc:
                raise InputError("bad_parameter", str(exc)) from None
            rows = await off_loop(self._read, region_report.read_rows, since=since, until=until)
            primary = self.models[self.primary]
            estimates = {name: m.estimate for name, m in self.models.items()}
            new = primary.new_regions.describe() if primary.new_regions is not None else {}
            ranked = await asyncio.to_thread(region_report.rank, rows, self.region_names,
                                             primary.codebook.references(), estimates, exemplars, new)
            return {"since": since, "until": until, "answers": len(rows), "log_mode": self.log_mode,
                    "model": primary.tag, "regions": ranked[:top]}

        return await self._guarded(request, work)

    async def retire_region(self, request: Request) -> Response:
        """Retire new region `nNN` for the fleet (store/new_regions.py): on-call's lever when
        the eight slots hold groups that stopped coming, or one a client made on purpose."""
        async def work():
            tracker = self.models[self.primary].new_regions if self.region_names else None
            if tracker is None:
                raise InputError("not_enough_data", "regions are off: set monitors.regions: true, with a primary "
                                 "model whose profile has a codebook")
            name = request.path_params["name"]
            if name not in new_region_names():  # never echoed: it is the client's text
                raise InputError("bad_parameter", "only a new region (n00..n07) can be retired; the codebook's "
                                 "regions and novel belong to the model's profile")
            try:
                retired = await off_loop(tracker.retire, name)  # the tracker logs it
            except StoreUnavailable as exc:
                raise InputError("store_unavailable", f"not retired: {exc}") from None
            if retired is None:
                raise InputError("not_found", f"no new region is called {name} now: nothing to retire")
            return {"retired": name, **retired}

        return await self._guarded(request, work)

    async def list_inputs(self, request: Request) -> Response:
        """Captured inputs with their answers and true labels, oldest first, at most 1,000 a page:
        ?since=&until=&region=&subgroup=&model=&flag=&labelled=1&limit=100&after=&totals=1. The
        next page: `after` set to `next_after`, until it is null. `totals=1`: also how many
        matching answers kept their input and have a label."""
        from store import inputs

        async def work():
            p = request.query_params
            limit = _count(p.get("limit", "100"), "limit", 1, inputs.MAX_PAGE)
            filters = dict(since=_time(p, "since"), until=_time(p, "until"), region=_text(p, "region"),
                           subgroup=_text(p, "subgroup"), model=_text(p, "model"), flag=_text(p, "flag"),
                           labelled=p.get("labelled") in ("1", "true"), after=_id(p.get("after"), "after"),
                           limit=limit)
            if filters["after"] is not None and not await off_loop(self._read, inputs.anchored, filters["after"]):
                # an empty page would read as the end
                raise InputError("not_found", "no logged answer has the request id in `after` (it may have aged "
                                              "out of the log); start again without it")
            rows = await off_loop(self._read, inputs.query, **filters)
            body = {"count": len(rows), "inputs": rows,
                    "next_after": rows[-1]["request_id"] if len(rows) == limit else None}
            if p.get("totals") in ("1", "true"):  # what an export reports: answers without input or label
                body["totals"] = await off_loop(self._read, inputs.totals, **{
                    k: filters[k] for k in ("since", "until", "region", "subgroup", "model", "flag")})
            return body

        return await self._guarded(request, work)

    async def show_input(self, request: Request) -> Response:
        """The captured input as a PNG made anew from its pixels: an upload that was also HTML,
        SVG or script comes back as pixels only. ?thumbnail=1: its thumbnail."""
        from store import inputs

        async def work():
            key = _id(request.path_params["request_id"], "request id")
            row = await off_loop(self._read, inputs.get, key)
            if row is None:
                raise InputError("not_found", "no captured input has this request id (capture may be off, the "
                                 "answer not picked, or the input evicted or erased)")
            body = await asyncio.to_thread(inputs.as_png, row,
                                           thumbnail_only=request.query_params.get("thumbnail") in ("1", "true"))
            return Response(body, media_type="image/png", headers=IMAGE_HEADERS)

        return await self._guarded(request, work)

    async def erase_input(self, request: Request) -> Response:
        from store import inputs

        async def work():
            key = _id(request.path_params["request_id"], "request id")
            forgotten = self._forget({key})
            erased = await off_loop(self._read, inputs.erase, request_ids=[key])
            if not erased and not forgotten:
                raise InputError("not_found", "no captured input has this request id: nothing to erase")
            return {"request_id": key, "erased": erased + forgotten}

        return await self._guarded(request, work)

    async def erase_inputs(self, request: Request) -> Response:
        """DELETE ?since=&until=: every captured input of answers in the range (one of them at least)."""
        from store import inputs

        async def work():
            since, until = _time(request.query_params, "since"), _time(request.query_params, "until")
            if since is None and until is None:
                raise InputError("bad_parameter", "give since and/or until (15m, 2h, 1d or Unix seconds), or "
                                 "erase one input at /admin/inputs/{request_id}")
            await off_loop(self.log.flush, retention=False)  # this worker's queued inputs are in range too
            return {"since": since, "until": until,
                    "erased": await off_loop(self._read, inputs.erase, since=since, until=until)}

        return await self._guarded(request, work)

    def _forget(self, request_ids: set[str]) -> int:
        capture = getattr(self.log, "capture", None)
        return capture.forget(request_ids) if capture is not None else 0

    async def incident(self, request: Request) -> Response:
        """The incident page of ?since=30m&until= (self-contained HTML; dashboards.incident_page)."""
        from dashboards.incident_page import CONTENT_SECURITY_POLICY, render
        from runtime.incident import gather

        async def work():
            now = CLOCK.now()
            since = _time(request.query_params, "since", "30m")
            until = _time(request.query_params, "until") or now
            if until <= since:
                raise InputError("bad_parameter", "until must come after since")
            primary = self.models[self.primary]
            await off_loop(self.log.flush, retention=False)  # this worker's newest answers are on it
            history = await off_loop(self._history)
            page = await off_loop(
                gather, self._read, since=since, until=until, now=now, service=primary.tag, log_mode=self.log_mode,
                capture_policy=self.capture_policy, training_shares=dict(primary.profile.training_subgroup_shares),
                estimates={name: m.estimate for name, m in self.models.items()},
                region_names=self.region_names,
                region_references=primary.codebook.references() if self.region_names else [],
                alarming=list(self.monitors.alarming), history=history)
            body = await asyncio.to_thread(render, page)
            return Response(body, media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, **NO_SNIFF})

        return await self._guarded(request, work)

    def _history(self) -> list[dict]:
        try:
            return self.chain.store.history(20)
        except (StoreUnavailable, OSError):
            return []

    def _read(self, fn, *args, **kwargs):
        try:
            return self.log.read(fn, *args, **kwargs)
        except LogDisabled as exc:
            raise InputError("not_enough_data", str(exc)) from None
        except StoreUnavailable as exc:
            raise InputError("store_unavailable", str(exc)) from None

    async def receive_alerts(self, request: Request) -> Response:
        """Alertmanager's webhook: every alert of the notification decided on by the automation
        policy; the decisions in the answer. Its own token: Alertmanager holds no admin token."""
        from runtime.automation import parse

        try:
            require_bearer(request, self.alerts_token, off_reason="alerts_disabled", variable="CLASSGUARD_ALERTS_TOKEN")
            if self.automation is None:
                raise InputError("alerts_disabled", "this route is off: automatic actions are not set up")
            notification = parse(await read_body(request, self.max_body_bytes))
            decisions = await off_loop(self.automation.handle, notification)
            return JSONResponse({"decisions": decisions})
        except InputError as exc:
            metrics.REJECTED.labels("alerts", exc.reason).inc()
            return error_response(exc)
        except StoreUnavailable as exc:  # Alertmanager sends the notification again
            metrics.REJECTED.labels("alerts", "store_unavailable").inc()
            return error_response(InputError("store_unavailable", f"nothing decided: {exc}"))
        except Exception:
            return JSONResponse(internal_error("alerts"), status_code=500)

    async def list_alert_actions(self, request: Request) -> Response:
        """The automatic actions' decisions, newest first (?limit=, at most 1,000)."""
        async def work():
            if self.automation is None or self.automation.db is None:
                raise InputError("not_found", "automatic actions are off (guardrails.automation_path)")
            limit = _count(request.query_params.get("limit", "100"), "limit", 1, 1000)
            try:
                return {"enabled": self.automation.policy.enabled, "dry_run": self.automation.policy.dry_run,
                        "decisions": await off_loop(self.automation.recent, limit)}
            except StoreUnavailable as exc:
                raise InputError("store_unavailable", str(exc)) from None

        return await self._guarded(request, work)

    @staticmethod
    def _refuse(exc: InputError) -> Response:
        metrics.REJECTED.labels("admin", exc.reason).inc()
        return error_response(exc)


NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
IMAGE_HEADERS = {**NO_SNIFF, "Content-Security-Policy": "default-src 'none'"}


def _id(value: str | None, name: str) -> str | None:
    if value is not None and not is_lookup_id(value):
        raise InputError("bad_parameter", f"{name} is 1-80 of A-Z a-z 0-9 . _ : -")
    return value


def _time(params, name: str, default: str | None = None) -> float | None:
    from store.prediction_log import parse_since

    try:
        return parse_since(params.get(name, default))
    except ValueError as exc:
        raise InputError("bad_parameter", f"{name}: {exc}") from None


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _count(text: str, name: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise InputError("bad_parameter", f"{name} must be a whole number within {low}..{high}")
    return int(text)


def _text(params, name: str) -> str | None:
    """A text filter as the client sent it, or None; one no stored value can hold (a NUL, a lone
    surrogate, other control characters: PostgreSQL refuses some of them outright) or over
    200 characters is a 400, never a 500."""
    value = params.get(name)
    if value is None:
        return None
    if len(value) > 200 or not value.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InputError("bad_parameter", f"{name} must be up to 200 printable characters")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError("bad_parameter", f"window_seconds must be a number, got {text[:40]!r}") from None
    if not 1.0 <= value <= 86_400.0:
        raise InputError("bad_parameter", "window_seconds must be within 1..86400")
    return value



