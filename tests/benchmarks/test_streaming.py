"""The streaming benchmark's protocol: calibration lands on the knob that gives the target
false-alarm count, run lengths carry an exact Poisson interval, and the floors and bursts
are what they claim."""

import math

import numpy as np
import pytest

from benchmarks.detection import Stream
from benchmarks.streaming import calibrate, observe, run_length


def test_calibration_finds_the_knob_giving_the_target_false_alarm_count():
    """A detector whose false alarms fall as its threshold rises (count = 1000 / knob) is
    calibrated to about n / arl alarms; one that rises with its knob (ADWIN's delta) too."""
    falling = calibrate(lambda k: int(1000 / k), n=100_000, arl=10_000, low=1, high=1000, log_scale=True,
                        more_alarms_when_higher=False, steps=20)
    assert int(1000 / falling) == 10  # any knob in (90.9, 100] gives the 10 alarms wanted
    rising = calibrate(lambda k: int(k * 1e4), n=100_000, arl=10_000, low=1e-9, high=1, log_scale=True,
                       more_alarms_when_higher=True, steps=20)
    assert int(rising * 1e4) == 10


def test_a_detector_that_never_false_alarms_gets_its_most_sensitive_setting():
    """With no false alarm anywhere in range, the tie goes to the most sensitive knob."""
    knob = calibrate(lambda k: 0, n=100_000, arl=10_000, low=1e-12, high=0.99, log_scale=True,
                     more_alarms_when_higher=True, steps=12)
    assert knob > 0.5
    knob = calibrate(lambda k: 0, n=100_000, arl=10_000, low=1.0, high=30.0, log_scale=False,
                     more_alarms_when_higher=False, steps=12)
    assert knob < 1.1


def test_run_length_interval_is_garwoods():
    """10 alarms in 100,000 events: 10,000 events between them, 95% interval from the exact
    Poisson bounds on 10 (4.80-18.39); no alarm: infinite, with a finite lower bound."""
    arl, low, high = run_length(list(range(10)), 100_000)
    assert arl == 10_000 and low == pytest.approx(100_000 / 18.39, rel=1e-3)
    assert high == pytest.approx(100_000 / 4.7954, rel=1e-3)
    arl, low, high = run_length([], 100_000)
    assert arl == math.inf and high == math.inf and low == pytest.approx(100_000 / 3.689, rel=1e-3)


def test_observed_streams_watch_what_classguard_watches():
    """The phone share is one 0/1 stream; confidence and the pair's flag are per subgroup."""
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    stream = Stream(["capture=phone", "capture=scanner", "capture=phone"], probs, None)
    phone = observe(stream, "representation", lambda p: np.zeros(len(p), bool))
    assert phone.value.tolist() == [1.0, 0.0, 1.0] and not phone.per_subgroup
    confidence = observe(stream, "confidence", lambda p: np.zeros(len(p), bool))
    assert confidence.value.tolist() == [0.9, 0.6, 0.8] and confidence.subgroup.tolist() == [1, 0, 1]
    flagged = observe(stream, "known_confusion", lambda p: p[:, 1] > 0.5)
    assert flagged.value.tolist() == [0.0, 0.0, 1.0] and flagged.per_subgroup


# --- the region streams (benchmarks/streaming_regions.py) ---------------------------------------

class Recorder:
    """A river-shaped detector that keeps what it is fed and fires on any value above 1."""

    made: list = []

    def __init__(self) -> None:
        self.fed, self.drift_detected = [], False
        Recorder.made.append(self)

    def update(self, x: float) -> None:
        self.fed.append(x)
        self.drift_detected = x > 1


def test_river_regions_feed_each_region_its_indicator_and_its_own_values():
    """Per region, one detector gets "in this region" for every event and one gets the values of
    the region's events only; an alarm is reported at the event (index + 1) whose value fired."""
    from benchmarks.streaming_regions import run_river_regions

    Recorder.made = []
    region = np.array([0, 1, 0, 2, 2])
    value = np.array([0.0, 0.5, 2.0, 0.0, 0.25])
    alarms, _ = run_river_regions(region, value, 3, Recorder, shares=True)
    assert alarms == [3]  # the value 2.0, region 0's second event, is the third event
    fed = [d.fed for d in Recorder.made]  # per region: its values, then its indicator
    assert fed == [[0.0, 2.0], [1.0, 0.0, 1.0, 0.0, 0.0], [0.5], [0.0, 1.0, 0.0, 0.0, 0.0],
                   [0.0, 0.25], [0.0, 0.0, 0.0, 1.0, 1.0]]
    Recorder.made = []
    run_river_regions(region, value, 3, Recorder, shares=False)
    assert [d.fed for d in Recorder.made] == [[0.0, 2.0], [0.5], [0.0, 0.25]]


def fake_pool():
    """10 phone rows, 90 scanner rows, and 10 rows of one shift (rows 100-109)."""
    from types import SimpleNamespace

    return SimpleNamespace(phone_rows=np.arange(10), scanner_rows=np.arange(10, 100),
                           shift_rows={"blurry sensor": np.arange(100, 110)})


def test_region_change_streams_shift_only_scanner_traffic_after_the_warm_up():
    """Each region stream is `warmup` stationary events then the shift: no shifted image before
    the change, about the mix's share of all traffic after it, the phone share unchanged."""
    from benchmarks.streaming_regions import changed_streams

    changed = changed_streams(fake_pool(), 0.03, repeats=2, warmup=1_000, after=20_000, seed=0)
    assert set(changed) == {"blurry sensor 10%", "blurry sensor 30%"}
    for name, streams in changed.items():
        mix = int(name.split()[-1].rstrip("%")) / 100
        assert len(streams) == 2 and streams[0].rows.tolist() != streams[1].rows.tolist()
        for s in streams:
            shifted = s.rows >= 100
            assert len(s) == 21_000 and s.change == 1_000 and not shifted[:1_000].any()
            assert shifted[1_000:].mean() == pytest.approx(mix, abs=0.01)
            assert s.phone[1_000:].mean() == pytest.approx(0.03, abs=0.005)
            assert not (shifted & s.phone).any()


def test_region_bursty_stream_keeps_the_phone_share_in_runs_of_50():
    """The bursty replay has the stationary stream's phone requests, to a multiple of 50, in
    aligned runs of 50, and every phone event carries a phone image."""
    from benchmarks.regions import Stream as RegionStream
    from benchmarks.streaming_regions import in_bursts

    rng = np.random.default_rng(0)
    phone = rng.random(10_000) < 0.03
    bursty = in_bursts(RegionStream(np.where(phone, 0, 50), phone, None), fake_pool(), seed=3)
    runs = bursty.phone.reshape(-1, 50)
    assert set(runs.sum(axis=1).tolist()) <= {0, 50}
    assert bursty.phone.sum() == phone.sum() // 50 * 50
    assert (bursty.rows[bursty.phone] < 10).all() and (bursty.rows[~bursty.phone] >= 10).all()


def test_region_monitor_alarms_after_a_novel_surge_and_restarts():
    """The service's region monitor, checked after every drain, stays quiet on its reference
    mix and alarms once the novel region's share jumps; after each alarm it starts from an
    empty window, so alarms are at least `min_samples` events apart."""
    from types import SimpleNamespace

    from benchmarks.regions import RegionSetup, Stream as RegionStream
    from benchmarks.streaming_regions import RegionBench, RegionClassguard
    from monitors.events import WindowConfig

    rng = np.random.default_rng(0)
    codebook = SimpleNamespace(names=lambda: ["r00", "novel"], low_confidence=0.5, k=1)
    pool_region = (rng.random(4_000) < 0.05).astype(np.int64)  # rows 0-3999: the reference mix
    pool_region = np.r_[pool_region, np.ones(1_000, np.int64)]  # rows 4000-4999: novel
    setup = RegionSetup(codebook, pool_region, np.array([0.95, 0.05]), np.array([0.01, 0.01]), np.ones(2))
    bench = RegionBench(SimpleNamespace(confidence=np.full(5_000, 0.9)), setup, WindowConfig(), 100.0)
    change = 3_000
    rows = np.r_[rng.integers(0, 4_000, change), np.where(rng.random(3_000) < 0.5, 4_000, 0)]
    alarms, us = RegionClassguard(bench, 20.0).run(RegionStream(rows, np.zeros(len(rows), bool), change))
    assert alarms and alarms[0] > change and alarms[0] - change <= 300 and us > 0
    assert np.diff(alarms).min() >= 100


def test_alibi_rows_from_its_alarms():
    """An Alibi detector's row: run length from its stationary alarms, delays from the first
    alarm after each stream's change (none after it: missed)."""
    from types import SimpleNamespace

    from benchmarks.streaming import alibi_row

    got = {"check": [5_000, 15_000], "bursty": [1], "changed": [[10, 1_200], [40]], "us": [300.0, 500.0],
           "detector": "MMDDriftOnline", "per_subgroup": False, "configure_s": 1.0}
    name, row = alibi_row(got, 20_000, 10_000, [1_000, 1_000], SimpleNamespace(arl=10_000, bound=2_000))
    assert name == "Alibi MMDDriftOnline (whole stream)"
    assert row["arl"] == 10_000 and row["delay_median"] == 200 and row["detected_share"] == 0.5
    assert row["change_streams"] == 2 and row["bursty_false_alarms_per_100k"] == 10.0


def test_mmd_bootstraps_leave_alibi_enough_for_its_last_window():
    """Alibi drops the 1/ert of bootstraps above each window position's threshold and needs ert
    of them at the last one: the count asked for leaves 1.1 ert there."""
    from benchmarks.streaming_regions import mmd_bootstraps

    for ert, window in ((10_000, 100), (2_000, 50)):
        n = mmd_bootstraps(ert, window)
        left = n * (1 - 1 / ert) ** window
        assert 1.1 * ert <= left < 1.1 * ert + 1
