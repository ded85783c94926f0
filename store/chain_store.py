"""Where the active guardrail chain is shared between workers, and the audit log of changes.

A swap is `with store.locked(): ...; store.publish(record, audit_entry)`; every worker polls
`changed()`. Two stores, one interface:

- `ChainStore`, one host: a JSON file in the per-start runtime directory (atomic rename) that
  every worker polls by modification time, a file lock that makes swaps one at a time, and a
  JSON-lines audit log.
- `FleetChainStore`, a fleet: one table in PostgreSQL, a row per installed chain (the newest is
  active, the rows are the audit log, each naming the row it replaced, whichever replica wrote
  it), and a transaction-scoped advisory lock that makes swaps one at a time across replicas.
  Rows are ordered by their id, which the database assigns under that lock, and stamped by the
  database's clock: no replica's clock decides which chain is newest or when it was installed.
  A store that cannot be reached refuses the swap (StoreUnavailable): nothing is installed
  anywhere.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from core import metrics
from store.clock import store_now
from store.database import Database, StoreUnavailable

log = logging.getLogger("classguard.guardrails")


class ChainStore:
    def __init__(self, shared_dir: Path, audit_log: Path) -> None:
        self.shared_file = Path(shared_dir) / "guardrails.json"
        self.audit_log = Path(audit_log)
        self._seen: tuple[int, int] | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One swap at a time across the workers sharing this store."""
        with open(self.shared_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def is_empty(self) -> bool:
        return not self.shared_file.exists()

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` entries of the audit log, newest first (what FleetChainStore's gives)."""
        from collections import deque

        if not self.audit_log.exists():
            return []
        with open(self.audit_log) as f:
            lines = deque(f, maxlen=limit)
        rows = []
        for line in reversed(lines):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash mid-write
        return rows

    def publish(self, record: dict[str, Any], audit_entry: dict[str, Any]) -> None:
        """Make `record` the shared chain and append `audit_entry` to the audit log (under the lock).
        A failed audit write is counted, never fatal: the chain is already active."""
        tmp = self.shared_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.shared_file)
        self._seen = self._version()
        try:
            self.audit_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.audit_log, "a") as f:
                f.write(json.dumps(audit_entry) + "\n")
        except OSError:
            metrics.GUARDRAIL_SWAPS.labels("audit_failed").inc()
            log.exception("could not write the guardrail audit log %s", self.audit_log)

    def changed(self) -> dict[str, Any] | None:
        """The shared record if it changed since this worker last published or read it; else None."""
        try:
            version = self._version()
        except FileNotFoundError:
            return None
        if version == self._seen:
            return None
        self._seen = version
        return json.loads(self.shared_file.read_text())

    def retry(self) -> None:
        """Forget the last version seen, so the next `changed()` returns the shared record again
        (a worker that could not install it keeps trying rather than serving its old chain for good)."""
        self._seen = None

    def _version(self) -> tuple[int, int]:
        # every publish renames a new file into place: a new inode, even when two publishes
        # fall in the same tick of the file system's clock (the time alone missed those)
        stat = self.shared_file.stat()
        return stat.st_ino, stat.st_mtime_ns


CHAIN_LOCK = 0x6775617264  # pg_advisory_xact_lock key of swaps
CHAIN_COLUMNS = ("id", "ts", "source", "replica", "pid", "profile", "hash", "chain", "previous_id",
                 "previous_profile", "previous_hash")


class FleetChainStore:
    def __init__(self, database: Database, replica: str) -> None:
        self.db, self.replica = database, replica
        self._poll = None  # this worker's polling connection, opened on first use
        self._swap = threading.local()  # the connection and row of a swap in progress (inside locked())
        self._seen: int | None = None
        self._reachable = True
        self._poll_lock = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One swap at a time across the fleet: a transaction holding an advisory lock, in which
        `publish` writes. Raises StoreUnavailable when the store cannot be reached; then the
        swap may or may not have been stored (a commit whose acknowledgement was lost), so this
        worker forgets what it has seen and reads the store again at its next sync."""
        try:
            conn = self.db.connect(schema=False)
        except self.db.errors as exc:
            raise StoreUnavailable(f"the fleet store is unreachable ({type(exc).__name__})") from None
        swap = self._swap
        swap.conn, swap.row = conn, None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(?)", (CHAIN_LOCK,))
                yield
        except self.db.transient as exc:
            self.retry()
            raise StoreUnavailable(f"the fleet store failed during the swap ({type(exc).__name__}); if it "
                                   "was stored, every replica installs it at its next sync") from None
        else:
            if swap.row is not None:
                self._seen = swap.row  # committed: this worker installs it itself
        finally:
            swap.conn = swap.row = None
            conn.close()

    def is_empty(self) -> bool:
        return self._latest(self._swap.conn) is None

    def publish(self, record: dict[str, Any], audit_entry: dict[str, Any]) -> None:
        """Insert the chain as the newest row (inside `locked()`): the fleet's active chain and
        its audit entry at once, linked to the row it replaces, stamped by the database's clock."""
        conn = self._swap.conn
        previous = self._latest(conn)
        row = conn.execute(
            "INSERT INTO guardrail_chain (ts, source, replica, pid, profile, hash, chain, previous_id, "
            "previous_profile, previous_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (store_now(conn), audit_entry["source"], self.replica, audit_entry["pid"], record["profile"],
             record["hash"], json.dumps(record["chain"]), previous["id"] if previous else None,
             previous["profile"] if previous else None, previous["hash"] if previous else None)).fetchone()
        self._swap.row = row[0]

    def changed(self) -> dict[str, Any] | None:
        """The newest row if it is not the one this worker last published or read; None when
        unchanged or when the store cannot be reached (then the chain in use stays)."""
        with self._poll_lock:
            try:
                self._poll = self.db.revive(self._poll)
                latest = self._latest(self._poll)
            except self.db.errors:
                if self._reachable:
                    log.warning("the fleet store is unreachable; serving the chain in use until it returns")
                self._reachable = False
                metrics.STORE_ERRORS.labels("chain").inc()
                return None
        if not self._reachable:
            log.warning("the fleet store is reachable again")
            self._reachable = True
        if latest is None or latest["id"] == self._seen:
            return None
        self._seen = latest["id"]
        return {**latest, "time": latest["ts"], "chain": json.loads(latest["chain"])}

    def retry(self) -> None:
        self._seen = None

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` rows, newest first: the fleet's audit log."""
        from store.prediction_log import check_limit

        check_limit(limit)

        def read(conn) -> list[dict[str, Any]]:
            rows = conn.execute(f"SELECT {', '.join(CHAIN_COLUMNS)} FROM guardrail_chain ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()
            return [{**dict(zip(CHAIN_COLUMNS, r)), "chain": json.loads(r[7])} for r in rows]

        return self.db.read(read)

    @staticmethod
    def _latest(conn) -> dict[str, Any] | None:
        row = conn.execute(f"SELECT {', '.join(CHAIN_COLUMNS)} FROM guardrail_chain ORDER BY id DESC LIMIT 1").fetchone()
        return dict(zip(CHAIN_COLUMNS, row)) if row else None
