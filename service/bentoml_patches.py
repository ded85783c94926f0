"""One fix to BentoML 1.4.40 (pinned), applied when the service module is imported.

BentoML's TimeoutMiddleware schedules `loop.call_later(timeout, ...)` for every request and
never cancels it, so each request's timer, future and tracing context (about 5 KB with its
OpenTelemetry spans) stay alive for the whole `traffic.timeout` after the response: at
1,000 requests/s and a 60 s timeout, some 300 MB held for nothing (measured with
tracemalloc; `make soak` showed resident memory growing 5 MB per 1,000 requests). The
replacement below is BentoML's own logic plus cancelling the timer once the response
started. Remove it when BentoML cancels the handle itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


async def _call(self: traffic.TimeoutMiddleware, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
    else:
        timer.cancel()  # the fix: the response has started, the timer has nothing left to guard
        await fut


def apply() -> None:
    traffic.TimeoutMiddleware.__call__ = _call
