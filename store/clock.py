"""Reading the fleet's time from the store: PostgreSQL's clock corrects core.clock's offset."""

from __future__ import annotations

import time
from typing import Any

from core.clock import CLOCK
from store import sql_postgres

# clock_timestamp(), not now(): now() is the start of the transaction, which may be long past
DATABASE_NOW = "SELECT extract(epoch from clock_timestamp())::float8"


def store_now(conn: Any) -> float:
    """The store's time now: PostgreSQL's clock (one round trip, which also corrects the fleet
    clock's offset), or this host's for a SQLite connection."""
    if not isinstance(conn, sql_postgres.Connection):
        return time.time()
    sent = time.time()
    database = float(conn.native(DATABASE_NOW).fetchone()[0])
    return CLOCK.measured(sent, database, time.time())
