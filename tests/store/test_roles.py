"""Least privilege on a real PostgreSQL, with the roles config/postgres-roles.sql creates (the
file as documented): `classguard db migrate` as the owner, every serving path as the service
role (no DDL), the CLI's reads as the SELECT-only on-call role."""

import numpy as np
import psycopg
import pytest

from core.config import LogConfig
from core.ids import time_ordered_id
from harness.postgres import create_roles
from ops.cli import main
from store import feedback
from store.chain_store import FleetChainStore
from store.clock import store_now
from store.database import PostgresDatabase, SchemaNotReady
from store.fleet_windows import FleetWindows
from store.prediction_log import PredictionLog, get
from tests.log_rows import record_one

LABELS = {"base": [str(d) for d in range(10)]}


@pytest.fixture
def roles(pg_url):
    """A fresh database with the documented roles: {"owner": url, "service": url, "oncall": url}."""
    return create_roles(pg_url)


def migrate(url: str, capsys) -> tuple[int, str]:
    code = main(["db", "migrate", "--database-url", url])
    out = capsys.readouterr()
    return code, out.out + out.err


def catalog(url: str) -> list[tuple]:
    """Every relation and function of the schema with its row version: any DDL changes one."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT relname, xmin::text FROM pg_class WHERE relnamespace = 'public'::regnamespace UNION ALL "
            "SELECT proname, xmin::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1").fetchall()


def response(i: int) -> dict:
    return {"request_id": f"r{i}", "correlation_id": None, "label": "3", "confidence": 0.5, "abstained": False,
            "flags": ["low_confidence"] if i % 2 else [], "top_k": [{"label": "3", "probability": 0.5}],
            "guardrails": [{"guardrail": "g", "action": "allow", "reason": "x"}]}


def serve_as(url: str) -> PostgresDatabase:
    """What a replica does with its store, as the role of `url`: checks the schema, writes log
    rows (retention included), feedback (held, then joined), a window exchange and a chain swap."""
    db = PostgresDatabase(url, replica="svc")
    db.prepare()
    log = PredictionLog(LogConfig(retention_check_seconds=1e-6, max_rows=5), db, replica="svc")
    log.after_write = lambda conn: feedback.join_held(conn, LABELS, [])
    early = time_ordered_id()
    assert db.read(feedback.record, [(early, "3")], LABELS, [])[0]["result"] == "held"
    for i in range(8):
        record_one(log, response(i), np.full(10, 0.1), "h", "base:v1", "capture=phone")
    record_one(log, {**response(9), "request_id": early}, np.full(10, 0.1), "h", "base:v1", "capture=phone")
    assert log.flush() == 9
    assert not log.failing
    assert db.read(feedback.record, [("r7", "3")], LABELS, [])[0]["result"] == "recorded"
    windows = FleetWindows(db, layout="L1", worker="svc-1", bucket_s=1.0, n_buckets=300)
    bucket = int(db.read(store_now))  # the live window is by the database's clock
    totals = windows.exchange({bucket: np.ones(4)})
    assert totals[bucket].tolist() == [1.0] * 4
    store = FleetChainStore(db, "svc")
    with store.locked():
        store.publish({"time": 1.0, "profile": "p", "hash": "h1", "chain": []}, {"source": "test", "pid": 1})
    assert store.history()[0]["hash"] == "h1"
    return db


def test_migrate_as_owner_creates_the_schema_and_a_second_run_changes_nothing(roles, capsys):
    """`classguard db migrate` as the owner role creates every table at version 4, owned by that
    role, and says so; run again it says nothing changed, and no table or function changed."""
    code, said = migrate(roles["owner"], capsys)
    assert code == 0 and "from no classguard schema to version 4" in said, said
    created = catalog(roles["owner"])
    with psycopg.connect(roles["owner"]) as conn:
        owners = dict(conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"))
    assert set(owners) == {"classguard_schema", "predictions", "feedback", "held_feedback", "maintenance",
                           "guardrail_chain", "window_part", "window_total", "inputs", "erased_inputs",
                           "erased_ranges", "new_regions", "shadow_answers", "alert_actions"}
    assert set(owners.values()) == {"classguard_owner"}
    code, said = migrate(roles["owner"], capsys)
    assert code == 0 and "already at version 4; nothing changed" in said, said
    assert catalog(roles["owner"]) == created


def test_migrate_upgrades_a_database_of_the_shape_before_versions(roles, capsys):
    """A database as releases before schema versions left it (no version table, no `region`
    column, rows in it): a replica refuses it, naming the command; migrate adds what is missing
    and keeps the rows; the replica then starts."""
    assert migrate(roles["owner"], capsys)[0] == 0
    with psycopg.connect(roles["owner"], autocommit=True) as conn:
        conn.execute("DROP TABLE classguard_schema")
        conn.execute("ALTER TABLE predictions DROP COLUMN region")
        conn.execute("INSERT INTO predictions (request_id, ts, subgroup, model, model_version, abstained, confidence, "
                     "flagged, flags, guardrails, top_k, probs, config_hash) "
                     "VALUES ('old', 1, 's', 'm', 'v', 0, 0.9, 0, '[]', '[]', '[]', '', 'h')")
    with pytest.raises(SchemaNotReady, match="classguard db migrate"):
        PostgresDatabase(roles["service"], replica="svc").prepare()
    code, said = migrate(roles["owner"], capsys)
    assert code == 0 and "to version 4" in said, said
    db = PostgresDatabase(roles["service"], replica="svc")
    db.prepare()
    assert db.read(get, "old")["region"] is None


def test_every_serving_path_works_as_the_service_role(roles, capsys):
    """After migrate, the service role (no CREATE on the schema) writes the log, runs retention,
    holds and joins feedback, exchanges monitor windows (the array functions) and swaps the
    guardrail chain (the sequence), without one DDL statement or error."""
    assert migrate(roles["owner"], capsys)[0] == 0
    before = catalog(roles["owner"])
    db = serve_as(roles["service"])
    assert db.read(lambda c: c.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]) == 2
    assert catalog(roles["owner"]) == before


def test_the_service_role_cannot_create_the_schema(roles, capsys):
    """On an empty database, migrate as the service role is refused by PostgreSQL (no CREATE on
    the schema) in one line, exit 2; a replica as that role says to run `classguard db migrate`."""
    code, said = migrate(roles["service"], capsys)
    assert code == 2 and "permission denied for schema public" in said and "Traceback" not in said, said
    with pytest.raises(SchemaNotReady, match="has no classguard schema.*run `classguard db migrate`"):
        PostgresDatabase(roles["service"], replica="svc").prepare()


def test_a_replica_with_fleet_migrate_as_owner_migrates_at_start(roles):
    """fleet.migrate on, the owner role's URL: the first replica's start-up creates the schema
    (the one-host and trial path); the service role can then serve."""
    PostgresDatabase(roles["owner"], replica="first", migrate=True).prepare()
    serve_as(roles["service"])


def test_the_cli_reads_as_the_on_call_role_and_its_writes_are_refused(roles, capsys):
    """As the SELECT-only on-call role: log list, show, summary and confusion and guardrails
    history exit 0 with the service's rows; an INSERT is refused by PostgreSQL."""
    assert migrate(roles["owner"], capsys)[0] == 0
    serve_as(roles["service"])
    oncall = roles["oncall"]
    for argv, shows in ((["log", "list", "--format", "json"], '"r7"'), (["log", "show", "r7"], '"capture=phone"'),
                        (["log", "summary", "--since", "0"], "low_confidence"), (["log", "confusion"], "2 answers"),
                        (["guardrails", "history"], '"h1"')):
        code = main([*argv, "--db", oncall])
        out = capsys.readouterr()
        assert code == 0 and shows in out.out, (argv, out.err)
    with psycopg.connect(oncall) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO feedback VALUES ('r1', '3', 1)")


def test_migrate_as_the_on_call_role_is_refused_in_one_line(roles, capsys):
    """On an empty database, `classguard db migrate` as the on-call role: PostgreSQL refuses the
    DDL, the CLI says so in one line, exit 2, and nothing is created."""
    code, said = migrate(roles["oncall"], capsys)
    assert code == 2 and "permission denied for schema public" in said and "Traceback" not in said, said
    assert catalog(roles["owner"]) == []


def test_the_cli_on_an_unmigrated_database_names_the_command(roles, capsys):
    """`classguard log list` as on-call on a database never migrated: exit 2 and one line that
    says to run `classguard db migrate`, no traceback, nothing created."""
    code = main(["log", "list", "--db", roles["oncall"]])
    err = capsys.readouterr().err
    assert code == 2 and "run `classguard db migrate`" in err and "Traceback" not in err, err
    assert catalog(roles["owner"]) == []
