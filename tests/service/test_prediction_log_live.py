"""The prediction log behind a live two-worker service: every answered request is logged once,
and the admin routes and the CLI find the requests behind a flag."""

import json
import time

import httpx
import pytest

from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from service.prediction_log import connect
from tests.conftest import run_module

pytestmark = pytest.mark.integration
TOKEN = "log-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def logged(model_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("log")
    db = tmp / "predictions.sqlite"
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN, "CLASSGUARD_WORKERS": "2",
           "CLASSGUARD_LOG__PATH": str(db)}
    with Server(env=env, log_path=tmp / "serve.log") as server:
        results, _ = run(server.url, stream(holdout_samples(), 600, phone_share=0.5, seed=9), concurrency=16)
        time.sleep(1.5)  # both workers flush (log.flush_seconds 0.5)
        yield server, db, results


def test_every_answer_is_logged_once_across_workers(logged):
    """600 answers over 2 workers: 600 rows, 600 distinct request ids, the same labels."""
    _, db, results = logged
    conn = connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM predictions").fetchone() == (600, 600)
    labels = dict(conn.execute("SELECT request_id, label FROM predictions"))
    assert all(labels[body["request_id"]] == body["label"] for _, _, body in results)


def test_admin_routes_find_the_requests_behind_a_flag(logged):
    """List by subgroup and flag, show one trace with probabilities, summary by subgroup x flag, CSV export."""
    server, _, results = logged
    flagged = [b for _, _, b in results if "known_confusion:6->0" in b["flags"]]
    assert flagged
    r = httpx.get(f"{server.url}/admin/predictions", headers=AUTH,
                  params={"subgroup": "capture=phone", "flag": "known_confusion:6->0", "limit": 1000})
    assert {p["request_id"] for p in r.json()["predictions"]} == {b["request_id"] for b in flagged}
    one = httpx.get(f"{server.url}/admin/predictions/{flagged[0]['request_id']}", headers=AUTH).json()
    assert one["flags"] == flagged[0]["flags"] and len(one["probs"]) == 10
    assert httpx.get(f"{server.url}/admin/predictions/nope", headers=AUTH).status_code == 404
    rows = httpx.get(f"{server.url}/admin/predictions-summary", headers=AUTH).json()["rows"]
    count = {(x["subgroup"], x["flag"]): x["count"] for x in rows}
    assert count[("capture=phone", "known_confusion:6->0")] == len(flagged)
    csv = httpx.get(f"{server.url}/admin/predictions", headers=AUTH, params={"format": "csv", "limit": 5}).text
    assert csv.splitlines()[0].startswith("request_id,ts,subgroup") and len(csv.splitlines()) == 6
    assert httpx.get(f"{server.url}/admin/predictions", params={"since": "soon"}, headers=AUTH).status_code == 400
    assert httpx.get(f"{server.url}/admin/predictions").status_code == 401


def test_cli_lists_and_shows_from_the_log_file(logged):
    """`classguard log list --flag ... --format jsonl` and `log show ID` read the same rows."""
    _, db, results = logged
    done = run_module("service.cli", "log", "list", "--db", str(db), "--flag", "low_confidence", "--format", "jsonl",
                      "--limit", "1000", env={})
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(listed) == sum("low_confidence" in b["flags"] for _, _, b in results)
    shown = run_module("service.cli", "log", "show", results[0][2]["request_id"], "--db", str(db), env={})
    assert json.loads(shown.stdout)["request_id"] == results[0][2]["request_id"]
