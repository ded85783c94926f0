"""Label-free accuracy estimators: fitted on validation, each gives validation's own accuracy
back on validation, and reads only what a live window holds; the published one's credits and
its thresholds in a profile."""

import numpy as np

from monitors.estimates import (DifferenceOfConfidences, PublishedEstimate, RegionWeighted, ThresholdedConfidence,
                                average_confidence, calibrated_confidence)
from monitors.reference import ReferenceProfile

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


def test_the_published_estimate_uses_its_subgroups_threshold_and_falls_back():
    """Credits are 1 above the subgroup's ATC threshold and 0 below; a subgroup without a reference
    takes the whole split's threshold; a model profiled before thresholds credits each answer its
    calibrated confidence (the mean calibrated confidence, the estimate before ATC)."""
    estimate = PublishedEstimate(1.0, {"all": 0.7, "capture=phone": 0.4})
    probs = np.array([[0.5, 0.3, 0.2], [0.8, 0.1, 0.1], [0.35, 0.33, 0.32]])
    assert estimate.credit_probs(probs, "capture=phone").tolist() == [1.0, 1.0, 0.0]
    assert estimate.credit_probs(probs, "capture=scanner").tolist() == [0.0, 1.0, 0.0]
    assert np.allclose(PublishedEstimate(1.0).credit_probs(probs, "capture=phone"), [0.5, 0.8, 0.35])
    assert np.allclose(PublishedEstimate(2.0).credit_probs(probs, "x"), calibrated_confidence(probs, 2.0))


def test_a_profile_stores_atc_thresholds_and_an_older_one_still_loads(profiles):
    """build_profile fits each subgroup's threshold on its calibrated validation confidences (as
    ThresholdedConfidence does); it survives to_dict/from_dict, and a profile dict without it
    loads with none (so its estimate stays the mean calibrated confidence)."""
    profile = profiles[0]
    assert all(0.0 < ref.atc_threshold < 1.0 for ref in profile.subgroups.values())
    again = ReferenceProfile.from_dict(profile.to_dict())
    assert PublishedEstimate.of(again) == PublishedEstimate.of(profile)
    old = profile.to_dict()
    for ref in old["subgroups"].values():
        del ref["atc_threshold"]
    older = PublishedEstimate.of(ReferenceProfile.from_dict(old))
    assert all(np.isnan(t) for t in older.thresholds.values())
    assert "atc_threshold" not in ReferenceProfile.from_dict(old).to_dict()["subgroups"]["all"]
