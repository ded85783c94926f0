"""Read a classify request's multipart form with hard limits and clear errors.

BentoML's own multipart handling answers 500 to a non-image and fetches URLs sent in place
of files; parsing here keeps every bad input a counted 4xx and never touches the network.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from core.config import LimitsConfig
from core.errors import InputError


def require_bearer(request: Request, token: Any, *, off_reason: str, variable: str) -> None:
    """`Authorization: Bearer <token>`, compared in constant time; routes whose token is not
    configured (None) are off."""
    if token is None:
        raise InputError(off_reason, f"this route is off: set {variable} to enable it")
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    secret = token.get_secret_value()
    if scheme.lower() != "bearer" or not sent or not secret or not hmac.compare_digest(sent.encode(), secret.encode()):
        raise InputError("unauthorized", f"send `Authorization: Bearer <{variable}>`")


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError("upload_too_large", f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError("upload_too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InputError("client_disconnected", f"the client went away after {size} bytes of the body") from None
    return b"".join(chunks)


async def read_form(request: Request, limits: LimitsConfig, *, max_files: int,
                    allowed: frozenset[str]) -> dict[str, list[Any]]:
    """Field name -> values in order (file parts as Upload, text fields as str); a field outside
    `allowed` is refused, so a misspelt one is not silently ignored."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise InputError("not_multipart", "send multipart/form-data with the image in the `image` field")
    body = await read_body(request, limits.max_upload_bytes)
    fields: dict[str, list[Any]] = {}
    for name, value in parse_form(body, content_type, max_files=max_files, max_fields=max_files + 8,
                                  max_part_size=limits.max_upload_bytes):
        if name not in allowed:
            raise InputError("unknown_field", f"unknown form field {name[:64]!r}; this endpoint reads {sorted(allowed)}")
        fields.setdefault(name, []).append(value)
    return fields


def parse_form(body: bytes, content_type: str, *, max_files: int, max_fields: int,
               max_part_size: int) -> list[tuple[str, Upload | str]]:
    """The parts of a multipart/form-data body (RFC 7578) held in memory, in order: a part with
    a filename as Upload, the others as text. The body is whole already (read_body), so parts
    are cut at their delimiters with bytes.find, in C: Starlette's reader (python-multipart's
    byte-by-byte parser, each part spooled to a temporary file, every write awaited) cost more
    than decoding the small image in it. A part not closed by a delimiter (a truncated body) is
    left out. Bad bodies are InputErrors: too_many_images, too_many_fields, malformed_multipart."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1-70 characters
        raise InputError("malformed_multipart", "could not parse the multipart body: its Content-Type has no valid "
                                                "boundary")
    delimiter = b"--" + boundary
    closing = b"\r\n" + delimiter
    at = body.find(delimiter)
    if at < 0:
        raise InputError("malformed_multipart", "could not parse the multipart body: no part delimiter in it")
    parts: list[tuple[str, Upload | str]] = []
    files = texts = 0
    at += len(delimiter)
    while not body.startswith(b"--", at):  # "--" right after a delimiter closes the body
        line_end = body.find(b"\r\n", at)
        end = body.find(closing, line_end + 2) if line_end >= 0 else -1
        if end < 0:
            break  # truncated: this part is not closed
        head, blank, data = body[line_end + 2:end].partition(b"\r\n\r\n")
        if not blank:
            raise InputError("malformed_multipart", "could not parse the multipart body: a part's headers do not "
                                                    "end in a blank line")
        name, filename = _disposition(head)
        if filename is not None:
            files += 1
            if files > max_files:
                raise InputError("too_many_images", f"could not parse the multipart body: more than {max_files} files")
            parts.append((name, Upload(data, filename)))
        else:
            texts += 1
            if texts > max_fields:
                raise InputError("too_many_fields", f"could not parse the multipart body: more than {max_fields} "
                                                    "fields")
            if len(data) > max_part_size:
                raise InputError("upload_too_large", f"a form field exceeds the limit of {max_part_size} bytes")
            parts.append((name, _text(data)))
        at = end + len(closing)
    return parts


MAX_PART_HEADERS = 8  # a form part needs two (Content-Disposition, Content-Type)
# `form-data; name="..."[; filename="..."]` with nothing to unescape: read as
# parse_options_header reads it; anything else goes to parse_options_header
_PLAIN_DISPOSITION = re.compile(rb'(?i:form-data); ?name="([^"\\%]*)"(?:; ?filename="([^"\\%]*)")?')


def _disposition(head: bytes) -> tuple[str, str | None]:
    """A part's field name and filename (None: a text field) from its headers."""
    lines = head.split(b"\r\n") if head else []
    if len(lines) > MAX_PART_HEADERS:
        raise InputError("malformed_multipart", f"could not parse the multipart body: a part has more than "
                                                f"{MAX_PART_HEADERS} headers")
    for line in lines:
        field, colon, value = line.partition(b":")
        if not colon:
            raise InputError("malformed_multipart", "could not parse the multipart body: a part header has no colon")
        if field.strip().lower() == b"content-disposition":
            plain = _PLAIN_DISPOSITION.fullmatch(value.strip())
            if plain:  # what clients send: no escapes, no encoded words (4 us a part saved)
                name, filename = plain.groups()
                return _text(name), _text(filename) if filename is not None else None
            _, options = parse_options_header(value.strip())
            if b"name" not in options:
                break
            filename = options.get(b"filename")
            return _text(options[b"name"]), _text(filename) if filename is not None else None
    raise InputError("malformed_multipart", 'could not parse the multipart body: a part has no Content-Disposition '
                                            '"name"')


def _text(data: bytes) -> str:
    """Form text as UTF-8 (a byte that is not UTF-8 becomes U+FFFD, never an error)."""
    return data.decode("utf-8", "replace")


def image_uploads(fields: dict[str, list[Any]], name: str) -> list[Upload]:
    values = fields.get(name, [])
    if not values:
        raise InputError("missing_image", f"no `{name}` field in the form")
    text = [v for v in values if not isinstance(v, Upload)]
    if text:
        raise InputError("missing_image", f"`{name}` must be a file upload, not a text field")
    return values


def batch_contexts(fields: dict[str, list[Any]], n_images: int) -> list[Any]:
    """Raw context per image: one `contexts` field per image, or one field holding a JSON
    array of them. Each item is parsed later, so one bad context fails only its image."""
    raw = fields.get("contexts", [])
    if not raw:
        return [None] * n_images
    if len(raw) == 1:
        text = raw[0].data.decode("utf-8", "replace") if isinstance(raw[0], Upload) else raw[0]
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise InputError("malformed_context", f"contexts is not a valid JSON array: {exc}") from None
            raw = [None if item is None else json.dumps(item) for item in items]
    if len(raw) != n_images:
        raise InputError("context_count_mismatch", f"{len(raw)} contexts for {n_images} images")
    return raw
