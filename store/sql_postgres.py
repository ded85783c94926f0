"""Everything PostgreSQL-specific of the store: schema, upserts, JSON functions, the fleet tables.

Fleet mode (`fleet.database_url`). The client is psycopg 3, used directly: the store's SQL is
a dozen statements, each tuned for its engine (multi-row inserts, `ON CONFLICT`, array
arithmetic for the monitor windows), which a query builder would only hide. Shared SQL is
written with `?` placeholders; `Connection.execute` turns them into psycopg's `%s`.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

SCHEMA_LOCK = 0x636C617373  # pg_advisory_xact_lock key: migrations started together run once
SCHEMA_VERSION = 4  # the schema this code needs; `classguard db migrate` brings a database to it

# Version 1: every table, written so that it also brings up to date a database made by a release
# before versioning (those created the tables from every connection: the tables without a
# classguard_schema row, perhaps without a later column). The replicas of those releases checked
# a table `schema_version` and refuse a version above 1 there: it is left alone.
SCHEMA = """
CREATE TABLE IF NOT EXISTS classguard_schema (version integer PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS predictions (
    request_id  text PRIMARY KEY,
    correlation_id text,
    ts          double precision NOT NULL,
    subgroup    text NOT NULL,
    model       text NOT NULL,
    model_version text NOT NULL,
    label       text,
    abstained   integer NOT NULL,
    confidence  double precision NOT NULL,
    flagged     integer NOT NULL,
    flags       text NOT NULL,
    guardrails  text NOT NULL,
    top_k       text NOT NULL,
    probs       bytea NOT NULL,
    config_hash text NOT NULL,
    image_sha256 text,
    replica     text,
    region      text
);
-- added in place, nullable: replicas of the version before keep writing (their rows have none)
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS region text;
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_subgroup_ts ON predictions (subgroup, ts);
CREATE INDEX IF NOT EXISTS predictions_flagged_ts ON predictions (flagged, ts);
CREATE INDEX IF NOT EXISTS predictions_correlation ON predictions (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS feedback (
    request_id  text PRIMARY KEY,
    label       text NOT NULL,
    ts          double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS held_feedback (
    key         text PRIMARY KEY,
    label       text NOT NULL,
    ts          double precision NOT NULL
);
-- periodic work the whole fleet needs done once per interval, not once per replica
CREATE TABLE IF NOT EXISTS maintenance (
    task        text PRIMARY KEY,
    last_run    double precision NOT NULL
);
-- the guardrail chain: every installed chain is a row; the active one is the newest
CREATE TABLE IF NOT EXISTS guardrail_chain (
    id          bigserial PRIMARY KEY,
    ts          double precision NOT NULL,
    source      text NOT NULL,
    replica     text NOT NULL,
    pid         integer NOT NULL,
    profile     text NOT NULL,
    hash        text NOT NULL,
    chain       text NOT NULL,
    previous_id bigint,
    previous_profile text,
    previous_hash text
);
-- monitor windows: each worker's own counts per time bucket (absolute, so a retried write
-- changes nothing), and the fleet's totals, kept up to date by the same statement
CREATE TABLE IF NOT EXISTS window_part (
    layout      text NOT NULL,
    worker      text NOT NULL,
    bucket      bigint NOT NULL,
    counts      float8[] NOT NULL,
    PRIMARY KEY (layout, worker, bucket)
);
CREATE INDEX IF NOT EXISTS window_part_bucket ON window_part (layout, bucket);
CREATE TABLE IF NOT EXISTS window_total (
    layout      text NOT NULL,
    bucket      bigint NOT NULL,
    counts      float8[] NOT NULL,
    PRIMARY KEY (layout, bucket)
);
CREATE OR REPLACE FUNCTION classguard_add(a float8[], b float8[]) RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i) FROM unnest(a, b) WITH ORDINALITY t(x, y, i) $$;
CREATE OR REPLACE FUNCTION classguard_sub(a float8[], b float8[]) RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT array_agg(coalesce(x, 0) - coalesce(y, 0) ORDER BY i) FROM unnest(a, b) WITH ORDINALITY t(x, y, i) $$;
"""

# Version 2: captured input images (capture.policy), a row per kept input beside its prediction.
INPUTS = """
CREATE TABLE IF NOT EXISTS inputs (
    request_id  text PRIMARY KEY,
    ts          double precision NOT NULL,
    model       text NOT NULL,
    subgroup    text NOT NULL,
    region      text,
    reason      text NOT NULL,
    media_type  text,
    original    bytea,
    thumbnail   bytea NOT NULL,
    bytes       integer NOT NULL
);
CREATE INDEX IF NOT EXISTS inputs_ts ON inputs (ts);
-- erasures, remembered for a while: a write of what they named, still queued elsewhere, is refused
CREATE TABLE IF NOT EXISTS erased_inputs (
    request_id  text PRIMARY KEY,
    ts          double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS erased_ranges (
    id          bigserial PRIMARY KEY,
    since       double precision NOT NULL,
    until       double precision NOT NULL,
    ts          double precision NOT NULL
);
"""

# Version 3: new regions found in novel traffic (store/new_regions.py), shared by the fleet.
NEW_REGIONS = """
CREATE TABLE IF NOT EXISTS new_regions (
    layout   text NOT NULL,
    slot     integer NOT NULL,
    centre   bytea NOT NULL,
    radius   double precision NOT NULL,
    born     double precision NOT NULL,
    members  integer NOT NULL,
    replica  text NOT NULL,
    PRIMARY KEY (layout, slot)
);
"""

# Version 4: shadow models' answers (the evidence of automatic actions) and the actions' ledger.
AUTOMATION = """
CREATE TABLE IF NOT EXISTS shadow_answers (
    request_id  text NOT NULL,
    model       text NOT NULL,
    label       text,
    ts          double precision NOT NULL,
    PRIMARY KEY (request_id, model)
);
CREATE INDEX IF NOT EXISTS shadow_answers_ts ON shadow_answers (ts);
CREATE TABLE IF NOT EXISTS alert_actions (
    id          bigserial PRIMARY KEY,
    ts          double precision NOT NULL,
    key         text NOT NULL UNIQUE,
    rule        text NOT NULL,
    alertname   text NOT NULL,
    subgroup    text NOT NULL,
    status      text NOT NULL,
    outcome     text NOT NULL,
    reason      text NOT NULL,
    evidence    text NOT NULL,
    chain_hash  text,
    base_hash   text,
    base_profile text,
    guardrails  text,
    replica     text NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_actions_rule_ts ON alert_actions (rule, ts);
"""

# (version, DDL bringing the schema from the version before to it), oldest first. A new version
# only adds (tables, nullable columns, indexes), so replicas of the version before keep serving
# on it through a rolling update: migrate first, then roll the replicas.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, SCHEMA), (2, INPUTS), (3, NEW_REGIONS), (4, AUTOMATION))

# -- query fragments (one `?` each) -------------------------------------------------------------
HAS_FLAG = "EXISTS (SELECT 1 FROM jsonb_array_elements_text(flags::jsonb) AS f(v) WHERE f.v = ?)"
HAS_ACTION = "EXISTS (SELECT 1 FROM jsonb_array_elements(guardrails::jsonb) AS g(v) WHERE g.v->>'action' = ?)"
SUMMARY = """SELECT subgroup, COALESCE(f.v, '(none)') AS flag, COUNT(*)
             FROM predictions LEFT JOIN LATERAL jsonb_array_elements_text(flags::jsonb) AS f(v) ON true
             WHERE ts >= ? GROUP BY subgroup, flag ORDER BY subgroup, COUNT(*) DESC"""
ROWS_PER_STATEMENT = 512  # 512 x 18 parameters, under PostgreSQL's 65,535 per statement


@functools.lru_cache(maxsize=16)
def insert_predictions(columns: tuple[str, ...], n_rows: int) -> str:
    # a row written again (a flush retried after a lost commit acknowledgement) is kept once
    row = f"({', '.join('?' * len(columns))})"
    return (f"INSERT INTO predictions ({', '.join(columns)}) VALUES {', '.join([row] * n_rows)} "
            "ON CONFLICT (request_id) DO NOTHING")


UPSERT_ERASED_INPUT = ("INSERT INTO erased_inputs (request_id, ts) VALUES (?, ?) "
                       "ON CONFLICT (request_id) DO UPDATE SET ts = excluded.ts")


def insert_inputs(columns: tuple[str, ...], condition: str) -> str:
    """One input, written unless `condition` (its own `?`s follow the columns') is false; written
    again (a retried flush): kept once. Typed: a SELECT's parameters are not typed by the columns."""
    types = {"ts": "double precision", "original": "bytea", "thumbnail": "bytea", "bytes": "integer"}
    values = ", ".join(f"?::{types.get(c, 'text')}" for c in columns)
    return (f"INSERT INTO inputs ({', '.join(columns)}) SELECT {values} WHERE {condition} "
            "ON CONFLICT (request_id) DO NOTHING")


def transient_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.OperationalError, psycopg.InterfaceError)


def all_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


def write_conflicts() -> tuple[type[BaseException], ...]:
    """Errors that abort a transaction only because another one ran at the same moment: running
    it again can succeed (they are OperationalErrors, so otherwise read as the store away)."""
    from psycopg import errors

    return (errors.DeadlockDetected, errors.SerializationFailure)


@functools.lru_cache(maxsize=64)
def _qmark(sql: str) -> str:
    # no shared statement contains a literal '?' or '%' other than as placeholders
    return sql.replace("%", "%%").replace("?", "%s")


class Connection:
    """A psycopg connection that speaks the store's dialect-neutral SQL (`?` placeholders) and
    its transaction idiom. Autocommit outside `transaction()`: reads leave no open transaction."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.raw.execute(_qmark(sql), args)

    def native(self, sql: str, args: Any = ()) -> Any:
        """A statement in psycopg's own placeholders (`%s`, `%(name)s`)."""
        return self.raw.execute(sql, args)

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator["Connection"]:
        # `exclusive` is SQLite's write lock; PostgreSQL's row locks and ON CONFLICT do that work
        with self.raw.transaction():
            yield self

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken

    def close(self) -> None:
        self.raw.close()


def connect_kwargs(*, connect_timeout: float, statement_timeout: float, application: str) -> dict[str, Any]:
    """Every connection: autocommit outside `transaction()`, bounded waits, named for pg_stat_activity.
    statement_timeout bounds the server's work; the TCP settings bound the client's wait on a
    server that stopped answering without closing the connection (a partition): keepalives
    find a silent peer within about connect_timeout + 3 s, tcp_user_timeout a send never acknowledged."""
    wait = max(1, round(connect_timeout))
    return {"autocommit": True, "connect_timeout": wait, "application_name": application[:63],
            "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
            "keepalives": 1, "keepalives_idle": wait, "keepalives_interval": 1, "keepalives_count": 3,
            "tcp_user_timeout": int((statement_timeout + wait) * 1000)}


def connect(url: str, **kwargs: Any) -> Connection:
    import psycopg

    return Connection(psycopg.connect(url, **connect_kwargs(**kwargs)))


def schema_version(conn: Connection) -> int | None:
    """The database's schema version; None when `classguard db migrate` never ran on it. Reads
    only: the service and on-call roles may call it."""
    if conn.native("SELECT to_regclass('classguard_schema')").fetchone()[0] is None:
        return None
    return conn.native("SELECT max(version) FROM classguard_schema").fetchone()[0]


def migrate(conn: Connection) -> tuple[int | None, list[int]]:
    """Bring the schema up to SCHEMA_VERSION, once however many migrations start at the same
    moment; (the version found, the versions applied). The owner role's work: DDL needs CREATE
    on the schema, which the service role does not have."""
    with conn.transaction():
        conn.native("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        found = schema_version(conn)
        applied = [version for version, _ in MIGRATIONS if found is None or version > found]
        for version, ddl in MIGRATIONS:
            if version in applied:
                conn.native(ddl)
                conn.native("INSERT INTO classguard_schema (version) VALUES (%s)", (version,))
    return found, applied


if __name__ == "__main__":  # `classguard db migrate` where only the Bento's packages are (the image)
    import os
    import sys

    from store.database import PostgresDatabase

    url = os.environ.get("CLASSGUARD_FLEET__DATABASE_URL")
    if not url:
        sys.exit("set CLASSGUARD_FLEET__DATABASE_URL to the owner role's postgresql:// URL")
    print(PostgresDatabase(url, replica="migrate").migrate())
