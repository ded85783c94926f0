"""Where new regions are shared: two workers (one host) or two replicas (PostgreSQL) that find
the same group store it once, under one name, and each reads the other's; a retired region's
slot is free for everyone, and the next group takes it."""

import threading
import time

import numpy as np

from monitors.new_regions import NewRegion
from store.database import PostgresDatabase
from store.new_regions import FleetNewRegionStore, LocalNewRegionStore


def region(centre: float, born: float = 1.0) -> NewRegion:
    return NewRegion(0, np.full(8, centre, np.float32), 1.0, born, 25)


def test_two_workers_of_one_host_name_one_group_once(tmp_path):
    """Worker A stores a group as slot 0; worker B's candidate for the same group (its centre
    within the radius) is dropped, its other group takes slot 1; each reads both."""
    a, b = LocalNewRegionStore(tmp_path, "layout"), LocalNewRegionStore(tmp_path, "layout")
    assert [r.slot for r in a.claim([region(0.0)])] == [0]
    assert [r.slot for r in b.claim([region(0.1), region(9.0)])] == [1]
    assert [(r.slot, float(r.centre[0])) for r in a.load()] == [(0, 0.0), (1, 9.0)]
    assert [r.slot for r in b.load()] == [0, 1]
    assert LocalNewRegionStore(tmp_path, "other-version").load() == []  # regions belong to one layout
    retired = b.retire(0)
    assert retired is not None and float(retired.centre[0]) == 0.0 and b.retire(0) is None
    assert [r.slot for r in a.load()] == [1]
    assert [r.slot for r in a.claim([region(5.0)])] == [0]  # the freed slot is the lowest free one


def test_replicas_racing_for_one_group_store_it_once_stamped_by_the_database(pg_url):
    """Four replicas claim the same group at once through PostgreSQL: one row, slot 0, its birth
    the database's time; then each replica reads it; one retires it, and it is gone for all."""
    db = PostgresDatabase(pg_url, replica="owner")
    db.migrate()
    stores = [FleetNewRegionStore(PostgresDatabase(pg_url, replica=f"r{i}"), "layout", f"r{i}") for i in range(4)]
    added: list = []
    threads = [threading.Thread(target=lambda s=s: added.extend(s.claim([region(0.05 * i, born=0.0)])))
               for i, s in enumerate(stores)]
    before = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(added) == 1 and added[0].slot == 0
    assert abs(added[0].born - before) < 30  # not the candidates' own time (0.0)
    for s in stores:
        got = s.load()
        assert [(r.slot, r.members) for r in got] == [(0, 25)]
        assert np.array_equal(got[0].centre, added[0].centre)
    assert stores[2].retire(0).members == 25 and stores[3].retire(0) is None
    assert all(s.load() == [] for s in stores)
    assert [r.slot for r in stores[1].claim([region(7.0)])] == [0]
