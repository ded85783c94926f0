"""Reading a classify request: every malformed, oversized or unauthorised input becomes an
InputError with its own reason, read through a real starlette Request (no server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from starlette.requests import Request

from core.config import LimitsConfig
from core.errors import InputError
from runtime.prepare import parse_context
from service.http_input import Upload, batch_contexts, image_uploads, read_body, read_form, require_bearer

LIMITS = LimitsConfig(max_upload_bytes=10_000)
ALLOWED = frozenset({"image", "context"})
TOKEN = SecretStr("a-token-of-some-length")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)


def request(body: bytes = b"", headers: dict[str, str] | None = None, chunks: list[bytes] | None = None) -> Request:
    """A starlette Request whose receive() yields `chunks` (default: the body in one message)."""
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(parts) - 1}
                for parts in [chunks if chunks is not None else [body]] for i, chunk in enumerate(parts)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    return Request(scope, receive)


def multipart(files=None, data=None) -> Request:
    """A multipart/form-data request as a client library encodes it."""
    encoded = httpx.Request("POST", "http://x/classify", files=files, data=data)
    return request(encoded.read(), dict(encoded.headers))


def reason_of(call) -> str:
    with pytest.raises(InputError) as caught:
        result = call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return caught.value.reason


def form(req: Request, max_files: int = 4, limits: LimitsConfig = LIMITS):
    return read_form(req, limits, max_files=max_files, allowed=ALLOWED)


# -- batch_contexts --------------------------------------------------------------------------------
def test_no_contexts_field_is_one_none_per_image():
    """Without a `contexts` field every image has no context."""
    assert batch_contexts({}, 3) == [None, None, None]


def test_one_json_array_field_gives_one_raw_context_per_image():
    """One field holding a JSON array (text or file) is split into one raw context per image,
    each parsed later on its own; a null item stays None."""
    items = [{"capture": "phone"}, None, {"capture": "scanner"}]
    raw = batch_contexts({"contexts": [json.dumps(items)]}, 3)
    assert [parse_context(r, 100) for r in raw] == items and raw[1] is None
    assert batch_contexts({"contexts": [Upload(json.dumps(items).encode(), "c.json")]}, 3) == raw


def test_one_field_per_image_is_kept_in_order():
    """One `contexts` field per image: passed through as they came, bad ones included (each fails
    only its own image later)."""
    raw = ['{"capture": "phone"}', "not json", ""]
    assert batch_contexts({"contexts": raw}, 3) == raw


@pytest.mark.parametrize("fields, n_images", [
    ({"contexts": ["{}", "{}"]}, 3),
    ({"contexts": [json.dumps([{}, {}])]}, 1),
    ({"contexts": ['{"capture": "phone"}']}, 2),  # one object is one context, not one for every image
])
def test_context_count_mismatch(fields, n_images):
    """As many contexts as images, or it is `context_count_mismatch`."""
    assert reason_of(lambda: batch_contexts(fields, n_images)) == "context_count_mismatch"


def test_a_broken_json_array_is_malformed():
    """One field that opens a JSON array but is not valid JSON is `malformed_context`."""
    assert reason_of(lambda: batch_contexts({"contexts": ["[{}, "]}, 2)) == "malformed_context"


# -- image_uploads ---------------------------------------------------------------------------------
def test_image_uploads_returns_the_files_in_order():
    """The `image` field's uploads, in the order sent."""
    uploads = [Upload(b"a", "a.png"), Upload(b"b", "b.png")]
    assert image_uploads({"image": uploads}, "image") == uploads


@pytest.mark.parametrize("fields", [{}, {"image": []}, {"context": ["{}"]}, {"image": ["a path or a URL"]},
                                    {"image": [Upload(b"a", "a.png"), "text"]}])
def test_no_image_file_is_missing_image(fields):
    """No `image` field, or a text value where a file upload belongs: `missing_image`."""
    assert reason_of(lambda: image_uploads(fields, "image")) == "missing_image"


# -- require_bearer --------------------------------------------------------------------------------
def test_a_route_without_a_token_is_off():
    """An unset token turns the route off with the route's own reason, whatever is sent."""
    req = request(headers={"Authorization": f"Bearer {TOKEN.get_secret_value()}"})
    assert reason_of(lambda: require_bearer(req, None, off_reason="admin_disabled", variable="X")) == "admin_disabled"
    assert reason_of(lambda: require_bearer(req, None, off_reason="feedback_disabled",
                                            variable="X")) == "feedback_disabled"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Basic {TOKEN.get_secret_value()}",
                                    "Bearer wrong-token-of-some-length", f"Bearer {TOKEN.get_secret_value()}x",
                                    f"Bearer {TOKEN.get_secret_value()[:-1]}", "Bearer \u00e9"])
def test_a_missing_or_wrong_token_is_unauthorized(header):
    """No header, an empty one, another scheme, a longer, shorter or other token: `unauthorized`."""
    req = request(headers={} if header is None else {"Authorization": header})
    assert reason_of(lambda: require_bearer(req, TOKEN, off_reason="admin_disabled", variable="X")) == "unauthorized"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_passes(scheme):
    """The configured token after `Bearer` (any case of the scheme) passes."""
    req = request(headers={"Authorization": f"{scheme} {TOKEN.get_secret_value()}"})
    assert require_bearer(req, TOKEN, off_reason="admin_disabled", variable="X") is None


# -- read_body -------------------------------------------------------------------------------------
def test_read_body_joins_the_streamed_chunks():
    """A body streamed in several messages is read whole, up to the limit exactly."""
    assert asyncio.run(read_body(request(chunks=[b"a" * 600, b"b" * 400]), 1000)) == b"a" * 600 + b"b" * 400


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    """Content-Length over the limit: `upload_too_large` without reading a byte of the body."""
    def receive_nothing():
        raise AssertionError("the body was read")

    req = Request({"type": "http", "method": "POST", "path": "/", "query_string": b"",
                   "headers": [(b"content-length", b"1001")]}, receive_nothing)
    assert reason_of(lambda: read_body(req, 1000)) == "upload_too_large"


@pytest.mark.parametrize("headers", [{}, {"Content-Length": "10"}, {"Content-Length": "ten"}])
def test_a_streamed_body_over_the_limit_is_refused(headers):
    """A body that streams past the limit (no length, or a length that lies) is `upload_too_large`."""
    req = request(headers=headers, chunks=[b"x" * 600, b"x" * 600])
    assert reason_of(lambda: read_body(req, 1000)) == "upload_too_large"


def test_a_client_gone_mid_body_is_a_counted_disconnect_not_an_internal_error():
    """A body whose stream ends in a disconnect (the client went away, or the HTTP server refused
    the request's trailers) is `client_disconnected`, a reason like any other bad input."""
    messages = [{"type": "http.request", "body": b"x" * 600, "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    gone = Request({"type": "http", "method": "POST", "path": "/classify", "query_string": b"", "headers": []},
                   receive)
    assert reason_of(lambda: read_body(gone, 10_000)) == "client_disconnected"


# -- read_form -------------------------------------------------------------------------------------
def test_read_form_gives_files_as_uploads_and_text_as_strings():
    """An image file and a context text field come back as Upload and str under their names."""
    fields = asyncio.run(form(multipart(files={"image": ("d.png", PNG, "image/png")},
                                        data={"context": '{"capture": "phone"}'})))
    assert fields == {"image": [Upload(PNG, "d.png")], "context": ['{"capture": "phone"}']}


def test_a_body_that_is_not_multipart_is_refused():
    """JSON (or anything but multipart/form-data) is `not_multipart`."""
    req = request(b'{"image": "x"}', {"Content-Type": "application/json"})
    assert reason_of(lambda: form(req)) == "not_multipart"


@pytest.mark.parametrize("files, data, max_files, reason", [
    ({"image": ("d.png", PNG, "image/png")}, {"colour": "red"}, 4, "unknown_field"),
    ({"imag": ("d.png", PNG, "image/png")}, None, 4, "unknown_field"),  # a misspelt file field
    ([("image", ("d.png", PNG, "image/png"))] * 3, None, 2, "too_many_images"),
    ({"image": ("d.png", PNG, "image/png")}, {"context": ["{}"] * 10}, 1, "too_many_fields"),  # max_files + 8
])
def test_unknown_or_too_many_fields_are_refused(files, data, max_files, reason):
    """A field the endpoint does not read, more files than max_files, more text fields than
    max_files + 8: each refused with its reason."""
    assert reason_of(lambda: form(multipart(files=files, data=data), max_files=max_files)) == reason


def test_an_upload_over_the_limit_is_refused():
    """A multipart body over max_upload_bytes, declared or streamed, is `upload_too_large`."""
    big = multipart(files={"image": ("d.png", bytes(LIMITS.max_upload_bytes), "image/png")})
    assert reason_of(lambda: form(big)) == "upload_too_large"
    encoded = httpx.Request("POST", "http://x/", files={"image": ("d.png", bytes(LIMITS.max_upload_bytes))})
    body, headers = encoded.read(), {k: v for k, v in encoded.headers.items() if k != "content-length"}
    streamed = request(headers=headers, chunks=[body[i:i + 4096] for i in range(0, len(body), 4096)])
    assert reason_of(lambda: form(streamed)) == "upload_too_large"


def test_a_truncated_multipart_body_never_yields_a_cut_image():
    """A multipart body cut off before its closing boundary yields no image part at all (so the
    endpoint answers `missing_image`), never an image cut short and never a 500."""
    encoded = httpx.Request("POST", "http://x/", files={"image": ("d.png", PNG, "image/png")})
    body = encoded.read()
    for cut in (10, 60):  # inside the closing boundary; inside the image bytes
        headers = {**encoded.headers, "content-length": str(len(body) - cut)}
        fields = asyncio.run(form(request(body[:-cut], headers)))
        assert reason_of(lambda: image_uploads(fields, "image")) == "missing_image"


# -- parse_form against Starlette's reader ---------------------------------------------------------
def starlette_parts(body: bytes, content_type: str) -> list[tuple[str, object]]:
    """What Starlette's multipart reader (python-multipart underneath) makes of a body."""
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser

    async def stream():
        yield body

    async def parse():
        form = await MultiPartParser(Headers({"content-type": content_type}), stream(), max_part_size=1 << 30).parse()
        return [(k, Upload(await v.read(), v.filename) if isinstance(v, UploadFile) else v)
                for k, v in form.multi_items()]

    return asyncio.run(parse())


def test_parse_form_reads_what_starlettes_reader_reads():
    """Over 300 random forms as httpx encodes them (files and text fields, names and filenames
    with quotes, spaces and non-ASCII, data full of CR, LF and dashes, empty parts), parse_form
    gives the parts Starlette's reader gives, in order; cut anywhere, it gives a prefix of them
    or a malformed_multipart, never a part cut short."""
    from service.http_input import parse_form

    rng = np.random.default_rng(5)
    alphabet = ["a", "Z", "0", " ", "-", "\"", "é", "名", "_", "."]
    word = lambda: "".join(rng.choice(alphabet, size=int(rng.integers(1, 8))))  # noqa: E731
    for _ in range(300):
        files, data = [], {}
        for _ in range(int(rng.integers(1, 6))):
            payload = bytes(rng.choice(list(b"\r\n-ab\x00\xff"), size=int(rng.integers(0, 200))).tolist())
            if rng.random() < 0.6:
                files.append((word(), (word(), payload, "application/octet-stream")))
            else:
                data.setdefault(word(), []).append(payload.decode("latin-1").replace("\r", "").replace("\n", ""))
        files = files or [("f", ("f.bin", b"", "application/octet-stream"))]  # else httpx sends a urlencoded form
        encoded = httpx.Request("POST", "http://x/", files=files, data=data)
        body, content_type = encoded.read(), encoded.headers["content-type"]
        want = starlette_parts(body, content_type)
        assert parse_form(body, content_type, max_files=99, max_fields=99, max_part_size=1 << 20) == want
        cut = int(rng.integers(0, len(body)))
        try:
            got = parse_form(body[:cut], content_type, max_files=99, max_fields=99, max_part_size=1 << 20)
        except InputError as exc:
            assert exc.reason == "malformed_multipart"
        else:
            assert got == want[:len(got)]


@pytest.mark.parametrize("body, reason", [
    (b"no delimiter at all", "malformed_multipart"),
    (b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\nno blank line\r\n--B--\r\n", "malformed_multipart"),
    (b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n", "malformed_multipart"),  # no name
    (b"--B\r\nX-A: 1\r\nX-B\r\n\r\nx\r\n--B--\r\n", "malformed_multipart"),  # a header without a colon
    (b"--B\r\n" + b"X-A: 1\r\n" * 9 + b"Content-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--\r\n",
     "malformed_multipart"),
])
def test_parse_form_refuses_malformed_parts(body, reason):
    """No delimiter, headers without their blank line, a part without a name, a header without
    a colon, more than 8 headers: each a malformed_multipart."""
    from service.http_input import parse_form

    assert reason_of(lambda: parse_form(body, "multipart/form-data; boundary=B", max_files=4, max_fields=4,
                                        max_part_size=100)) == reason
    assert reason_of(lambda: parse_form(body, "multipart/form-data; boundary=" + "B" * 71, max_files=4,
                                        max_fields=4, max_part_size=100)) == "malformed_multipart"
