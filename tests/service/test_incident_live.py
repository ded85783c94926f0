"""The incident page of a live service (capture stratified, regions on) after real traffic with its
true labels: saved by `classguard incident`, it opens in headless Chromium with every image
decoded, a quiet console and contact sheets of captured inputs, and it points nowhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from harness import browser
from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from ops.cli import main as cli
from store.prediction_log import connect
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "artifacts" / "incident.png"
ADMIN, FEEDBACK = "incident-admin-token-01", "incident-feedback-token"
ANSWERS = 300


def logged(db) -> int:
    conn = connect(db)
    try:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def incident(model_home, tmp_path_factory):
    """A served incident: 300 holdout images (30% phone, no context) answered and labelled."""
    tmp = tmp_path_factory.mktemp("incident")
    db = tmp / "predictions.sqlite"
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": ADMIN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK,
           "CLASSGUARD_LOG__PATH": str(db), "CLASSGUARD_CAPTURE__POLICY": "stratified",
           "CLASSGUARD_MONITORS__REGIONS": "true"}
    with Server(env=env, log_path=tmp / "serve.log") as server:
        results, _ = run(server.url, stream(holdout_samples(), ANSWERS, phone_share=0.3, seed=21), concurrency=4,
                         send_context=False)
        assert all(status == 200 for _, status, _ in results)
        wait_until(lambda: logged(db) >= ANSWERS, message="every answer written to the log")
        r = httpx.post(f"{server.url}/feedback", headers={"Authorization": f"Bearer {FEEDBACK}"}, timeout=60,
                       json={"items": [{"request_id": b["request_id"], "label": str(s.label)} for s, _, b in results]})
        assert r.status_code == 200 and r.json()["recorded"] == ANSWERS, r.text[:300]
        yield server, tmp


def test_served_incident_page_has_a_csp_header(incident):
    """GET /admin/incident answers HTML with a Content-Security-Policy that allows no script and
    no remote image."""
    server, _ = incident
    r = httpx.get(f"{server.url}/admin/incident", params={"since": "10m"},
                  headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src data:" in policy and "script-src" not in policy


def test_saved_incident_page_opens_offline_with_every_image(incident, monkeypatch, capsys):
    """`classguard incident --since 10m -o FILE` saves a page with no http(s) URL in it that
    headless Chromium opens with every contact-sheet thumbnail decoded and no console error; its
    screenshot goes to artifacts/incident.png."""
    server, tmp = incident
    monkeypatch.setenv("CLASSGUARD_ADMIN_TOKEN", ADMIN)
    page = tmp / "incident.html"
    assert cli(["incident", "--url", server.url, "--since", "10m", "-o", str(page)]) == 0
    assert str(page) in capsys.readouterr().out
    text = page.read_text()
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert "<script" not in text.lower()
    if not browser.available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"headless Chromium is needed in CI: {browser.missing()}")
        pytest.skip(browser.missing())
    report = browser.inspect_page(page, SCREENSHOT)
    assert report.images, "no contact sheet: no captured input on the page"
    assert report.broken == [] and all(width > 0 for _, width in report.images)
    assert report.console_errors == []
    assert SCREENSHOT.stat().st_size > 0
