"""Fixes to BentoML 1.4.40 (pinned), applied when the service module is imported.

1. Bounded request metrics. BentoML labels its own `bentoml_service_request_*` series with
   the raw request path, so every distinct URL a client invents adds about 20 series for good:
   6,000 made-up paths took `/metrics` from 26 KB to 23 MB and a scrape to 12-14 s, past
   Prometheus's scrape timeout, and no classguard alert could fire any more. Its middleware
   now sees a bounded endpoint name (the route, its template, or `other`); the application
   below it still sees the real path.
2. The per-request timeout timer. BentoML's TimeoutMiddleware schedules
   `loop.call_later(timeout, ...)` for every request and never cancels it, so each request's
   timer, future and tracing context (about 5 KB with its OpenTelemetry spans) stay alive for
   the whole `traffic.timeout` after the response: at 1,000 requests/s and a 60 s timeout, some
   300 MB held for nothing (measured with tracemalloc; `make soak` showed resident memory
   growing 5 MB per 1,000 requests). The replacement is BentoML's own logic plus cancelling
   the timer once the response started, and a 408 (not a 504) when the client had not
   finished sending its body in time.
3. No trailing-slash redirects. Starlette answers `/admin/guardrails/` with a 307 whose
   Location is built from the client's Host header (`http://evil.example/admin/guardrails`);
   the service's routes are exact, so such a path is a 404; 404s and 405s from routing carry
   the service's JSON error body and are counted like every other refusal.
Remove each when BentoML fixes it upstream.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Iterable

from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import instruments, traffic
from starlette.responses import JSONResponse

from core import metrics
from core.errors import InputError, error_body
from service.http_errors import error_response, route_error

OTHER_ENDPOINT = "other"


class EndpointNames:
    """Request path -> a label value from a closed set: the path itself for a known route, a
    route template (`/admin/predictions/{request_id}`) for a parametrised one, else `other`."""

    def __init__(self, exact: Iterable[str], templates: Iterable[tuple[str, str]] = ()) -> None:
        self.exact = frozenset(exact)
        self.templates = [(re.compile(pattern), template) for pattern, template in templates]

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        for pattern, template in self.templates:
            if pattern.fullmatch(path):
                return template
        return OTHER_ENDPOINT

    def names(self) -> set[str]:
        return {*self.exact, *(t for _, t in self.templates), OTHER_ENDPOINT}


class _RealPathBelow:
    """Stands in for the metrics middleware while it handles one request: its attributes are
    the middleware's, but the application it calls gets the request's real path back."""

    def __init__(self, middleware: Any, path: str) -> None:
        self._middleware, self._path = middleware, path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._middleware, name)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        await self._middleware.app({**scope, "path": self._path}, receive, send)


def _bounded_metrics(original, endpoint_name: EndpointNames):
    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        name = endpoint_name(path) if path is not None else None
        if name is None or name == path:
            return await original(self, scope, receive, send)
        await original(_RealPathBelow(self, path), {**scope, "path": name}, receive, send)

    call.classguard_bounded = True
    return call


def _expects_body(scope: Any) -> bool:
    headers = dict(scope.get("headers") or ())
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") not in (b"0", b"")


async def _call(self: traffic.TimeoutMiddleware, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)
    body_read = scope["type"] != "http" or not _expects_body(scope)

    async def _receive() -> Any:
        nonlocal body_read
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_read = True
        return message

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, _receive, _send), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            if body_read:
                resp = JSONResponse(error_body("timeout", f"not answered within {self.timeout} seconds", 504),
                                    status_code=504)
            else:  # the client, not the service, was too slow
                metrics.REJECTED.labels("http", "request_timeout").inc()
                resp = error_response(InputError("request_timeout", f"the request body did not arrive within "
                                                 f"{self.timeout} seconds"), headers={"connection": "close"})
            await resp(scope, receive, send)
    else:
        timer.cancel()  # the response has started, the timer has nothing left to guard
        await fut


def _without_slash_redirects(build):
    def call(self: Any) -> Any:
        app = build(self)
        app.router.redirect_slashes = False
        for status in (404, 405):
            app.add_exception_handler(status, route_error)
        return app

    call.classguard_original = build
    return call


def apply(endpoint_name: EndpointNames) -> None:
    traffic.TimeoutMiddleware.__call__ = _call
    build = getattr(ServiceAppFactory.__call__, "classguard_original", ServiceAppFactory.__call__)
    ServiceAppFactory.__call__ = _without_slash_redirects(build)
    for cls in (instruments.RunnerTrafficMetricsMiddleware, instruments.HTTPTrafficMetricsMiddleware):
        original = getattr(cls.__call__, "classguard_original", cls.__call__)
        cls.__call__ = _bounded_metrics(original, endpoint_name)
        cls.__call__.classguard_original = original
