"""Where the active guardrail chain is shared between workers, and the audit log of changes.

On one host: a JSON file in the per-start runtime directory (atomic rename) that every worker
polls by modification time, a file lock that makes swaps one at a time, and a JSON-lines audit
log. A swap is `with store.locked(): ...; store.publish(record, audit_entry)`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from service import metrics

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
