"""Errors as HTTP answers: the shell renders what core/errors.py names.

Every error the service answers has error_body's shape; a 503 tells the client when to retry.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from core import metrics
from core.errors import RETRY_AFTER_SECONDS, InputError, error_body

log = logging.getLogger("classguard")


def error_response(exc: InputError, request_id: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A client error as its JSON body with the reason's status code."""
    if exc.status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return JSONResponse(exc.body(request_id), status_code=exc.status, headers=headers)


def internal_error(endpoint: str, request_id: str | None = None) -> dict[str, str | int | None]:
    """Log the exception being handled and count it for `endpoint`; the 500 body says no more."""
    log.exception("%s failed", endpoint, extra={"request_id": request_id, "endpoint": endpoint})
    metrics.INTERNAL_ERRORS.labels(endpoint).inc()
    return error_body("internal_error", "the service failed on this request; it is logged", 500, request_id)


async def route_error(request, exc):
    """Starlette's 404 and 405 from routing, as the service's JSON error body, counted."""
    reason = "method_not_allowed" if exc.status_code == 405 else "not_found"
    metrics.REJECTED.labels("http", reason).inc()
    detail = f"no {request.method} route here" if reason == "method_not_allowed" else "no such route; see /docs.json"
    return JSONResponse(error_body(reason, detail, exc.status_code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))
