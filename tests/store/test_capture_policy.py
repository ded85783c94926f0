"""The stratified capture policy against uniform sampling at one budget."""

import statistics

import numpy as np

from core.config import CaptureConfig
from store.capture import Capture

SHARES = {("m", "capture=scanner", "r01"): 0.79, ("m", "capture=scanner", "r02"): 0.15,
          ("m", "capture=scanner", "r03"): 0.05, ("m", "capture=phone", "r04"): 0.01}
RARE = ("m", "capture=phone", "r04")


def test_stratified_keeps_ten_times_the_rare_groups_images_uniform_keeps():
    """On 10,000 answers over two hours and a budget of 200 inputs, the stratified policy (25 per
    stratum an hour) keeps at least ten times as many of a 1%-of-traffic group's inputs as uniform
    sampling at the same expected count does (median over 10 seeds)."""
    n, seconds, budget = 10_000, 7_200.0, 200
    rng = np.random.default_rng(3)
    strata = list(SHARES)
    ts = 1_800_000_000.0 + np.sort(rng.uniform(0.0, seconds, n))
    which = [strata[i] for i in rng.choice(len(strata), n, p=list(SHARES.values()))]
    per_stratum = budget // (len(strata) * 2)  # two one-hour periods
    capture = Capture(CaptureConfig(policy="stratified", per_stratum=per_stratum, stratum_seconds=3_600))
    kept = [s for s, t in zip(which, ts.tolist()) if capture.reason(*s, flagged=False, now=t) is not None]
    is_rare = np.array([s == RARE for s in which])
    uniform = [int(np.sum(is_rare & (np.random.default_rng(seed).random(n) < budget / n))) for seed in range(10)]
    assert len(kept) <= budget
    assert kept.count(RARE) >= 10 * statistics.median(uniform) > 0
