"""Windows merge exactly, and the statistics equal scipy's and the textbook recursions."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from monitors.buckets import BucketedCounts
from monitors.stats import bernoulli_cusum, js_distance, psi


def test_split_then_merge_equals_one_process():
    """Events split at random between two counters, then merged, give one counter's window."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 50, 5000))
    idx = rng.integers(0, 7, 5000)
    one, a, b = (BucketedCounts((7,), bucket_s=1.0, n_buckets=30) for _ in range(3))
    one.add(t, (idx,))
    side = rng.random(5000) < 0.4
    a.add(t[side], (idx[side],))
    b.add(t[~side], (idx[~side],))
    a.merge(b)
    assert np.array_equal(a.window_total(50.0), one.window_total(50.0))
    assert np.array_equal(a.window_series(50.0), one.window_series(50.0))


def test_window_keeps_only_recent_buckets():
    """Only events in the last n_buckets buckets count; the total matches numpy on those events."""
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 100, 3000))
    idx = rng.integers(0, 3, 3000)
    counts = BucketedCounts((3,), bucket_s=2.0, n_buckets=10)
    counts.add(t, (idx,))
    recent = np.floor(t / 2.0) > np.floor(100.0 / 2.0) - 10
    assert np.array_equal(counts.window_total(100.0), np.bincount(idx[recent], minlength=3))


def test_state_round_trip_and_shape_check():
    """state()/load_state() reproduce the counts; a mismatched shape is refused."""
    a = BucketedCounts((2, 3), bucket_s=1.0, n_buckets=5)
    a.add(np.array([1.0, 2.5]), (np.array([0, 1]), np.array([2, 0])))
    b = BucketedCounts((2, 3), bucket_s=1.0, n_buckets=5)
    b.load_state(a.state())
    assert np.array_equal(b.window_total(3.0), a.window_total(3.0))
    with pytest.raises(ValueError, match="shape"):
        BucketedCounts((4,), bucket_s=1.0, n_buckets=5).load_state(a.state())


def test_js_distance_matches_scipy_row_by_row():
    """The vectorised Jensen-Shannon distance equals scipy.spatial.distance.jensenshannon (base 2)."""
    rng = np.random.default_rng(2)
    p, q = rng.random((6, 10)), rng.random((6, 10))
    p[0, :5] = 0.0
    assert np.allclose(js_distance(p, q), [jensenshannon(a, b, base=2) for a, b in zip(p, q)])
    assert np.isnan(js_distance(np.zeros(3), np.ones(3)))


def test_psi_matches_formula():
    """PSI equals sum((a - e) * ln(a / e)) on normalised shares."""
    a, e = np.array([30.0, 50.0, 20.0]), np.array([0.2, 0.6, 0.2])
    an = a / a.sum()
    assert psi(a, e) == pytest.approx(np.sum((an - e) * np.log(an / e)))


def test_cusum_closed_form_equals_recursion():
    """C_T - min(0, min C_k) equals Page's recursion S_t = max(0, S_{t-1} + x_t) on every series."""
    rng = np.random.default_rng(3)
    x = rng.binomial(20, 0.12, (80, 4)).astype(float)
    n = np.full((80, 4), 20.0)
    p0, p1 = np.full(4, 0.1), np.full(4, 0.3)
    s = np.zeros(4)
    for xi, ni in zip(x, n):
        s = np.maximum(0.0, s + xi * np.log(p1 / p0) + (ni - xi) * np.log((1 - p1) / (1 - p0)))
    assert np.allclose(bernoulli_cusum(x, n, p0, p1), s)
