"""Input capture in fleet mode: two `bentoml serve` replicas, A and B, with separate homes and
nothing shared but a real PostgreSQL they reach as the service role (migrated as the owner),
capture.policy=all. Images answered by A are listed, shown, labelled, exported and erased
through B; what an erase leaves is read in PostgreSQL directly as the owner; the on-call role
exports but cannot erase."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image

from harness.fleet import Fleet
from harness.postgres import create_roles
from harness.traffic import Sample, holdout_samples, run, stream
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
TOKEN = "capture-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLUSH_WAIT_S = 15.0  # A writes its queue every 0.5 s; a loaded two-core machine gets the rest


@pytest.fixture(scope="module")
def fleet(model_home, postgres, tmp_path_factory):
    """Replicas A (`fleet.a`) and B (`fleet.b`) as the service role on a fresh database with the
    documented roles (`fleet.roles`: each role's URL), capturing every answer's input."""
    logs = tmp_path_factory.mktemp("capture-fleet")
    name = f"capture_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    roles = create_roles(postgres.url.rsplit("/", 1)[0] + f"/{name}")
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": TOKEN,
           "CLASSGUARD_CAPTURE__POLICY": "all", "CLASSGUARD_FLEET__CONNECT_TIMEOUT_SECONDS": "2"}
    with Fleet(2, roles["service"], owner_url=roles["owner"], env=env, log_dir=logs) as live:
        live.a, live.b = live.urls
        live.roles = roles
        yield live
    for log in sorted(logs.glob("replica-*.log")):
        text = log.read_text()
        assert "permission denied" not in text and "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


@functools.cache
def samples() -> list[Sample]:
    return holdout_samples()


def owner_rows(fleet, sql: str, *args) -> list[tuple]:
    """`sql` in PostgreSQL as the owner role, apart from every replica."""
    with psycopg.connect(fleet.roles["owner"]) as conn:
        return conn.execute(sql, args).fetchall()


def store_now(fleet) -> float:
    """PostgreSQL's clock: the one the replicas stamp their rows by."""
    return owner_rows(fleet, "SELECT extract(epoch from clock_timestamp())::float8")[0][0]


def listed(url: str, since: float) -> dict[str, dict]:
    answer = httpx.get(f"{url}/admin/inputs", params={"since": since, "limit": 1000}, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return {row["request_id"]: row for row in answer.json()["inputs"]}


def send_to_a(fleet, n: int, seed: int) -> dict[str, Sample]:
    """`n` real test-split images answered by A, each found through B's list: request id -> sample."""
    since = store_now(fleet)
    results, _ = run(fleet.a, stream(samples(), n, phone_share=0.5, seed=seed), concurrency=2)
    assert [status for _, status, _ in results] == [200] * n, results
    sent = {body["request_id"]: sample for sample, _, body in results}
    wait_until(lambda: set(listed(fleet.b, since)) >= set(sent), timeout=FLUSH_WAIT_S, interval=0.25,
               message=lambda: f"B listing A's {n} inputs, lists {len(listed(fleet.b, since))}")
    return sent


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CLASSGUARD_ADMIN_TOKEN": TOKEN, **(env or {})})


def label(fleet, url: str, sent: dict[str, Sample], ids: list[str]) -> None:
    items = [{"request_id": rid, "label": str(sent[rid].label)} for rid in ids]
    answer = httpx.post(f"{url}/feedback", json={"items": items}, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [r["result"] for r in answer.json()["results"]] == ["recorded"] * len(ids), answer.text


def read_export(folder: Path) -> dict[str, dict]:
    return {line["request_id"]: line for line in map(json.loads, (folder / "manifest.jsonl").read_text().splitlines())}


def test_inputs_answered_by_a_are_listed_and_shown_through_b_as_the_uploaded_pixels(fleet):
    """Every image A answered is listed by B with A's answer and no label, B's totals count each
    answer as captured, and B serves each back as an image/png whose pixels equal the upload's."""
    since = store_now(fleet)
    sent = send_to_a(fleet, 6, seed=1)
    rows = listed(fleet.b, since)
    assert set(rows) == set(sent)
    predicted = {rid: body_label for rid, body_label in owner_rows(
        fleet, "SELECT request_id, label FROM predictions WHERE request_id = ANY(%s) AND replica = 'replica-0'",
        list(sent))}
    assert set(predicted) == set(sent)  # answered and logged by A, not B
    for rid, row in rows.items():
        assert row["reason"] == "all" and row["media_type"] == "image/png" and row["truth"] is None
        assert row["predicted"] == predicted[rid]
    totals = httpx.get(f"{fleet.b}/admin/inputs", params={"since": since, "limit": 1, "totals": 1}, headers=AUTH,
                       timeout=30).json()["totals"]
    assert totals == {"answers": 6, "captured": 6, "labelled": 0, "captured_and_labelled": 0}
    for rid, sample in sent.items():
        shown = httpx.get(f"{fleet.b}/admin/inputs/{rid}", headers=AUTH, timeout=30)
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
        assert np.array_equal(pixels(shown.content), pixels(sample.png)), rid


def test_labels_posted_to_b_export_through_b_into_class_folders_with_a_manifest(fleet, tmp_path):
    """Labels posted to B for some of A's inputs join them; `classguard dataset export --url B
    --labelled` writes exactly those inputs, pixel-equal, into a folder per true label, with a
    manifest line each (label, A's answer, path) and no unlabelled folder."""
    since = store_now(fleet)
    sent = send_to_a(fleet, 6, seed=2)
    labelled = sorted(sent)[:4]
    label(fleet, fleet.b, sent, labelled)
    out = tmp_path / "export"
    done = cli("dataset", "export", "--url", fleet.b, "--labelled", "--since", str(since), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "4 labelled inputs in class folders" in done.stdout, done.stdout
    manifest = read_export(out)
    assert set(manifest) == set(labelled)
    answered = dict(owner_rows(fleet, "SELECT request_id, label FROM predictions WHERE request_id = ANY(%s)",
                               labelled))
    for rid in labelled:
        line = manifest[rid]
        assert line["label"] == str(sent[rid].label) and line["answered"] == answered[rid]
        assert line["path"] == f"{sent[rid].label}/{rid}.png"
        assert np.array_equal(pixels((out / line["path"]).read_bytes()), pixels(sent[rid].png)), rid
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(manifest[r]["path"]
                                                                                       for r in labelled)
    assert not (out / "_unlabelled").exists()
    assert (out / "subgroups.csv").read_text().count("\n") == 1 + len(labelled)


def test_an_input_erased_through_b_is_gone_from_postgresql(fleet):
    """DELETE /admin/inputs/{id} through B erases one input A captured: PostgreSQL, read as the
    owner, has no `inputs` row for it (its logged answer stays), B answers 404 for it, and the
    other inputs are untouched."""
    sent = send_to_a(fleet, 3, seed=3)
    doomed, *kept = sorted(sent)
    erased = httpx.delete(f"{fleet.b}/admin/inputs/{doomed}", headers=AUTH, timeout=30)
    assert erased.status_code == 200 and erased.json() == {"request_id": doomed, "erased": 1}, erased.text
    assert owner_rows(fleet, "SELECT request_id FROM inputs WHERE request_id = %s", doomed) == []
    assert owner_rows(fleet, "SELECT COUNT(*) FROM predictions WHERE request_id = %s", doomed) == [(1,)]
    assert httpx.get(f"{fleet.b}/admin/inputs/{doomed}", headers=AUTH, timeout=30).status_code == 404
    assert httpx.delete(f"{fleet.b}/admin/inputs/{doomed}", headers=AUTH, timeout=30).status_code == 404
    remaining = owner_rows(fleet, "SELECT request_id FROM inputs WHERE request_id = ANY(%s)", list(sent))
    assert sorted(r[0] for r in remaining) == kept


def test_the_on_call_role_exports_but_its_erase_is_refused_in_one_line(fleet, tmp_path):
    """As the SELECT-only on-call role, `classguard dataset export --db` writes A's labelled
    inputs, while `classguard inputs erase --db ID` exits 2 with one line naming the refused
    privilege (no traceback, no database URL) and the row stays."""
    since = store_now(fleet)
    sent = send_to_a(fleet, 3, seed=4)
    label(fleet, fleet.b, sent, sorted(sent))
    oncall = fleet.roles["oncall"]
    out = tmp_path / "export"
    done = cli("dataset", "export", "--db", oncall, "--labelled", "--since", str(since), "-o", str(out))
    assert done.returncode == 0, done.stderr
    manifest = read_export(out)
    assert set(manifest) == set(sent)
    for rid, line in manifest.items():
        assert np.array_equal(pixels((out / line["path"]).read_bytes()), pixels(sent[rid].png)), rid

    target = sorted(sent)[0]
    refused = cli("inputs", "erase", target, "--db", oncall)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("classguard inputs: error:"), refused.stderr
    assert "permission denied" in lines[0] and "postgresql://" not in lines[0], lines[0]
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs WHERE request_id = %s", target) == [(1,)]


def test_a_time_range_erase_through_b_leaves_no_rows_in_the_range_then_none_at_all(fleet):
    """`classguard inputs erase --since S --until U --url B` erases every input A captured in
    [S, U] and none before S (PostgreSQL read as the owner); `--until` now then leaves the
    `inputs` table empty, while every logged answer stays."""
    before = send_to_a(fleet, 2, seed=5)
    since = store_now(fleet)
    during = send_to_a(fleet, 3, seed=6)
    until = store_now(fleet)
    answers = owner_rows(fleet, "SELECT COUNT(*) FROM predictions")[0][0]

    done = cli("inputs", "erase", "--since", repr(since), "--until", repr(until), "--url", fleet.b)
    assert done.returncode == 0 and "erased 3 captured inputs" in done.stdout, (done.stdout, done.stderr)
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs WHERE ts >= %s AND ts <= %s", since, until) == [(0,)]
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs WHERE request_id = ANY(%s)", list(during)) == [(0,)]
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs WHERE request_id = ANY(%s)", list(before)) == [(2,)]

    done = cli("inputs", "erase", "--until", repr(store_now(fleet)), "--url", fleet.b)
    assert done.returncode == 0 and done.stdout.startswith("erased "), (done.stdout, done.stderr)
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs") == [(0,)]
    assert owner_rows(fleet, "SELECT COUNT(*) FROM predictions")[0][0] == answers


def test_an_erase_through_b_at_once_after_a_answered_still_erases(fleet):
    """Inputs erased through B the moment A answered them, by id and by time range, are not in
    PostgreSQL once A has written those answers: an erasure does not lose a race with a flush."""
    since = store_now(fleet)
    results, _ = run(fleet.a, stream(samples(), 3, phone_share=0.5, seed=7), concurrency=3)
    by_id, *in_range = [body["request_id"] for _, _, body in results]
    httpx.delete(f"{fleet.b}/admin/inputs/{by_id}", headers=AUTH, timeout=30)
    httpx.delete(f"{fleet.b}/admin/inputs", params={"since": since}, headers=AUTH, timeout=30)
    ids = [by_id, *in_range]
    wait_until(lambda: owner_rows(fleet, "SELECT COUNT(*) FROM predictions WHERE request_id = ANY(%s)", ids)
               == [(3,)], timeout=FLUSH_WAIT_S, message="A writing its 3 answers")
    assert owner_rows(fleet, "SELECT COUNT(*) FROM inputs WHERE request_id = ANY(%s)", ids) == [(0,)]
