"""The reference profile's statistics match numpy/scipy/scikit-learn computations."""

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import confusion_matrix

from monitors.reference import InputSpec, ReferenceProfile, build_profile, fit_temperature, softmax


@pytest.fixture
def logits_and_labels():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(0, 1, (600, 4))
    logits[np.arange(600), labels] += 2.5  # mostly right, sometimes wrong
    return logits * 3.0, labels  # over-confident on purpose


def test_softmax_matches_scipy(logits_and_labels):
    """Our softmax equals scipy's, with and without temperature."""
    logits, _ = logits_and_labels
    assert np.allclose(softmax(logits), scipy_softmax(logits, axis=1))
    assert np.allclose(softmax(logits, 2.0), scipy_softmax(logits / 2.0, axis=1))


def test_temperature_minimises_nll(logits_and_labels):
    """The fitted temperature beats T=1 and nearby values on negative log-likelihood."""
    logits, labels = logits_and_labels
    t = fit_temperature(logits, labels)
    nll = lambda T: -np.mean(np.log(softmax(logits, T)[np.arange(len(labels)), labels]))  # noqa: E731
    assert t > 1.0  # the logits were scaled up, so they need cooling
    assert nll(t) <= min(nll(1.0), nll(t * 0.9), nll(t * 1.1))


def test_profile_statistics_match_reference_computations(logits_and_labels):
    """Per-subgroup confusion matrix, accuracy, class distribution and histogram equal
    scikit-learn and numpy on the same rows, and the profile survives a dict round trip."""
    logits, labels = logits_and_labels
    groups = np.where(np.arange(600) % 3 == 0, "g=a", "g=b")
    profile = build_profile(logits=logits, labels=labels, subgroups=groups, class_names="wxyz",
                            input_spec=InputSpec(), training_subgroup_shares={"g=a": 0.1, "g=b": 0.9})
    probs = scipy_softmax(logits, axis=1)
    for key in ("g=a", "g=b"):
        rows = groups == key
        ref = profile.subgroups[key]
        pred = probs[rows].argmax(1)
        assert np.array_equal(np.array(ref.confusion_matrix), confusion_matrix(labels[rows], pred, labels=range(4)))
        assert ref.accuracy == pytest.approx(np.mean(pred == labels[rows]))
        assert np.allclose(ref.predicted_class_distribution, np.bincount(pred, minlength=4) / rows.sum())
        hist, _ = np.histogram(probs[rows].max(1), bins=np.linspace(0, 1, 21))
        assert np.allclose(ref.confidence_histogram, hist / rows.sum())
        assert ref.confidence_quantiles["p01"] == pytest.approx(np.quantile(probs[rows].max(1), 0.01))
    assert profile.subgroups["all"].count == 600
    assert ReferenceProfile.from_dict(profile.to_dict()) == profile


def test_bad_inputs_are_refused():
    """Mismatched lengths and class counts fail with a ValueError naming the problem."""
    with pytest.raises(ValueError, match="same"):
        build_profile(logits=np.zeros((3, 2)), labels=[0, 1], subgroups=["a"] * 3, class_names="ab",
                      input_spec=InputSpec(), training_subgroup_shares={})
    with pytest.raises(ValueError, match="classes"):
        build_profile(logits=np.zeros((2, 3)), labels=[0, 1], subgroups=["a"] * 2, class_names="ab",
                      input_spec=InputSpec(), training_subgroup_shares={})
    with pytest.raises(ValueError, match="channels"):
        InputSpec(channels=2)
