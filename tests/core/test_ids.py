"""Request ids the service mints: UUIDv7 layout, unique, and sorted by time."""

import time
import uuid

from core.ids import time_ordered_id


def test_minted_ids_are_uuid7_unique_and_sort_by_time():
    """10,000 ids are distinct version-7 UUIDs; ids minted a few milliseconds apart sort in
    minting order (what keeps the log's primary-key index growing at its end)."""
    ids = [time_ordered_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and len(i) == 32 for i in ids[:100])
    spaced = []
    for _ in range(5):
        spaced.append(time_ordered_id())
        time.sleep(0.002)
    assert spaced == sorted(spaced)
