"""Fleet mode live with least-privilege roles (config/postgres-roles.sql, as documented): a real
`bentoml serve` replica connecting as the service role serves, logs and takes feedback on a
database `classguard db migrate` made as the owner; the on-call role reads it with the CLI;
a replica on a database never migrated says so and waits, and serves once migrate has run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import httpx
import psycopg
import pytest

from harness.fleet import Fleet
from harness.postgres import create_roles
from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
TOKEN = "roles-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIGRATE_HINT = "run `classguard db migrate`"


def fresh_roles(postgres) -> dict[str, str]:
    """A new database on the session's server with the documented roles; each role's URL."""
    name = f"roles_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return create_roles(postgres.url.rsplit("/", 1)[0] + f"/{name}")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def catalog(url: str) -> list[tuple]:
    """Every relation and function of the schema with its row version: any DDL changes one."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT relname, xmin::text FROM pg_class WHERE relnamespace = 'public'::regnamespace UNION ALL "
            "SELECT proname, xmin::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1").fetchall()


def replica_env(model_home, url: str, **more: str) -> dict[str, str]:
    return {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": TOKEN,
            "CLASSGUARD_FLEET__DATABASE_URL": url, "CLASSGUARD_FLEET__REPLICA": "replica-0", **more}


def test_a_replica_as_the_service_role_serves_and_on_call_reads_its_rows(model_home, postgres, tmp_path):
    """Migrated as the owner, a replica connecting as the service role becomes ready, answers
    /classify, logs every answer and records feedback in PostgreSQL without one DDL statement;
    as the on-call role, `classguard log list`, `log summary`, `replay --db` and `guardrails
    history --db` read those rows and exit 0."""
    urls = fresh_roles(postgres)
    done = cli("db", "migrate", "--database-url", urls["owner"])
    assert done.returncode == 0 and "to version 4" in done.stdout, done.stderr
    migrated = catalog(urls["owner"])
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": TOKEN}
    with Fleet(1, urls["service"], owner_url=urls["owner"], env=env, log_dir=tmp_path) as fleet:
        results, _ = run(fleet.urls, stream(holdout_samples(), 40, phone_share=0.3, seed=5))
        assert [status for _, status, _ in results] == [200] * 40
        ids = {body["request_id"] for _, _, body in results}
        labels = [{"request_id": body["request_id"], "label": str(s.label)} for s, _, body in results]
        answer = httpx.post(f"{fleet.urls[0]}/feedback", json={"items": labels}, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        with psycopg.connect(urls["oncall"]) as conn:
            wait_until(lambda: conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 40, timeout=15,
                       message="40 labels joined")
        listed = cli("log", "list", "--db", urls["oncall"], "--format", "json", "--limit", "100")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert {row["request_id"] for row in rows} == ids and {row["replica"] for row in rows} == {"replica-0"}
        for args in (("log", "summary", "--since", "1h"), ("replay", "allow_all", "--since", "1h"),
                     ("guardrails", "history")):
            done = cli(*args, "--db", urls["oncall"], env={"BENTOML_HOME": str(model_home)})
            assert done.returncode == 0 and done.stdout, (args, done.stderr)
    assert catalog(urls["owner"]) == migrated  # the replica ran no DDL
    log = (tmp_path / "replica-0.log").read_text()
    assert "permission denied" not in log and "Traceback" not in log


def test_a_replica_on_an_unmigrated_database_waits_then_serves_once_migrated(model_home, postgres, tmp_path):
    """As the service role on a database never migrated, a replica is not ready and logs one
    line naming `classguard db migrate` (no permission error, nothing created); once migrate
    runs as the owner, the same process becomes ready and answers, as pods started beside a
    rollout's migration job do."""
    urls = fresh_roles(postgres)
    log = tmp_path / "serve.log"
    server = Server(env=replica_env(model_home, urls["service"], CLASSGUARD_FLEET__STARTUP_WAIT_SECONDS="120"),
                    log_path=log, startup_timeout=150)
    started: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: started.append(_enter(server)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: log.exists() and MIGRATE_HINT in log.read_text(), timeout=60,
                   message="the replica saying what to run")
        assert not _ready(server)
        assert catalog(urls["owner"]) == []
        done = cli("db", "migrate", "--database-url", urls["owner"])
        assert done.returncode == 0, done.stderr
        thread.join(timeout=60)
        assert started == [None], started
        results, _ = run(server.url, stream(holdout_samples(), 5, phone_share=0.0, seed=1))
        assert [status for _, status, _ in results] == [200] * 5
    finally:
        if server.process is not None:
            server.stop()
    text = log.read_text()
    assert "permission denied" not in text and "Traceback" not in text
    assert text.count("Application startup failed") == 0  # waited: no worker restarted


def test_a_replica_on_an_unmigrated_database_fails_its_start_up_in_one_line(model_home, postgres, tmp_path):
    """With nobody migrating, the replica never becomes ready: after fleet.startup_wait_seconds
    its start-up fails with an ERROR line naming `classguard db migrate` (not PostgreSQL's
    permission error), and nothing is created in the database."""
    urls = fresh_roles(postgres)
    log = tmp_path / "serve.log"
    server = Server(env=replica_env(model_home, urls["service"], CLASSGUARD_FLEET__STARTUP_WAIT_SECONDS="2"),
                    log_path=log, startup_timeout=30)
    with pytest.raises(TimeoutError):
        server.__enter__()
    text = log.read_text()
    errors = [line for line in text.splitlines() if "[ERROR]" in line and MIGRATE_HINT in line]
    assert errors and "permission denied" not in text, text[-3000:]
    assert catalog(urls["owner"]) == []


def _enter(server: Server) -> BaseException | None:
    try:
        server.__enter__()
        return None
    except BaseException as exc:  # handed to the test's thread
        return exc


def _ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
