"""What a hostile client tried, over real HTTP against a real `bentoml serve`: unknown URLs,
methods and ids never grow /metrics, oversized or slow request heads and bodies are refused
with a JSON reason, odd names cannot break /metrics, client ids cannot collide, and paging
through the log is bounded."""

import json
import socket
import time

import httpx
import pytest

from harness import promtext
from harness.server import Server
from harness.traffic import holdout_samples

pytestmark = pytest.mark.integration
ADMIN = "hardening-admin-token-01"
FEEDBACK = "hardening-feedback-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def live(model_home, tmp_path_factory):
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": ADMIN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK,
           "CLASSGUARD_LIMITS__HEADER_TIMEOUT_SECONDS": "2", "CLASSGUARD_LIMITS__REQUEST_TIMEOUT_SECONDS": "3",
           "CLASSGUARD_LOG__FLUSH_SECONDS": "0.1", "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}
    with Server(env=env, log_path=tmp_path_factory.mktemp("hardening") / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def pngs():
    return [s.png for s in holdout_samples()[:400]]


def raw_http(url: str, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes on one connection; everything the server sent until it closed, and when it closed."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may close before it has read everything
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
    return out, time.monotonic() - started


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def hostile_round(url: str, k: int) -> None:
    """One of each thing a client controls that once became a label value."""
    with httpx.Client(timeout=10) as client:
        client.get(f"{url}/no/such/path/{k}?q={k}")
        client.post(f"{url}/made-up-{k}", content=b"x")
        client.request("DELETE", f"{url}/classify")
        client.request("PATCH", f"{url}/feedback/{k}")
        client.get(f"{url}/admin/predictions/id-{k}")                  # 401
        client.get(f"{url}/admin/predictions/id-{k}", headers=AUTH)    # 404
        client.get(f"{url}/admin/nope-{k}", headers=AUTH)
        client.get(f"{url}/static_content/x-{k}.js")
        client.get(f"{url}/classify/")
    raw_http(url, f"FOO{k % 10} /x{k} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), wait=2)


def test_unknown_paths_methods_and_ids_keep_every_series_bounded(live):
    """After one round of unknown paths, methods and ids, 40 more rounds leave the set of series
    on /metrics (all of it, BentoML's own included) unchanged."""
    hostile_round(live.url, 0)
    deadline = time.monotonic() + 15  # the monitors' first publish adds their series once
    while not promtext.total(promtext.scrape(live.url), "classguard_monitor_last_run_timestamp_seconds"):
        assert time.monotonic() < deadline, "the monitors never published"
        time.sleep(0.2)
    before = set(promtext.scrape(live.url))
    for k in range(1, 41):
        hostile_round(live.url, k)
    after = set(promtext.scrape(live.url))
    assert after == before, sorted(after - before)[:5]
    endpoints = promtext.label_values(promtext.scrape(live.url), "bentoml_service_request_total", "endpoint")
    assert "other" in endpoints and "/admin/predictions/{request_id}" in endpoints
    assert not any("no/such" in e or "made-up" in e for e in endpoints)


def test_a_huge_header_is_431_and_closed(live):
    """A 200 KB header is refused with 431 and a JSON reason, the connection closed, and counted."""
    response, _ = raw_http(live.url, b"GET /readyz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 431"), response[:100]
    assert json_body(response)["error"] == "headers_too_large"
    assert promtext.total(promtext.scrape(live.url), "classguard_rejected_requests_total",
                          endpoint="http", reason="headers_too_large") >= 1


def test_half_sent_headers_are_408_after_the_header_timeout(live):
    """A connection that sends half its headers gets a 408 and is closed after header_timeout (2 s here)."""
    response, took = raw_http(live.url, b"GET /readyz HTTP/1.1\r\nHost: a\r\n", wait=15)
    assert response.startswith(b"HTTP/1.1 408"), response[:100]
    assert json_body(response)["error"] == "request_timeout"
    assert 1.5 < took < 10


def test_a_body_that_stops_arriving_is_408_not_504(live):
    """A request whose body stops half-way is answered 408 (the client was slow) when the request times out."""
    head = (b"POST /classify HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n")
    response, took = raw_http(live.url, head, wait=20)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert json_body(response)["error"] == "request_timeout" and took < 15


def test_headers_within_the_bound_are_served(live):
    """A request with 20 KB of ordinary headers is answered normally."""
    r = httpx.get(f"{live.url}/readyz", headers={f"x-h{i}": "v" * 1000 for i in range(20)})
    assert r.status_code == 200


def test_an_oversized_swap_body_is_413(live):
    """A 1 MB guardrail swap body is refused by size before it is read whole."""
    body = json.dumps({"profile": "big", "chain": [{"type": "allow_all"}], "pad": "x" * 1_000_000})
    r = httpx.post(f"{live.url}/admin/guardrails", content=body, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"


def test_a_lone_surrogate_profile_name_is_refused_and_metrics_stay_up(live):
    """A profile name holding a lone surrogate is a 422; /metrics and GET /admin/guardrails keep answering 200."""
    r = httpx.post(f"{live.url}/admin/guardrails", headers={**AUTH, "content-type": "application/json"},
                   content=b'{"profile": "\\ud800", "chain": [{"type": "allow_all"}]}')
    assert r.status_code == 422 and "profile name" in r.json()["detail"]
    assert httpx.get(f"{live.url}/metrics").status_code == 200
    assert httpx.get(f"{live.url}/admin/guardrails", headers=AUTH).status_code == 200


def test_swaps_keep_one_config_series_and_the_audit_log_keeps_each_chain(live):
    """30 swaps of custom chains leave one classguard_guardrail_config_info series, the active one; a
    declared profile's name cannot carry another chain; the audit log holds every chain installed."""
    for i in range(30):
        chain = [{"type": "abstain_below", "threshold": round(0.01 * (i + 1), 2)}]
        r = httpx.post(f"{live.url}/admin/guardrails", headers=AUTH, json={"profile": f"custom-{i}", "chain": chain})
        assert r.status_code == 200, r.text
    r = httpx.post(f"{live.url}/admin/guardrails", headers=AUTH,
                   json={"profile": "allow_all", "chain": [{"type": "abstain_below", "threshold": 0.9}]})
    assert r.status_code == 422 and "declared profile" in r.json()["detail"]
    info = {labels: v for (name, labels), v in promtext.scrape(live.url).items()
            if name == "classguard_guardrail_config_info"}
    assert len(info) == 1 and dict(next(iter(info)))["profile"] == "custom-29"
    audit = [json.loads(line) for line in (live.home / "guardrail-audit.jsonl").read_text().splitlines()]
    assert audit[0]["source"] == "startup" and audit[0]["chain"] == [{"type": "allow_all"}]
    assert audit[-1]["profile"] == "custom-29" and audit[-1]["chain"][0]["threshold"] == 0.3
    assert httpx.post(f"{live.url}/admin/guardrails", headers=AUTH, json={"profile": "allow_all"}).status_code == 200


@pytest.mark.parametrize("fields, reason", [
    ({"context": "{}", "note": "hello"}, "unknown_field"),
    ({f"f{i}": "x" for i in range(12)}, "too_many_fields"),
])
def test_extra_form_fields_name_the_real_problem(live, pngs, fields, reason):
    """Unknown text fields on /classify are refused as what they are, not as too many images."""
    r = httpx.post(f"{live.url}/classify", files={"image": ("d.png", pngs[0])}, data=fields)
    assert r.status_code == 400 and r.json()["error"] == reason, r.text


def test_trailing_slash_is_a_404_without_a_redirect(live):
    """/admin/guardrails/ with a forged Host is a 404: no redirect built from the Host header."""
    r = httpx.get(f"{live.url}/admin/guardrails/", headers={**AUTH, "Host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers


def wait_logged(url: str, request_id: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if httpx.get(f"{url}/admin/predictions/{request_id}", headers=AUTH).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{request_id} not logged within {deadline} s")


def test_a_reused_client_request_id_never_replaces_another_answer(live, pngs):
    """Two requests sent with X-Request-ID victim-123 get their own service ids and rows; feedback and
    lookups by the shared id are a 409 naming both, and by a service id reach exactly that answer."""
    answers = [httpx.post(f"{live.url}/classify", files={"image": ("d.png", png)},
                          headers={"X-Request-ID": "victim-123"}).json() for png in pngs[:2]]
    ids = [a["request_id"] for a in answers]
    assert ids[0] != ids[1] and all(a["correlation_id"] == "victim-123" for a in answers)
    for rid in ids:
        wait_logged(live.url, rid)
    listed = httpx.get(f"{live.url}/admin/predictions", params={"correlation_id": "victim-123"}, headers=AUTH).json()
    assert sorted(p["request_id"] for p in listed["predictions"]) == sorted(ids)
    r = httpx.get(f"{live.url}/admin/predictions/victim-123", headers=AUTH)
    assert r.status_code == 409 and all(rid in r.json()["detail"] for rid in ids)
    fb = {"Authorization": f"Bearer {FEEDBACK}"}
    r = httpx.post(f"{live.url}/feedback", headers=fb, json={"request_id": "victim-123", "label": "3"})
    assert r.status_code == 409 and r.json()["results"][0]["result"] == "ambiguous_request_id"
    r = httpx.post(f"{live.url}/feedback", headers=fb, json={"request_id": ids[0], "label": "3"})
    assert r.status_code == 201
    assert httpx.get(f"{live.url}/admin/predictions/{ids[1]}", headers=AUTH).json()["correlation_id"] == "victim-123"


def test_a_feedback_batch_with_a_bad_item_counts_only_what_was_stored(live, pngs):
    """3 valid items and one lone-surrogate id: a 200 with the bad item a 400 of its own, the 3 stored
    and counted once; the retry stores and counts nothing more."""
    ids = [httpx.post(f"{live.url}/classify", files={"image": ("d.png", png)}).json()["request_id"]
           for png in pngs[10:13]]
    for rid in ids:
        wait_logged(live.url, rid)
    body = ('{"items": [' + ", ".join(f'{{"request_id": "{rid}", "label": "1"}}' for rid in ids)
            + ', {"request_id": "\\ud800", "label": "1"}]}')
    counted = lambda: promtext.total(promtext.scrape(live.url), "classguard_feedback_total")  # noqa: E731
    before = counted()
    headers = {"Authorization": f"Bearer {FEEDBACK}", "content-type": "application/json"}
    r = httpx.post(f"{live.url}/feedback", headers=headers, content=body.encode())
    assert r.status_code == 200, r.text
    assert [x["result"] for x in r.json()["results"]] == ["recorded"] * 3 + ["invalid_request_id"]
    assert counted() == before + 3
    r = httpx.post(f"{live.url}/feedback", headers=headers, content=body.encode())
    assert [x["result"] for x in r.json()["results"]] == ["duplicate"] * 3 + ["invalid_request_id"]
    assert counted() == before + 3


@pytest.mark.parametrize("limit", ["-1", "0", "10001", "abc", "1e3", " 5"])
def test_a_page_limit_outside_the_cap_is_400(live, limit):
    """limit=-1 (SQLite's "no limit"), 0, past the cap or not a whole number: a 400 with the range."""
    r = httpx.get(f"{live.url}/admin/predictions", params={"limit": limit}, headers=AUTH)
    assert r.status_code == 400 and "1..1000" in r.json()["detail"]


def test_paging_reaches_every_logged_answer_once(live, pngs):
    """250 answers read 100 at a time through next_before: each exactly once, newest first."""
    files = [("images", (f"{i}.png", png)) for i, png in enumerate(pngs[100:350])]
    batch = httpx.post(f"{live.url}/classify_batch", files=files, headers={"X-Request-ID": "pager"}, timeout=60).json()
    wanted = {r["request_id"] for r in batch["results"]}
    wait_logged(live.url, f"{batch['request_id']}.249")
    seen, before = [], None
    for _ in range(10):
        params = {"correlation_id": None, "limit": "100", "since": "10m", **({"before": before} if before else {})}
        page = httpx.get(f"{live.url}/admin/predictions", params={k: v for k, v in params.items() if v},
                         headers=AUTH).json()
        seen += [p["request_id"] for p in page["predictions"] if p["request_id"] in wanted]
        before = page["next_before"]
        if before is None:
            break
    assert len(seen) == len(set(seen)) == 250 and set(seen) == wanted
    assert [p["correlation_id"] for p in batch["results"]][:2] == ["pager.0", "pager.1"]


def test_routing_errors_are_json_and_counted(live):
    """An unknown path (404), a wrong method (405) and a request line the parser refuses (400) each
    answer the service's JSON error body and are counted."""
    r = httpx.get(f"{live.url}/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.delete(f"{live.url}/classify")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = httpx.delete(f"{live.url}/admin/guardrails", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    response, _ = raw_http(live.url, b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400") and json_body(response)["error"] == "malformed_request"
    scraped = promtext.scrape(live.url)
    for reason in ("not_found", "method_not_allowed", "malformed_request"):
        assert promtext.total(scraped, "classguard_rejected_requests_total", endpoint="http", reason=reason) >= 1


def test_a_page_cursor_that_names_no_row_is_refused_not_an_empty_page(live):
    """`before` naming no logged answer (aged out, or made up) is a 404 saying so, and `limit`
    written in other digits (²) a 400: neither reads as the end of the log or fails inside."""
    r = httpx.get(f"{live.url}/admin/predictions", params={"before": "gone-0"}, headers=AUTH)
    assert r.status_code == 404 and "before" in r.json()["detail"]
    r = httpx.get(f"{live.url}/admin/predictions", params={"limit": "²"}, headers=AUTH)
    assert r.status_code == 400 and "1..1000" in r.json()["detail"]
    r = httpx.get(f"{live.url}/admin/predictions", params={"since": "nan"}, headers=AUTH)
    assert r.status_code == 400
