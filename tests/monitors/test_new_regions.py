"""New regions from novel traffic: a tight group of different images forms one, scattered
outliers and one image sent again and again do not, and placement follows the formed ones."""

import numpy as np
import pytest

from monitors.new_regions import MIN_MEMBERS, NEW_SLOTS, NewRegion, NewRegions, NovelRing, discover, new_region_names

WIDTH, RADIUS = 16, 1.0


def group(rng, centre, n, spread=0.15):
    return (centre + rng.normal(0, spread, (n, WIDTH))).astype(np.float32)


def scattered(rng, n):
    """Ordinary outliers: far from one another (pairwise distance about 10 x RADIUS)."""
    return rng.normal(0, 7.0, (n, WIDTH)).astype(np.float32)


def test_a_tight_group_of_distinct_images_forms_one_region_and_outliers_none():
    """30 different images within the radius of one centre among 300 scattered outliers: one
    region in slot 0, its centre near the group's, its members the 30; the outliers alone: none."""
    rng = np.random.default_rng(0)
    centre = np.full(WIDTH, 20.0, np.float32)
    found = discover(np.concatenate([scattered(rng, 300), group(rng, centre, 30)]), radius=RADIUS,
                     known=NewRegions(), now=5.0)
    assert [(r.slot, r.members, r.born) for r in found] == [(0, 30, 5.0)]
    assert np.linalg.norm(found[0].centre - centre) < 0.2
    assert discover(scattered(rng, 2000), radius=RADIUS, known=NewRegions(), now=5.0) == []


def test_one_image_sent_again_and_again_is_not_a_group():
    """500 copies of one embedding and MIN_MEMBERS - 1 distinct neighbours: below the bar,
    since a repeated image counts once."""
    rng = np.random.default_rng(1)
    centre = np.full(WIDTH, 20.0, np.float32)
    repeated = np.repeat(centre[None], 500, axis=0)
    assert discover(np.concatenate([repeated, group(rng, centre, MIN_MEMBERS - 2)]), radius=RADIUS,
                    known=NewRegions(), now=0.0) == []


def test_known_groups_are_not_found_twice_and_slots_are_bounded():
    """A group inside a formed region is not found again; more groups than free slots fill the
    slots and stop."""
    rng = np.random.default_rng(2)
    centres = [np.full(WIDTH, 10.0 * (i + 1), np.float32) for i in range(NEW_SLOTS + 2)]
    first = discover(group(rng, centres[0], 40), radius=RADIUS, known=NewRegions(), now=1.0)
    known = NewRegions(first)
    assert discover(group(rng, centres[0], 40), radius=RADIUS, known=known, now=2.0) == []
    more = discover(np.concatenate([group(rng, c, 25) for c in centres[1:]]), radius=RADIUS, known=known, now=3.0)
    assert sorted(r.slot for r in more) == list(range(1, NEW_SLOTS))


def test_place_puts_novel_rows_in_the_region_holding_them():
    """Rows within a formed region's radius get its slot (the nearer of two), others -1."""
    a = NewRegion(3, np.zeros(WIDTH, np.float32), 1.0, 0.0, 20)
    b = NewRegion(5, np.full(WIDTH, 0.3, np.float32), 1.5, 0.0, 20)
    rows = np.stack([np.zeros(WIDTH), np.full(WIDTH, 0.3), np.full(WIDTH, 9.0)]).astype(np.float32)
    assert NewRegions([a, b]).place(rows).tolist() == [3, 5, -1]
    assert NewRegions().place(rows).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="distinct slots"):
        NewRegions([a, a])
    assert new_region_names()[:2] == ["n00", "n01"] and len(new_region_names()) == NEW_SLOTS


def test_the_ring_keeps_the_newest_and_answers_by_time():
    """A ring of 4 keeps the last 4 added, and `since` gives those at or after a time."""
    ring = NovelRing(2, capacity=4)
    ring.add(np.arange(6.0), np.arange(12.0).reshape(6, 2))
    assert sorted(ring.since(0.0)[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0] and ring.added == 6
    ring.add(np.array([7.0]), np.array([[100.0, 0]]))
    assert sorted(ring.since(2.5)[:, 0].tolist()) == [6.0, 8.0, 10.0, 100.0]  # the oldest was overwritten
