"""A worker's new regions: novel answers it saw form a region at its next refresh, later novel
answers near it are placed there, and another worker takes the region up from the store; a
region retired by one worker is gone from the other at its next refresh."""

import numpy as np
import pytest

from monitors.new_regions import MIN_MEMBERS
from runtime.new_regions import NewRegionTracker
from store.new_regions import LocalNewRegionStore
from tests.monitors.conftest import make_profile


def test_novel_answers_form_a_region_that_both_workers_then_place_into(tmp_path):
    """30 close novel embeddings form n00 at the refresh; then they land in it on both workers."""
    codebook = make_profile(1, regions=8).codebook()
    k = codebook.k
    store = lambda: LocalNewRegionStore(tmp_path, "layout")  # noqa: E731
    worker, other = NewRegionTracker(codebook, store()), NewRegionTracker(codebook, store())
    rng = np.random.default_rng(0)
    far = np.full(codebook.prototypes.shape[1], 50.0, np.float32)  # far from every prototype: novel
    group = (far + rng.normal(0, 0.05 * codebook.new_radius, (MIN_MEMBERS + 10, len(far)))).astype(np.float32)
    assigned = codebook.assign(group)
    assert (assigned == k).all()
    assert (worker.place(group, assigned) == k).all()  # no region yet: they stay novel
    now = float(np.max(worker._ring.times))
    formed = worker.refresh(now, 300.0)
    assert [r.slot for r in formed] == [0] and formed[0].members == MIN_MEMBERS + 10
    assert (worker.place(group[:5], codebook.assign(group[:5])) == k + 1).all()
    assert other.refresh(now, 300.0) and (other.place(group[:5], codebook.assign(group[:5])) == k + 1).all()
    assert worker.describe()["n00"]["members"] == MIN_MEMBERS + 10
    ordinary = codebook.prototypes[:3] + 0.01  # inside the codebook's regions: untouched
    assert worker.place(ordinary, codebook.assign(ordinary)).tolist() == codebook.assign(ordinary).tolist()


def test_a_region_retired_by_one_worker_is_gone_from_the_others(tmp_path):
    """A worker that has not taken n00 up yet retires it (the store knows it); the worker that
    formed it and another one place the group's answers in n00 until their next refresh, and
    in novel after; a name that is not a new region's is refused, a free slot is None."""
    codebook = make_profile(1, regions=8).codebook()
    k = codebook.k
    worker, other, late = (NewRegionTracker(codebook, LocalNewRegionStore(tmp_path, "layout")) for _ in "abc")
    far = np.full(codebook.prototypes.shape[1], 50.0, np.float32)
    group = (far + np.random.default_rng(1).normal(0, 0.05 * codebook.new_radius,
                                                   (MIN_MEMBERS + 5, len(far)))).astype(np.float32)
    worker.place(group, codebook.assign(group))
    now = float(np.max(worker._ring.times))
    assert worker.refresh(now, 300.0) and other.refresh(now, 300.0)
    assert late.describe() == {} and late.retire("n01") is None
    gone = late.retire("n00")
    assert gone is not None and gone["members"] == MIN_MEMBERS + 5 and late.retire("n00") is None
    for tracker in (worker, other):
        assert (tracker.place(group[:3], codebook.assign(group[:3])) == k + 1).all()  # not refreshed yet
        assert tracker.refresh(now, 300.0) == [] and tracker.describe() == {}
        assert (tracker.place(group[:3], codebook.assign(group[:3])) == k).all()
    with pytest.raises(ValueError, match="not a new region"):
        worker.retire("r01")
