"""Label-free accuracy estimators: fitted on validation, each gives validation's own accuracy
back on validation, and reads only what a live window holds."""

import numpy as np

from monitors.estimates import DifferenceOfConfidences, RegionWeighted, ThresholdedConfidence, average_confidence

rng = np.random.default_rng(0)
CONFIDENCE = rng.uniform(0.3, 1.0, 2000)
CORRECT = rng.random(2000) < CONFIDENCE  # calibrated by construction
REGION = rng.integers(0, 6, 2000)


def test_each_estimator_gives_validation_its_own_accuracy_back():
    """ATC's threshold leaves as many validation answers above it as were right; DoC with the
    same confidences is validation's accuracy; region-weighted over validation's regions too."""
    accuracy = CORRECT.mean()
    atc = ThresholdedConfidence.fit(CONFIDENCE, CORRECT)
    assert abs(atc.estimate(CONFIDENCE) - accuracy) <= 1 / len(CONFIDENCE)
    assert DifferenceOfConfidences.fit(CONFIDENCE, CORRECT).estimate(CONFIDENCE) == accuracy
    assert np.isclose(RegionWeighted.fit(REGION, CORRECT, 7).estimate(REGION, CONFIDENCE), accuracy)
    assert np.isclose(average_confidence(CONFIDENCE), CONFIDENCE.mean())


def test_confidence_estimators_follow_a_drop_in_confidence_and_regions_follow_the_mix():
    """Live answers less confident: ATC and DoC estimate lower. Live traffic moved into a region
    validation got wrong: the region-weighted estimate falls though confidence did not."""
    atc = ThresholdedConfidence.fit(CONFIDENCE, CORRECT)
    doc = DifferenceOfConfidences.fit(CONFIDENCE, CORRECT)
    assert atc.estimate(CONFIDENCE * 0.8) < atc.estimate(CONFIDENCE)
    assert doc.estimate(CONFIDENCE * 0.8) < doc.estimate(CONFIDENCE)
    correct = CORRECT & (REGION != 5)  # region 5: always wrong on validation
    weighted = RegionWeighted.fit(REGION, correct, 7)
    assert weighted.estimate(np.full(100, 5), np.full(100, 0.99)) == 0.0


def test_a_region_validation_barely_saw_reads_the_live_confidence():
    """Region 6 (novel, say) had no validation answers: its live answers count at their own
    calibrated confidence, not at an accuracy nobody measured."""
    weighted = RegionWeighted.fit(REGION, CORRECT, 7)
    assert np.isnan(weighted.accuracy[6])
    assert np.isclose(weighted.estimate(np.full(10, 6), np.full(10, 0.42)), 0.42)
