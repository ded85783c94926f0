"""Input capture behind a live service (capture.policy=all, regions on): what hostile uploads and
strings get back and what is stored of them, the admin routes over captured inputs (served as
fresh PNGs, erased for good, refused without a token), and `classguard dataset export` of the
labelled inputs."""

from __future__ import annotations

import io
import json
import sqlite3
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from harness import promtext
from harness.server import Server
from harness.traffic import holdout_samples
from ops.cli import main as cli
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
ADMIN, FEEDBACK = "capture-admin-token-01", "capture-feedback-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
SCRIPT = "<script>alert(1)</script>"
HTML_TAIL = b"<html><body><script>alert(1)</script></body></html>"


@pytest.fixture(scope="module")
def live(model_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    db = tmp / "predictions.sqlite"
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": ADMIN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK,
           "CLASSGUARD_LOG__PATH": str(db), "CLASSGUARD_CAPTURE__POLICY": "all",
           "CLASSGUARD_MONITORS__REGIONS": "true"}
    with Server(env=env, log_path=tmp / "serve.log") as server:
        server.db = db
        yield server


@pytest.fixture(scope="module")
def samples():
    return holdout_samples()[:40]


def count(db, table: str, request_id: str) -> int:
    """Rows of `table` for this request id, read straight from the SQLite file."""
    raw = sqlite3.connect(db)
    try:
        return raw.execute(f"SELECT count(*) FROM {table} WHERE request_id=?", (request_id,)).fetchone()[0]
    finally:
        raw.close()


def classify(server, image: bytes, *, filename="digit.png", content_type="image/png", headers=None,
             context: dict | None = None) -> httpx.Response:
    data = {"context": json.dumps(context)} if context is not None else None
    return httpx.post(f"{server.url}/classify", files={"image": (filename, image, content_type)}, data=data,
                      headers=headers, timeout=30)


def stored(server, request_id: str) -> int:
    """Wait until the answer's row and its input are in the file (the log flushes every 0.5 s)."""
    return wait_until(lambda: count(server.db, "inputs", request_id), message=f"the input of {request_id}")


def settled(server, samples) -> None:
    """Everything answered so far is written: a fresh answer's input is in the file, and each
    flush writes the whole queue in order."""
    stored(server, classify(server, samples[0].png).json()["request_id"])


def refused_and_not_stored(server, samples, r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, r.text[:300]
    body = r.json()
    assert body["error"] and body["detail"] and body["request_id"] == r.headers["X-Request-ID"]
    settled(server, samples)
    assert count(server.db, "inputs", body["request_id"]) == 0
    assert count(server.db, "predictions", body["request_id"]) == 0


@pytest.mark.parametrize("name, upload, content_type", [
    ("page.html", b"<!DOCTYPE html><html><body>" + SCRIPT.encode() + b"</body></html>", "text/html"),
    ("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><script>alert(1)</script>'
                   b'<rect width="8" height="8"/></svg>', "image/svg+xml"),
], ids=["html", "svg"])
def test_html_and_svg_uploads_are_refused_with_a_reason_and_not_stored(live, samples, name, upload, content_type):
    """An HTML page or an SVG (with a script) sent as the image gets a JSON 4xx with a reason,
    and neither an answer nor an input is written for it."""
    r = classify(live, upload, filename=name, content_type=content_type)
    refused_and_not_stored(live, samples, r)
    assert r.json()["error"] == "not_an_image"


def test_a_huge_image_is_refused_and_not_stored(live, samples):
    """A PNG declaring 20,000 x 20,000 pixels (a few KB on the wire) is refused as too large
    before it is decoded, and nothing is stored of it."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    r = classify(live, buffer.getvalue())
    refused_and_not_stored(live, samples, r)
    assert r.status_code == 413 and r.json()["error"] == "image_too_large"


def test_a_polyglot_is_answered_and_served_back_as_pixels_only(live, samples):
    """A valid PNG with an HTML page after its end is answered; the admin route serves it back as
    a PNG of the same pixels with no script in it, marked nosniff and with a deny-all CSP."""
    digit = samples[1].png
    r = classify(live, digit + HTML_TAIL)
    assert r.status_code == 200 and r.json()["label"] is not None
    rid = r.json()["request_id"]
    stored(live, rid)
    for params in ({}, {"thumbnail": "1"}):
        got = httpx.get(f"{live.url}/admin/inputs/{rid}", params=params, headers=AUTH)
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-security-policy"] == "default-src 'none'"
        assert b"<script" not in got.content.lower() and b"<html" not in got.content.lower()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got.content))),
                                      np.asarray(Image.open(io.BytesIO(digit))))


def test_script_in_client_strings_never_reaches_the_incident_page_unescaped(live, samples):
    """`<script>` as the correlation id, as subgroup context (value and key) and as a feedback
    label: the id is not echoed, the label is refused (422), and GET /admin/incident's HTML
    carries no `<script` at all, with its CSP header."""
    r = classify(live, samples[2].png, headers={"X-Request-ID": SCRIPT},
                 context={"capture": SCRIPT, SCRIPT: SCRIPT})
    assert r.status_code == 200 and "X-Correlation-ID" not in r.headers
    rid = r.json()["request_id"]
    assert SCRIPT not in r.text
    stored(live, rid)
    fb = httpx.post(f"{live.url}/feedback", json={"request_id": rid, "label": SCRIPT},
                    headers={"Authorization": f"Bearer {FEEDBACK}"}, timeout=30)
    assert fb.status_code == 422, fb.text
    page = httpx.get(f"{live.url}/admin/incident", params={"since": "10m"}, headers=AUTH, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in page.text.lower()
    assert rid in page.text  # the page did read this answer: its input is on a contact sheet


NO_TOKEN_ROUTES = [("GET", "/admin/inputs"), ("GET", "/admin/inputs/abc"), ("DELETE", "/admin/inputs/abc"),
                   ("DELETE", "/admin/inputs?since=10m"), ("GET", "/admin/incident"), ("GET", "/admin/predictions")]


@pytest.mark.parametrize("method, path", NO_TOKEN_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token"])
def test_inputs_routes_without_the_token_are_401_json(live, method, path, header):
    """The inputs and incident routes answer a missing or wrong token as every admin route does:
    401 JSON `unauthorized`."""
    r = httpx.request(method, f"{live.url}{path}", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_and_malformed_input_ids(live, method):
    """An id no input has is a 404 JSON `not_found`; a 200-character id and `<script>` are 400 JSON
    `bad_parameter`; `../x` (its slash encoded) names no route, as under every admin path: 404 JSON."""
    r = httpx.request(method, f"{live.url}/admin/inputs/0123456789abcdef0123456789abcdef", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.request(method, f"{live.url}/admin/inputs/..%2Fx", headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"].startswith("no such route"), r.text[:200]
    for bad in ("a" * 200, "%3Cscript%3E"):
        r = httpx.request(method, f"{live.url}/admin/inputs/{bad}", headers=AUTH)
        assert r.status_code == 400 and r.json()["error"] == "bad_parameter", (bad, r.status_code, r.text[:200])


def test_dataset_export_writes_labelled_inputs_and_says_what_is_missing(live, samples, tmp_path, capsys):
    """Six answers, one input erased through the route, four labelled through POST /feedback:
    `classguard dataset export --db` writes the four PNGs in their class folders (the upload's
    pixels), the fifth in _unlabelled/, a manifest of five, and says one answer had no captured
    input and one captured input no label."""
    t0 = time.time()
    mine = samples[10:16]
    ids = [classify(live, s.png).json()["request_id"] for s in mine]
    for rid in ids:
        stored(live, rid)
    assert httpx.delete(f"{live.url}/admin/inputs/{ids[5]}", headers=AUTH).json() == {"request_id": ids[5],
                                                                                       "erased": 1}
    fb = httpx.post(f"{live.url}/feedback", headers={"Authorization": f"Bearer {FEEDBACK}"}, timeout=30,
                    json={"items": [{"request_id": rid, "label": str(s.label)} for rid, s in zip(ids[:4], mine)]})
    assert fb.status_code == 200 and fb.json()["recorded"] == 4, fb.text
    out = tmp_path / "export"
    capsys.readouterr()
    assert cli(["dataset", "export", "--db", str(live.db), "--since", str(t0), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "4 labelled inputs" in said and "1 without a label" in said
    assert "of 6 logged answers matching: 5 kept their input, 1 had no captured input" in said
    assert "1 captured inputs had no label" in said
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["request_id"] for m in manifest] == ids[:5]
    for m, s in zip(manifest[:4], mine):
        assert m["path"] == f"{s.label}/{m['request_id']}.png" and m["label"] == str(s.label)
        np.testing.assert_array_equal(np.asarray(Image.open(out / m["path"])),
                                      np.asarray(Image.open(io.BytesIO(s.png))))
    assert manifest[4]["path"] == f"_unlabelled/{ids[4]}.png" and manifest[4]["label"] is None
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(m["path"] for m in manifest)
    assert len((out / "subgroups.csv").read_text().splitlines()) == 1 + 4


def test_export_through_the_admin_routes_equals_the_export_from_the_file(live, tmp_path, monkeypatch, capsys):
    """`classguard dataset export --url` (pages and PNGs through GET /admin/inputs) writes the same
    files and manifest as `--db` on the service's file."""
    monkeypatch.setenv("CLASSGUARD_ADMIN_TOKEN", ADMIN)
    by_file, by_api = tmp_path / "file", tmp_path / "api"
    assert cli(["dataset", "export", "--db", str(live.db), "--since", "10m", "-o", str(by_file)]) == 0
    assert cli(["dataset", "export", "--url", live.url, "--since", "10m", "-o", str(by_api)]) == 0
    capsys.readouterr()
    files = sorted(p.relative_to(by_file).as_posix() for p in by_file.rglob("*.png"))
    assert len(files) >= 10 and files == sorted(p.relative_to(by_api).as_posix() for p in by_api.rglob("*.png"))
    assert all((by_file / f).read_bytes() == (by_api / f).read_bytes() for f in files)
    assert (by_file / "manifest.jsonl").read_text() == (by_api / "manifest.jsonl").read_text()


def test_listing_pages_past_an_erased_input(live):
    """GET /admin/inputs?limit=2 then erasing the page's last input: the next page (after=that id)
    still continues after it; an `after` that names no logged answer is a 404 with a reason."""
    first = httpx.get(f"{live.url}/admin/inputs", params={"limit": 2}, headers=AUTH).json()
    assert first["count"] == 2 and first["next_after"] == first["inputs"][1]["request_id"]
    whole = httpx.get(f"{live.url}/admin/inputs", params={"limit": 4}, headers=AUTH).json()["inputs"]
    assert httpx.delete(f"{live.url}/admin/inputs/{first['next_after']}", headers=AUTH).status_code == 200
    second = httpx.get(f"{live.url}/admin/inputs", params={"limit": 2, "after": first["next_after"]}, headers=AUTH)
    assert [r["request_id"] for r in second.json()["inputs"]] == [r["request_id"] for r in whole[2:4]]
    r = httpx.get(f"{live.url}/admin/inputs", params={"after": "0123456789abcdef0123456789abcdef"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_export_into_a_folder_holding_another_file_is_refused(live, tmp_path, capsys):
    """A non-empty folder that is not an earlier export is refused with status 2, and nothing is
    written into it."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not an export")
    assert cli(["dataset", "export", "--db", str(live.db), "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_erasure_through_the_route_leaves_nothing_in_the_file(live, samples):
    """DELETE /admin/inputs/{id} and DELETE /admin/inputs?since=&until=: afterwards the SQLite file
    holds no input of those requests (their answers stay), GET is 404, a second DELETE is 404,
    and classguard_inputs_erased_total counted them."""
    before = promtext.total(promtext.scrape(live.url), "classguard_inputs_erased_total")
    one = classify(live, samples[20].png).json()["request_id"]
    stored(live, one)
    r = httpx.delete(f"{live.url}/admin/inputs/{one}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"request_id": one, "erased": 1}
    assert count(live.db, "inputs", one) == 0 and count(live.db, "predictions", one) == 1
    assert httpx.get(f"{live.url}/admin/inputs/{one}", headers=AUTH).status_code == 404
    assert httpx.delete(f"{live.url}/admin/inputs/{one}", headers=AUTH).status_code == 404
    t0 = time.time()
    ranged = [classify(live, s.png).json()["request_id"] for s in samples[21:24]]
    for rid in ranged:
        stored(live, rid)
    r = httpx.delete(f"{live.url}/admin/inputs", params={"since": str(t0), "until": str(time.time() + 1)},
                     headers=AUTH)
    assert r.status_code == 200 and r.json()["erased"] == 3, r.text
    assert [count(live.db, "inputs", rid) for rid in ranged] == [0, 0, 0]
    assert promtext.total(promtext.scrape(live.url), "classguard_inputs_erased_total") == before + 4


def test_capture_metrics_moved(live):
    """classguard_inputs_captured_total{reason="all"} counts the answers kept, and nothing was dropped."""
    samples = promtext.scrape(live.url)
    raw = sqlite3.connect(live.db)
    answered = raw.execute("SELECT count(*) FROM predictions").fetchone()[0]
    raw.close()
    assert promtext.total(samples, "classguard_inputs_captured_total", reason="all") == answered > 10
    assert promtext.total(samples, "classguard_inputs_dropped_total") == 0
