"""Bounds on what a client sends outside a request's body, enforced in the HTTP server itself.

uvicorn with httptools, as BentoML runs it, reads headers of any size and waits for them
forever: a 50 MB header was read and answered (stalling every /classify for 2.6 s), and a
connection that sent half its headers was still open after 100 s. Nothing above the server
can help, since the application only sees a request once its head is complete. This protocol
answers 431 when the head grows past `limits.max_header_bytes`, and 408 when it has not
arrived within `limits.header_timeout_seconds`, then closes the connection; both counted in
`classguard_rejected_requests_total{endpoint="http"}`.

The same byte bound holds for every stretch of non-body bytes between two parser events: a
chunk-size line with its extensions, and the trailers after the last chunk. Unbounded, 400 MB
of trailers were read into the request's header list (worker RSS 318 -> 707 MB, then a 200)
and a 50 MB chunk extension was skipped through and answered. The bytes are counted as they
are fed, not when a whole header has arrived, because httptools buffers a header's value
until its end.

Answers keep the order of requests: a refusal of a pipelined request is written after the
answers to the requests before it (they had been processed and logged, then lost when the
refusal closed the connection first), and the refused request itself is never started.
"""

from __future__ import annotations

import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from core import metrics
from core.errors import REASONS, error_body

_STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}

# What a stretch of non-body bytes is, by the parser event it follows: the detail of its 431.
_STRETCH = {
    "idle": "request line and headers exceed",
    "head": "request line and headers exceed",
    "body": "a chunk-size line with its extensions exceeds",
    "chunk": "the trailers exceed",
}


def raw_error(reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error response with the service's JSON error body; closes."""
    status = REASONS[reason]
    body = json.dumps(error_body(reason, detail, status)).encode()
    return (f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _StopParsing(Exception):
    """Raised from a parser callback once the request is refused: llhttp stops right there."""


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 65_536
    head_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = None
        self._stretch = "idle"        # the last parser event, naming the stretch being read
        self._stretch_bytes = 0       # non-body bytes fed since that event
        self._event_seen = False      # an event happened while the current slice was fed
        self._body_seen = 0           # body bytes delivered while the current slice was fed
        self._parsing: RequestResponseCycle | None = None  # the cycle of the message being read
        self._running: RequestResponseCycle | None = None  # the cycle the application is answering
        self._refusal: bytes | None = None                  # decided, written once earlier answers are out
        self._handed_over = False
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    # Feeding

    def data_received(self, data: bytes) -> None:
        """Feed the parser in slices, so that a stretch's count is never more than one slice
        short (an event inside a slice restarts the count from the next slice)."""
        self._unset_keepalive_if_required()
        view = memoryview(data)
        step = max(self.max_head_bytes // 8, 1)
        for start in range(0, len(view), step):
            if self._refusal is not None or self._handed_over or self.transport.is_closing():
                return  # a refused connection is read and dropped until it closes
            self._feed(view[start:start + step])

    def _feed(self, piece: memoryview) -> None:
        self._event_seen, self._body_seen = False, 0
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is None:  # the parser's own objection, not a _StopParsing of ours
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if not self._event_seen:
            self._stretch_bytes += len(piece) - self._body_seen
        if self._stretch_bytes > self.max_head_bytes:
            self._refuse("headers_too_large", f"{_STRETCH[self._stretch]} {self.max_head_bytes} bytes")

    def handle_websocket_upgrade(self) -> None:
        self._handed_over = True  # the rest of the connection belongs to the websocket protocol
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser cannot read (an unknown method, a broken request line): the
        service's JSON error body instead of uvicorn's plain text, counted."""
        self._refuse("malformed_request", msg)

    # Parser callbacks: each event starts a new stretch

    def _event(self, stretch: str) -> None:
        self._stretch, self._stretch_bytes, self._event_seen = stretch, 0, True

    def on_message_begin(self) -> None:
        self._event("head")
        super().on_message_begin()
        self._start_head()  # the next request on a kept-alive connection gets its own deadline

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._stretch != "head":
            return  # a trailer: the application read the headers long ago, so it is kept out of them
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._end_head()
        if self._head_size() > self.max_head_bytes:  # a head read whole inside one slice
            self._refuse("headers_too_large", f"{_STRETCH['head']} {self.max_head_bytes} bytes")
            raise _StopParsing
        self._event("body")
        before = self.cycle
        super().on_headers_complete()
        self._parsing = self.cycle if self.cycle is not before else None  # None: a websocket upgrade

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._event("chunk")

    def on_chunk_complete(self) -> None:
        self._event("body")

    def on_message_complete(self) -> None:
        self._event("idle")
        self._parsing = None
        super().on_message_complete()

    def _head_size(self) -> int:
        """The head as the parser read it, less optional whitespace."""
        request_line = len(self.parser.get_method()) + len(self.url) + len(" HTTP/1.1\r\n") + 1
        return request_line + sum(len(name) + len(value) + 4 for name, value in self.headers) + 2

    # Answers in request order

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self._refusal is not None:
            self._answer_refusal_when_due()

    def _refuse(self, reason: str, detail: str) -> None:
        self._end_head()
        if self._refusal is not None or self.transport.is_closing():
            return
        metrics.REJECTED.labels("http", reason).inc()
        self._refusal = raw_error(reason, detail)
        self._drop_refused_request()
        self.flow.resume_reading()  # keep reading (and dropping) so a client blocked in send sees the close
        self._answer_refusal_when_due()

    def _drop_refused_request(self) -> None:
        """The refused request is never answered by the application: out of the queue if it
        waits there, told the client is gone if it runs. If its answer already started, that
        answer is the last thing written."""
        cycle = self._parsing
        if cycle is None:
            return  # refused in its head: it has no cycle yet
        queued = [entry for entry in self.pipeline if entry[0] is cycle]
        if queued:
            self.pipeline.remove(queued[0])
        elif cycle.response_started:
            self._refusal = b""
        else:
            cycle.disconnected = True
            cycle.message_event.set()

    def _earlier_answers_pending(self) -> bool:
        running = self._running
        return bool(self.pipeline) or (running is not None and not running.response_complete
                                       and not running.disconnected)

    def _answer_refusal_when_due(self) -> None:
        if self._earlier_answers_pending() or self.transport.is_closing():
            return
        if self._refusal:
            self.transport.write(self._refusal)
        self.transport.close()

    # The head's deadline

    def _start_head(self) -> None:
        if self._head_timer is None:
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
