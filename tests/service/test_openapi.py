"""The HTTP reference in the docs is rendered from docs/reference/openapi.json; this keeps that
file equal to what the live service serves at /docs.json.

After an endpoint changes: `CLASSGUARD_UPDATE_OPENAPI=1 .venv/bin/python -m pytest
tests/service/test_openapi.py` rewrites the file, then commit it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reference" / "openapi.json"


def normalised(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.integration
def test_committed_openapi_document_equals_the_served_one(server):
    """docs/reference/openapi.json is the live /docs.json (keys sorted), so the docs cannot go stale."""
    served = httpx.get(f"{server.url}/docs.json", timeout=30)
    assert served.status_code == 200
    live = normalised(served.json())
    if os.environ.get("CLASSGUARD_UPDATE_OPENAPI") == "1":
        COMMITTED.write_text(live)
    assert COMMITTED.exists(), "docs/reference/openapi.json is missing: run with CLASSGUARD_UPDATE_OPENAPI=1"
    assert COMMITTED.read_text() == live, (
        "/docs.json differs from docs/reference/openapi.json: rerun this test with "
        "CLASSGUARD_UPDATE_OPENAPI=1 and commit the file")
