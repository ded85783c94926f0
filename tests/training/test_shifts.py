"""Unannounced input shifts: the incident's image format kept, seeded, invisible to the capture deriver."""

import numpy as np
import pytest

from runtime.derived import captures_from_border
from training import digits
from training.shifts import SHIFTS


@pytest.fixture(scope="module")
def scanner_images() -> np.ndarray:
    source, _ = digits.load_source()
    return digits.scanner_capture(source)


def derived(images: np.ndarray) -> np.ndarray:
    return np.array(captures_from_border(images[:, None].astype(np.float64) / 255.0))


@pytest.mark.parametrize("name", SHIFTS)
def test_shift_keeps_the_image_format(name, scanner_images):
    """A shifted batch is uint8 N x 8 x 8 like its input, with pixels in 0..255."""
    out = SHIFTS[name](scanner_images[:100], np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (100, 8, 8)


@pytest.mark.parametrize("name", SHIFTS)
def test_shift_is_deterministic_for_a_seed(name, scanner_images):
    """The same seed gives the same pixels; another seed gives other pixels where the shift draws anything."""
    images = scanner_images[:100]
    first = SHIFTS[name](images, np.random.default_rng(7))
    assert np.array_equal(first, SHIFTS[name](images, np.random.default_rng(7)))
    assert not np.array_equal(first, SHIFTS[name](images, np.random.default_rng(8)))


@pytest.mark.parametrize("name", SHIFTS)
def test_shift_changes_every_image(name, scanner_images):
    """Every image is altered, and by more than rounding: the mean absolute change is at least 10 grey levels."""
    out = SHIFTS[name](scanner_images, np.random.default_rng(0))
    change = np.abs(out.astype(np.int64) - scanner_images.astype(np.int64)).mean(axis=(1, 2))
    assert (change > 0).all() and change.mean() >= 10


@pytest.mark.parametrize("name", SHIFTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capture_deriver_still_says_scanner(name, seed, scanner_images):
    """No shifted scanner image derives `phone` unless its unshifted source already did: the shift is unannounced."""
    before = derived(scanner_images) == "phone"
    after = derived(SHIFTS[name](scanner_images, np.random.default_rng(seed))) == "phone"
    assert not (after & ~before).any()
    assert after.mean() < 0.001


def test_shift_refuses_other_formats(scanner_images):
    """Float images or a missing batch axis are refused, not silently rescaled."""
    for bad in (scanner_images[:3].astype(np.float64), scanner_images[0]):
        with pytest.raises(ValueError, match="uint8"):
            SHIFTS["thick pen"](bad, np.random.default_rng(0))
