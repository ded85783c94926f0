"""Bounds on a request's head (request line and headers), enforced in the HTTP server itself.

uvicorn with httptools, as BentoML runs it, reads headers of any size and waits for them
forever: a 50 MB header was read and answered (stalling every /classify for 2.6 s), and a
connection that sent half its headers was still open after 100 s. Nothing above the server
can help, since the application only sees a request once its head is complete. This protocol
answers 431 when the head grows past `limits.max_header_bytes`, and 408 when it has not
arrived within `limits.header_timeout_seconds`, then closes the connection; both counted in
`classguard_rejected_requests_total{endpoint="http"}`.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics
from service.errors import REASONS, error_body

_STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


def raw_error(reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error response with the service's JSON error body; closes."""
    status = REASONS[reason]
    body = json.dumps(error_body(reason, detail, status)).encode()
    return (f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 65_536
    head_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_timer = None
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # checked after parsing: the same chunk may complete a small head and start a body
        if self._head_timer is not None and self._head_bytes > self.max_head_bytes:
            self._refuse("headers_too_large", f"request line and headers exceed {self.max_head_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser cannot read (an unknown method, a broken request line): the
        service's JSON error body instead of uvicorn's plain text, counted."""
        self._refuse("malformed_request", msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()  # the next request on a kept-alive connection gets its own deadline

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

    def _start_head(self) -> None:
        if self._head_timer is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _end_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # still answering the previous request (a pipelined head waits for it): look again later
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            return
        self._refuse("request_timeout", f"request line and headers did not arrive within {self.head_timeout_s} s")

    def _refuse(self, reason: str, detail: str) -> None:
        self._end_head()
        if self.transport.is_closing():
            return
        metrics.REJECTED.labels("http", reason).inc()
        self.transport.write(raw_error(reason, detail))
        self.transport.close()


def install(max_head_bytes: int, head_timeout_s: float) -> None:
    """Make every uvicorn server this process starts (BentoML's workers) use the bounded protocol."""
    import uvicorn

    BoundedHeadProtocol.max_head_bytes = max_head_bytes
    BoundedHeadProtocol.head_timeout_s = head_timeout_s
    if getattr(uvicorn.Config, "classguard_bounded", False):
        return

    class Config(uvicorn.Config):
        classguard_bounded = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["http"] = BoundedHeadProtocol
            super().__init__(*args, **kwargs)

    uvicorn.Config = Config
