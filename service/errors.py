"""Client errors: a fixed set of reasons, each with its HTTP status.

The reason doubles as the `reason` label of `classguard_rejected_requests_total`, so the
set is closed: adding a reason means adding it here.
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
}


class InputError(Exception):
    """Bad client input; rendered as a JSON error body with the reason's status code."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = REASONS[reason]

    def body(self, request_id: str) -> dict[str, str | int]:
        return {"error": self.reason, "detail": self.detail, "status": self.status, "request_id": request_id}
