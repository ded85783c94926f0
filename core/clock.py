"""Fleet time: one clock for every replica that shares a PostgreSQL store.

Replicas compare times that other replicas wrote: the monitor windows' time buckets, how long
a label has been held, when a request id was minted, the log's retention. A replica whose clock
ran 400 s ahead had pruned every replica's window buckets and answered 404 to labels for fresh
answers; one 150 s behind had held labels that the next correct replica expired at once. So
those times come from one clock, the database's: each worker measures the offset between its
host's clock and PostgreSQL's `clock_timestamp()` whenever it reads the database's time (every
monitor publish, feedback post and held-label join; store.clock.store_now), and `now()` is its
host's clock plus that offset between readings. On one host (SQLite) the host's clock is the
only one: offset 0.

The measured skew (this host minus the database) is exported as
`classguard_fleet_clock_skew_seconds` and alerted on: the host's clock is wrong for everything
else on it too (log timestamps, certificates).
"""

from __future__ import annotations

import time

from core import metrics


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0  # the database's clock minus this host's, as last measured
        metrics.FLEET_CLOCK_SKEW.set(0.0)  # exported before the first reading (and on SQLite, for good)

    def now(self) -> float:
        """Fleet time in Unix seconds: this host's clock, corrected by the last measured offset."""
        return time.time() + self.offset

    def measured(self, sent: float, database: float, received: float) -> float:
        """Take the database's time read between `sent` and `received` (this host's clock) as the
        new offset; returns `database`."""
        # the server read its clock about half-way through the round trip (under 1 ms on a LAN)
        self.offset = database - (sent + received) / 2
        metrics.FLEET_CLOCK_SKEW.set(-self.offset)
        return database


CLOCK = Clock()  # this process's (one worker's): every worker measures its own offset
