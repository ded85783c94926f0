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
