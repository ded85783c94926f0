"""Admin routes: off without a token, 401 with a wrong one, and the Evidently drift report
(JSON and HTML, over HTTP and from the CLI) with one.
"""


import httpx
import pytest

from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from tests.conftest import run_module

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token-0123"


@pytest.fixture(scope="module")
def admin_server(model_home, tmp_path_factory):
    # region monitors off (they are on by default): what the admin routes say without them
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN,
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1", "CLASSGUARD_MONITORS__REGIONS": "false"}
    with Server(env=env, log_path=tmp_path_factory.mktemp("admin") / "serve.log") as server:
        run(server.url, stream(holdout_samples(), 300, phone_share=0.4, seed=8), concurrency=8)
        yield server


@pytest.mark.parametrize("method, path", [("GET", "drift-report"), ("GET", "guardrails"), ("POST", "guardrails")])
def test_admin_is_off_without_a_token(server, method, path):
    """With CLASSGUARD_ADMIN_TOKEN unset every admin route answers 404 with a reason."""
    r = httpx.request(method, f"{server.url}/admin/{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"profile": "allow_all"} if method == "POST" else None)
    assert r.status_code == 404 and r.json()["error"] == "admin_disabled"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_wrong_or_missing_token_is_401(admin_server, header):
    """Missing, wrong, wrong-scheme and extended tokens are all refused with 401."""
    headers = {"Authorization": header} if header else {}
    r = httpx.get(f"{admin_server.url}/admin/drift-report", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_json_report_covers_each_subgroup_with_explicit_methods(admin_server):
    """The JSON report has the mix and a per-subgroup drift entry for both captures, each with
    the method it used (Jensen-Shannon for classes, Wasserstein for confidence)."""
    r = httpx.get(f"{admin_server.url}/admin/drift-report", params={"format": "json", "window_seconds": 600},
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["current_events"] == 300 and report["model"] == "classguard-baseline"
    columns = {m["column"]: m["method"] for m in report["metrics"]}
    for key in ("capture=phone", "capture=scanner"):
        assert columns[f"predicted_class[{key}]"] == "jensenshannon"
        assert columns[f"confidence[{key}]"] == "wasserstein"
    assert columns["subgroup"] == "jensenshannon"


def test_bad_parameters_are_400(admin_server):
    """An unknown format or model, or a window out of range, is a 400 with a reason; so is a log
    filter no stored value can hold (a NUL, which PostgreSQL refuses outright, a control
    character, 201 characters)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for params in ({"format": "pdf"}, {"model": "nope"}, {"window_seconds": "-5"}, {"window_seconds": "abc"}):
        r = httpx.get(f"{admin_server.url}/admin/drift-report", params=params, headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "bad_parameter", params
    for params in ({"subgroup": "capture=\x00phone"}, {"flag": "a\nb"}, {"model": "m" * 201},
                   {"correlation_id": "\x7f"}):
        r = httpx.get(f"{admin_server.url}/admin/predictions", params=params, headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "bad_parameter", params


def test_cli_writes_the_html_report(admin_server, tmp_path):
    """`classguard drift-report --format html -o FILE` saves Evidently's HTML report."""
    out = tmp_path / "report.html"
    done = run_module("ops.cli", "drift-report", "--url", admin_server.url, "--format", "html",
                      "--window-seconds", "600", "-o", str(out), env={"CLASSGUARD_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    assert "predicted_class[capture=phone]" in html


def test_regions_answer_why_not_when_off_and_refuse_bad_parameters(admin_server):
    """/admin/regions on a service with region monitors off is a 409 saying how to turn them on; the CLI
    prints it in one line."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{admin_server.url}/admin/regions", headers=auth)
    assert r.status_code == 409 and "monitors.regions: true" in r.json()["detail"], r.text
    done = run_module("ops.cli", "regions", "--url", admin_server.url, env={"CLASSGUARD_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 2 and "monitors.regions: true" in done.stderr and done.stderr.count("\n") == 1
