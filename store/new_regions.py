"""Where the new regions found in novel traffic are kept, so every worker and replica names a
group the same way (monitors/new_regions.py finds them; runtime/new_regions.py asks here).

`claim(found)` takes a worker's candidates one at a time under a lock: a candidate whose centre
lies within an existing region's radius is that region (another worker found the same group
first) and is dropped; the others get the lowest free slots. `load()` gives every region of
this layout (one primary model version: regions live in its embedding space). `retire(slot)`
frees a slot (on-call's lever when the slots are full of groups that stopped coming, or that a
client made on purpose); a group still arriving forms again at a later search. Two stores,
one interface:

- `LocalNewRegionStore`, one host: a JSON file in the per-start runtime directory, written by
  atomic rename under a file lock, like the guardrail chain's;
- `FleetNewRegionStore`, a fleet: the `new_regions` table in PostgreSQL (schema version 3),
  claims serialised by a transaction-scoped advisory lock, each region stamped with the
  database's clock: no replica's clock says when a group appeared.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from monitors.new_regions import NEW_SLOTS, NewRegion
from store.clock import store_now
from store.database import Database, StoreUnavailable

NEW_REGIONS_LOCK = 0x636C_6E72  # the advisory lock's key ("clnr")


def _merge(existing: Sequence[NewRegion], found: Sequence[NewRegion], slots: int,
           stamp: float | None = None) -> list[NewRegion]:
    """The candidates in `found` that are not an existing region, each in the lowest free slot
    (stamped `stamp` when given, else their own time)."""
    kept = list(existing)
    taken = {r.slot for r in kept}
    added = []
    for candidate in found:
        if any(float(np.sum((candidate.centre - r.centre) ** 2)) <= r.radius ** 2 for r in kept):
            continue  # the same group, found by another worker first
        free = [s for s in range(slots) if s not in taken]
        if not free:
            break
        region = NewRegion(free[0], candidate.centre, candidate.radius,
                           candidate.born if stamp is None else stamp, candidate.members)
        kept.append(region)
        added.append(region)
        taken.add(region.slot)
    return added


class LocalNewRegionStore:
    def __init__(self, shared_dir: Path, layout: str, slots: int = NEW_SLOTS) -> None:
        self.path = Path(shared_dir) / f"new-regions-{layout}.json"
        self.slots = slots
        self._seen: tuple[int, int, int] | None = None
        self._regions: list[NewRegion] = []

    def claim(self, found: Sequence[NewRegion]) -> list[NewRegion]:
        """Store what in `found` is new; returns the regions added."""
        def add(existing: list[NewRegion]) -> tuple[list[NewRegion] | None, list[NewRegion]]:
            added = _merge(existing, found, self.slots)
            return (existing + added if added else None), added

        return self._rewrite(add)

    def retire(self, slot: int) -> NewRegion | None:
        """Remove the region in `slot`; returns it, or None when the slot is free."""
        def remove(existing: list[NewRegion]) -> tuple[list[NewRegion] | None, NewRegion | None]:
            gone = [r for r in existing if r.slot == slot]
            return ([r for r in existing if r.slot != slot] if gone else None), (gone[0] if gone else None)

        return self._rewrite(remove)

    def _rewrite(self, change):
        """`change(stored)` -> (the regions to store, or None to leave the file; its answer), under
        the file lock every worker takes, the file replaced whole by atomic rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            regions, answer = change(self._read())
            if regions is not None:
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps([r.to_dict() for r in regions]))
                os.replace(tmp, self.path)
        return answer

    def load(self) -> list[NewRegion]:
        """Every stored region, read again only when the file changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rewrite is a new file (atomic rename)
        if version != self._seen:
            self._regions, self._seen = self._read(), version
        return list(self._regions)

    def _read(self) -> list[NewRegion]:
        try:
            return [NewRegion.from_dict(r) for r in json.loads(self.path.read_text())]
        except FileNotFoundError:
            return []


class FleetNewRegionStore:
    def __init__(self, database: Database, layout: str, replica: str, slots: int = NEW_SLOTS) -> None:
        self.db, self.layout, self.replica, self.slots = database, layout, replica, slots

    def claim(self, found: Sequence[NewRegion]) -> list[NewRegion]:
        """Store what in `found` is new, one claim at a time across the fleet; returns the
        regions added. StoreUnavailable when the database cannot be reached: nothing is stored,
        and the next search finds the group again."""
        def insert(conn) -> list[NewRegion]:
            added = _merge(self._select(conn), found, self.slots, stamp=store_now(conn))
            for r in added:
                conn.execute("INSERT INTO new_regions (layout, slot, centre, radius, born, members, replica) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (self.layout, r.slot, r.centre.astype(np.float32).tobytes(), r.radius, r.born,
                              r.members, self.replica))
            return added

        return self._locked(insert, "the new regions could not be stored")

    def retire(self, slot: int) -> NewRegion | None:
        """Remove the region in `slot` for the whole fleet; returns it, or None when the slot is
        free."""
        def delete(conn) -> NewRegion | None:
            gone = [r for r in self._select(conn) if r.slot == slot]
            conn.execute("DELETE FROM new_regions WHERE layout = ? AND slot = ?", (self.layout, slot))
            return gone[0] if gone else None

        return self._locked(delete, "the new region could not be retired")

    def _locked(self, work, failed: str):
        """`work(conn)` in one transaction holding the claims' lock, so no claim ever sees a
        slot half-taken or half-freed; StoreUnavailable when the database fails."""
        try:
            conn = self.db.connect(schema=False)
        except self.db.errors as exc:
            raise StoreUnavailable(f"the fleet store is unreachable ({type(exc).__name__})") from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(?)", (NEW_REGIONS_LOCK,))
                return work(conn)
        except self.db.errors as exc:
            raise StoreUnavailable(f"{failed} ({type(exc).__name__})") from None
        finally:
            conn.close()

    def load(self) -> list[NewRegion]:
        return self.db.read(self._select)

    def _select(self, conn) -> list[NewRegion]:
        rows = conn.execute("SELECT slot, centre, radius, born, members FROM new_regions WHERE layout = ? "
                            "ORDER BY slot", (self.layout,)).fetchall()
        return [NewRegion(int(slot), np.frombuffer(bytes(centre), np.float32).copy(), float(radius), float(born),
                          int(members)) for slot, centre, radius, born, members in rows]
