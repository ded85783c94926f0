"""The store's two engines behind one interface.

    SQLite      one host, the embedded default: a file (`log.path`), WAL mode.
    PostgreSQL  a fleet (`fleet.database_url`): every replica reads and writes the same tables.

Code above this module writes its SQL once, with `?` placeholders, against `connect()`'s
connection (`execute`, `transaction()`); the SQL that differs between engines (schema,
upserts, JSON functions) is in `store.sql_sqlite` and `store.sql_postgres`, reached as
`database.sql`. psycopg is imported only when a PostgreSQL URL is configured.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar

from store import sql_sqlite

log = logging.getLogger("classguard.store")
T = TypeVar("T")


# Store calls (lookups, feedback, swaps, flushes, chain syncs) run in threads of their own: a
# database that stops answering ties up these, never the default threads /classify decodes in.
_STORE_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="classguard-store")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in the store's threads, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_STORE_THREADS, functools.partial(fn, *args, **kwargs))


class StoreUnavailable(Exception):
    """The shared store cannot be reached (or failed in a way a retry may fix)."""


class SchemaNotReady(RuntimeError):
    """The fleet database's schema is missing or older than this version needs."""


class Database:
    backend: str
    sql: ModuleType
    transient: tuple[type[BaseException], ...]  # errors a retry may fix
    errors: tuple[type[BaseException], ...]  # every error of the driver

    def connect(self) -> Any:
        raise NotImplementedError

    def prepare(self, wait_seconds: float = 0.0) -> None:
        """Make sure the schema is there at start-up, so every later reader finds it. A store
        that cannot be reached, or a schema not migrated yet, is tried again for up to
        `wait_seconds` (a replica starting during a database restart, or beside the migration
        job of a rollout, waits for it rather than failing its start-up)."""
        deadline = time.monotonic() + wait_seconds
        waiting = False
        while True:
            try:
                conn = self.connect()
                try:
                    self.ready(conn)
                finally:
                    conn.close()
                return
            except self.transient as exc:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(f"{self.describe()} unreachable at start-up "
                                           f"({type(exc).__name__}); waited {wait_seconds:g} s") from None
                log.warning("store %s unreachable at start-up; trying again", self.describe())
            except SchemaNotReady as exc:
                if time.monotonic() >= deadline:
                    log.error("%s", exc)  # one line that says what to do, before the server's traceback
                    raise
                if not waiting:
                    log.warning("%s; waiting up to %g s for it", exc, wait_seconds)
                    waiting = True
            time.sleep(1.0)

    def ready(self, conn: Any) -> None:
        """Raise SchemaNotReady when the schema behind `conn` cannot serve this version."""

    def revive(self, conn: Any) -> Any:
        """`conn` if it is still good, else a new connection (raises when none can be made)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(connection, ...)` on a connection of its own, closed afterwards; an unreachable
        store raises StoreUnavailable."""
        try:
            conn = self.connect(schema=False)
        except self.errors as exc:
            raise StoreUnavailable(f"{self.backend} store unreachable: {type(exc).__name__}") from exc
        try:
            return fn(conn, *args, **kwargs)
        except self.transient as exc:
            raise StoreUnavailable(f"{self.backend} store failed: {type(exc).__name__}") from exc
        finally:
            conn.close()


class SqliteDatabase(Database):
    backend = "sqlite"
    sql = sql_sqlite
    transient = sql_sqlite.TRANSIENT
    errors = sql_sqlite.ERRORS

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path, self.busy_timeout = Path(path), busy_timeout
        self._inode: int | None = None

    def connect(self, *, schema: bool = True) -> sql_sqlite.Connection:
        if not schema and not self.path.exists():
            raise sqlite3.OperationalError(f"no prediction log at {self.path}")
        conn = sql_sqlite.connect(self.path, self.busy_timeout, schema=schema)
        if schema:
            self._inode = os.stat(self.path).st_ino
        return conn

    def revive(self, conn: sql_sqlite.Connection) -> sql_sqlite.Connection:
        """A log file deleted (or moved away) while serving would swallow every later write into
        its unlinked inode, counted as written: open the file at the configured path again."""
        try:
            if os.stat(self.path).st_ino == self._inode:
                return conn
        except OSError:
            pass
        log.warning("prediction log %s was deleted or replaced; opening it again", self.path)
        fresh = self.connect()
        conn.close()
        return fresh

    def describe(self) -> str:
        return f"sqlite:{self.path}"


class PostgresDatabase(Database):
    """Writers (the log's flusher, the chain poll, the window exchange) keep a connection each;
    lookups and feedback reuse up to `readers` idle connections (a dropped one is replaced on
    the spot, so a database that restarted costs no failed request)."""

    backend = "postgresql"
    readers = 2  # idle connections kept per worker for lookups and feedback

    def __init__(self, url: str, *, replica: str, connect_timeout: float = 3.0,
                 statement_timeout: float = 5.0, migrate: bool = False) -> None:
        from store import sql_postgres

        self.sql = sql_postgres
        self.transient = sql_postgres.transient_errors()
        self.errors = sql_postgres.all_errors()
        self.url, self.replica = url, replica
        self.connect_timeout, self.statement_timeout = connect_timeout, statement_timeout
        self.migrates = migrate
        self._idle: list[Any] = []
        self._readers_lock = threading.Lock()

    def connect(self, *, schema: bool = True) -> Any:
        # no DDL here, whatever `schema` says: PostgreSQL checks CREATE on the schema even for
        # CREATE TABLE IF NOT EXISTS, which the service and on-call roles do not have. The
        # schema is the owner role's (`migrate`); prepare() checks its version once.
        return self.sql.connect(self.url, connect_timeout=self.connect_timeout,
                                statement_timeout=self.statement_timeout, application=f"classguard {self.replica}")

    def ready(self, conn: Any) -> None:
        """The schema's version, read with one SELECT; a replica allowed to (`fleet.migrate`)
        migrates first."""
        if self.migrates:
            self.sql.migrate(conn)
        found = self.sql.schema_version(conn)
        if found is None or found < self.sql.SCHEMA_VERSION:
            has = "no classguard schema" if found is None else f"schema version {found}"
            raise SchemaNotReady(f"{self.describe()} has {has}; this classguard needs version "
                                 f"{self.sql.SCHEMA_VERSION}: run `classguard db migrate` as the database's "
                                 "owner role first (README, \"Database roles\")")

    def migrate(self) -> str:
        """`classguard db migrate`: bring the schema to this version's; what was done, in a line."""
        conn = self.connect()
        try:
            found, applied = self.sql.migrate(conn)
        finally:
            conn.close()
        if not applied:
            newer = " (newer than this classguard's: nothing to do)" if found > self.sql.SCHEMA_VERSION else ""
            return f"{self.describe()}: schema already at version {found}{newer}; nothing changed"
        was = "no classguard schema" if found is None else f"version {found}"
        return (f"{self.describe()}: schema migrated from {was} to version {applied[-1]} "
                f"(applied {', '.join(map(str, applied))})")

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        conn = self._borrow()
        try:
            result = fn(conn, *args, **kwargs)
        except self.transient as exc:
            conn.close()
            raise StoreUnavailable(f"{self.backend} store failed: {type(exc).__name__}") from exc
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)
        return result

    def _borrow(self) -> Any:
        """An idle reader connection that still answers, or a new one. An idle connection is
        checked first (one round trip) rather than `fn` retried on failure: a retried write
        whose commit had succeeded would answer differently the second time. When one idle
        connection is dead (the server restarted), they all are: all are dropped.
        A pool library was tried first: psycopg_pool backs off exponentially while the server
        is away and took 27.5 s to serve again after a 30 s outage; this serves at once."""
        with self._readers_lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            try:
                idle.execute("SELECT 1")
                return idle
            except self.errors:
                idle.close()
                with self._readers_lock:
                    dead, self._idle = self._idle, []
                for conn in dead:
                    conn.close()
        try:
            return self.connect(schema=False)
        except self.errors as exc:
            raise StoreUnavailable(f"{self.backend} store unreachable: {type(exc).__name__}") from exc

    def _give_back(self, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        with self._readers_lock:
            if (not conn.broken and len(self._idle) < self.readers
                    and conn.raw.info.transaction_status == TransactionStatus.IDLE):
                self._idle.append(conn)
                return
        conn.close()

    def revive(self, conn: Any) -> Any:
        if conn is not None and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        return self.connect()

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"


def dialect_of(conn: Any) -> ModuleType:
    """The SQL module that speaks `conn`'s engine."""
    if isinstance(conn, sqlite3.Connection):
        return sql_sqlite
    from store import sql_postgres

    return sql_postgres


def open_database(settings: Any) -> Database:
    """The configured store: PostgreSQL when `fleet.database_url` is set, else the SQLite log file."""
    fleet = settings.fleet
    if fleet.enabled:
        return PostgresDatabase(fleet.database_url.get_secret_value(), replica=fleet.replica_name(),
                                connect_timeout=fleet.connect_timeout_seconds,
                                statement_timeout=fleet.statement_timeout_seconds, migrate=fleet.migrate)
    return SqliteDatabase(settings.log.path, settings.log.busy_timeout_seconds)
