"""Monitor windows shared by a fleet, in PostgreSQL.

Every monitor's window is time buckets aligned to the Unix epoch, so replicas' counts simply
add up. Each worker, at each publish (`exchange`):

1. writes its own counts of the buckets that changed since its last successful write, as
   absolute values (`window_part`, one row per worker and bucket), and in the same statement
   adds the difference to the fleet's totals (`window_total`, one row per bucket). Writing
   absolute values makes a retried write (a lost commit acknowledgement) change nothing.
2. reads the fleet's totals of the live window: one row per bucket, whatever the fleet's size.

Every bound is the database's clock (store.clock), never a replica's own: a replica whose
clock ran 400 s ahead had pruned every replica's live buckets (its "window" was 400 s in the
future) and its future buckets had crowded the live ones out of every reader's window. So a
worker reads the database's time at each exchange (in its first statement), ships and reads only
buckets from the window up to one bucket past the database's now, and prunes by the database's
clock in the DELETE itself.

So a replica's traffic to the store per publish is constant in the number of replicas:
about (changed buckets) x (counts per bucket) x 8 bytes written and (buckets in the window) x
(counts per bucket) x 8 bytes read; the database's work grows linearly with replicas, not
quadratically (no replica reads another's state). Replicas that count differently (another
model version, other subgroups or windows: another `layout`) keep separate totals, never mixed.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from store.clock import store_now
from store.database import Database, StoreUnavailable

PRUNE_SECONDS = 60.0  # how often a worker deletes buckets that left the window

WRITE = """
WITH input AS (
    SELECT b, (%(v)s::float8[])[(i - 1) * %(n)s + 1 : i * %(n)s] AS v
    FROM unnest(%(b)s::bigint[]) WITH ORDINALITY AS u(b, i)),
  old AS (SELECT p.bucket, p.counts FROM window_part p JOIN input ON p.bucket = input.b
          WHERE p.layout = %(k)s AND p.worker = %(w)s),
  part AS (INSERT INTO window_part (layout, worker, bucket, counts) SELECT %(k)s, %(w)s, b, v FROM input
           ON CONFLICT (layout, worker, bucket) DO UPDATE SET counts = excluded.counts)
INSERT INTO window_total (layout, bucket, counts)
SELECT %(k)s, i.b, classguard_sub(i.v, o.counts) FROM input i LEFT JOIN old o ON o.bucket = i.b
ON CONFLICT (layout, bucket) DO UPDATE SET counts = classguard_add(window_total.counts, excluded.counts)
"""
# newer than the database's now plus one bucket: from a clock that runs ahead, not yet live
READ = "SELECT bucket, counts FROM window_total WHERE layout = %s AND bucket > %s AND bucket <= %s"
_LEFT = "floor(extract(epoch from clock_timestamp()) / %(s)s)::bigint - %(n)s"  # newest bucket out of the window
PRUNE = (f"DELETE FROM window_part WHERE layout = %(k)s AND bucket <= {_LEFT}",
         f"DELETE FROM window_total WHERE layout = %(k)s AND bucket <= {_LEFT}")


class FleetWindows:
    def __init__(self, database: Database, *, layout: str, worker: str, bucket_s: float, n_buckets: int) -> None:
        self.db, self.layout, self.worker = database, layout, worker
        self.bucket_s, self.n_buckets = bucket_s, n_buckets
        self._conn: Any = None
        self._shipped: dict[int, np.ndarray] = {}  # what the store holds of this worker's counts
        self._last_prune = 0.0
        self._lock = threading.Lock()
        self.last = {"written_bytes": 0, "read_bytes": 0, "statements": 0}  # the last exchange, for benchmarks

    def now(self) -> float:
        """The database's time now; this worker's clock offset is measured on the way
        (store.clock). Raises StoreUnavailable when the store cannot be reached."""
        with self._lock:
            try:
                self._conn = self.db.revive(self._conn)
                return store_now(self._conn)
            except self.db.errors as exc:
                raise StoreUnavailable(f"fleet window store failed: {type(exc).__name__}") from exc

    def exchange(self, own: Mapping[int, np.ndarray], now: float | None = None) -> dict[int, np.ndarray]:
        """Write this worker's changed buckets, return the fleet's totals per live bucket (by the
        database's clock; `now`: its time, if the caller has just read it). Raises
        StoreUnavailable when the store cannot be reached (nothing is lost: the buckets stay
        changed until a write succeeds, as long as they are in the window)."""
        with self._lock:
            try:
                self._conn = self.db.revive(self._conn)
                return self._exchange(own, store_now(self._conn) if now is None else now)
            except self.db.errors as exc:
                raise StoreUnavailable(f"fleet window store failed: {type(exc).__name__}") from exc

    def _exchange(self, own: Mapping[int, np.ndarray], now: float) -> dict[int, np.ndarray]:
        current = int(np.floor(now / self.bucket_s))
        # one bucket of grace ahead: workers' clocks agree with the database's to about a round trip
        oldest_live, newest = current - self.n_buckets, current + 1
        changed = sorted(b for b, v in own.items() if oldest_live < b <= newest
                         and (b not in self._shipped or not np.array_equal(self._shipped[b], v)))
        statements, written = 0, 0
        if changed:
            size = len(own[changed[0]])
            values = np.concatenate([own[b] for b in changed])
            self._conn.native(WRITE, {"v": values.tolist(), "n": size, "b": changed, "k": self.layout,
                                      "w": self.worker})
            statements, written = statements + 1, values.nbytes + 8 * len(changed)
            for b in changed:
                self._shipped[b] = np.array(own[b], copy=True)
        for b in [b for b in self._shipped if b <= oldest_live]:
            del self._shipped[b]
        if now - self._last_prune >= PRUNE_SECONDS:
            for sql in PRUNE:
                self._conn.native(sql, {"k": self.layout, "s": self.bucket_s, "n": self.n_buckets})
            self._last_prune, statements = now, statements + len(PRUNE)
        rows = self._conn.raw.cursor(binary=True).execute(READ, (self.layout, oldest_live, newest)).fetchall()
        totals = {int(b): np.asarray(v, dtype=np.float64) for b, v in rows}
        self.last = {"written_bytes": written, "read_bytes": sum(8 + v.nbytes for v in totals.values()),
                     "statements": statements + 1}
        return totals
