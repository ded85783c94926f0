"""The helpers over a batch's probabilities: rounding in numpy equals Python's round."""

import numpy as np

from runtime.probability_rows import rounded


def test_rounding_float32_in_numpy_equals_pythons_round():
    """Half a million random float32 values, values at and next to exact halves of the sixth
    decimal, tiny ones and the ends: numpy's rounding gives exactly what round(v, 6) gives."""
    rng = np.random.default_rng(5)
    halves = (rng.integers(0, 2_000_000, 200_000) / 2e6 + 0.5e-6).astype(np.float32)
    values = np.concatenate([rng.random(500_000).astype(np.float32), halves, np.nextafter(halves, 1),
                             rng.random(50_000).astype(np.float32) ** 12,
                             np.array([0.0, 5e-7, 1.5e-6, 0.9999995, 1.0], np.float32)])
    assert rounded(values) == [round(float(v), 6) for v in values]


def test_other_dtypes_are_rounded_by_python():
    """float64 rows (a stand-in model's) keep Python's round, shape and all."""
    values = np.array([[0.1234565, 0.5], [1 / 3, 2 / 3]])
    assert rounded(values) == [[round(v, 6) for v in row] for row in values.tolist()]
