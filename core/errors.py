"""Client errors: a fixed set of reasons, each with its HTTP status.

The reason doubles as the `reason` label of `classguard_rejected_requests_total`, so the
set is closed: adding a reason means adding it here. Rendering an error as an HTTP answer is
the shell's (service/http_errors.py).
"""

from __future__ import annotations

REASONS: dict[str, int] = {
    "not_multipart": 415,
    "malformed_multipart": 400,
    "missing_image": 400,
    "empty_upload": 400,
    "upload_too_large": 413,
    "not_an_image": 415,
    "truncated_image": 400,
    "image_too_large": 413,
    "unsupported_image": 415,
    "malformed_array": 400,
    "invalid_array_values": 400,
    "malformed_context": 400,
    "context_count_mismatch": 400,
    "too_many_images": 413,
    "unauthorized": 401,
    "admin_disabled": 404,
    "bad_parameter": 400,
    "not_enough_data": 409,
    "invalid_guardrails": 422,
    "not_found": 404,
    "malformed_feedback": 400,
    "feedback_disabled": 404,
    "unknown_field": 400,
    "too_many_fields": 400,
    "ambiguous_request_id": 409,
    "headers_too_large": 431,
    "request_timeout": 408,
    "method_not_allowed": 405,
    "malformed_request": 400,
    "alerts_disabled": 404,
    "malformed_alerts": 400,
    "store_unavailable": 503,  # the shared store (fleet mode) cannot be reached: try again shortly
    # the client went away before its body was read (or its request was refused mid-body by
    # the HTTP server): nobody reads the answer, but the request is counted, not a 5xx
    "client_disconnected": 499,
}
RETRY_AFTER_SECONDS = 5  # the Retry-After of a 503
ENDPOINTS = ("classify", "classify_batch", "feedback", "admin", "alerts", "http")  # the `endpoint` label's values


class InputError(Exception):
    """Bad client input; rendered as a JSON error body with the reason's status code."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = REASONS[reason]

    def body(self, request_id: str | None = None) -> dict[str, str | int | None]:
        return error_body(self.reason, self.detail, self.status, request_id)


def error_body(reason: str, detail: str, status: int, request_id: str | None = None) -> dict[str, str | int | None]:
    """The one shape of every error the service answers."""
    body: dict[str, str | int | None] = {"error": reason, "detail": detail, "status": status}
    if request_id is not None:
        body["request_id"] = request_id
    return body
