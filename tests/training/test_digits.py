"""The incident data: real digits, disjoint splits, the documented phone transform."""

import numpy as np

from training import digits


def test_splits_are_disjoint_and_cover_every_digit():
    """Train, validation and test never share a source digit, and together hold all 1,797."""
    _, labels = digits.load_source()
    idx = digits.split_indices(len(labels), labels)
    joined = np.concatenate(list(idx.values()))
    assert len(joined) == len(set(joined.tolist())) == 1797


def test_baseline_training_set_under_represents_phone():
    """Phone images are at most 3% of the baseline's training set and half of the retrained one's."""
    incident = digits.build_incident()
    assert 0 < np.mean(incident.baseline_train.captures == "phone") <= 0.03
    assert np.mean(incident.retrained_train.captures == "phone") == 0.5


def test_phone_capture_is_inverted_low_contrast_and_deterministic():
    """The phone transform inverts polarity, squeezes contrast, and gives the same pixels twice."""
    source, _ = digits.load_source()
    idx = np.arange(50)
    phone = digits.phone_capture(source[idx], idx)
    assert np.array_equal(phone, digits.phone_capture(source[idx], idx))
    scanner = digits.scanner_capture(source[idx])
    blank = source[idx] == 0  # background in the scanner image is paper in the phone image
    assert phone[blank].mean() > 150 > scanner[blank].mean()
    assert np.ptp(phone.astype(float).mean(axis=(1, 2))) < np.ptp(scanner.astype(float).mean(axis=(1, 2))) + 50
    assert phone.max() < 255 * (digits.PHONE_HIGH + 4 * digits.PHONE_NOISE)


def test_test_split_is_never_used_for_training():
    """No test image appears in either training set or the validation set."""
    incident = digits.build_incident()
    seen = {img.tobytes() for s in (incident.baseline_train, incident.retrained_train, incident.validation)
            for img in s.images}
    assert not any(img.tobytes() in seen for img in incident.test.images)
