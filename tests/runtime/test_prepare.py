"""A client's context for an image: a JSON object of subgroup attributes, or a clear
`malformed_context` saying what is wrong with it."""

from __future__ import annotations

import pytest

from core.errors import InputError
from runtime.prepare import parse_context


@pytest.mark.parametrize("raw", [None, "", "   ", "null", b""])
def test_absent_empty_or_null_context_is_none(raw):
    """A missing, blank or `null` context (text, or a file part's bytes) means no context, not an error."""
    assert parse_context(raw, 100) is None


def test_a_json_object_is_the_context_from_text_or_file():
    """A JSON object is returned as a dict, whether sent as a text field or a file part's bytes."""
    assert parse_context('{"capture": "phone"}', 100) == {"capture": "phone"}
    assert parse_context(b'{"capture": "phone"}', 100) == {"capture": "phone"}


@pytest.mark.parametrize("raw, limit, detail", [
    ('{"capture": "' + "x" * 200 + '"}', 100, "larger than 100 bytes"),
    ('{"capture": "\u00e9' + "\u00e9" * 40 + '"}', 60, "larger than 60 bytes"),  # bytes, not characters
    ("[" * 100_000 + "]" * 100_000, 1_000_000, "RecursionError"),
    ("{capture: phone}", 100, "not valid JSON"),
    ('["capture=phone"]', 100, "got list"),
    ('"phone"', 100, "got str"),
    ("3", 100, "got int"),
])
def test_oversized_deep_invalid_or_non_object_context_is_malformed(raw, limit, detail):
    """Too large (counted in UTF-8 bytes), nested past the parser's recursion, not JSON, or
    not an object: each is `malformed_context` with a detail saying which."""
    with pytest.raises(InputError, match=detail) as caught:
        parse_context(raw, limit)
    assert caught.value.reason == "malformed_context" and caught.value.status == 400
