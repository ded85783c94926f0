"""Read a classify request's multipart form with hard limits and clear errors.

BentoML's own multipart handling answers 500 to a non-image and fetches URLs sent in place
of files; parsing here keeps every bad input a counted 4xx and never touches the network.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
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
    """Field name -> values in order (UploadFile contents as Upload, text fields as str); a
    field outside `allowed` is refused, so a misspelt one is not silently ignored."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise InputError("not_multipart", "send multipart/form-data with the image in the `image` field")
    body = await read_body(request, limits.max_upload_bytes)

    async def replay():
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=max_files, max_fields=max_files + 8,
                             max_part_size=limits.max_upload_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        text = str(exc)
        reason = ("too_many_images" if "many files" in text else "too_many_fields" if "many fields" in text
                  else "malformed_multipart")
        raise InputError(reason, f"could not parse the multipart body: {exc}") from None
    fields: dict[str, list[Any]] = {}
    try:
        for name, value in form.multi_items():
            if name not in allowed:
                raise InputError("unknown_field", f"unknown form field {name[:64]!r}; this endpoint reads "
                                                  f"{sorted(allowed)}")
            if isinstance(value, UploadFile):
                value = Upload(await value.read(), value.filename)
            fields.setdefault(name, []).append(value)
    finally:
        await form.close()
    return fields


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
