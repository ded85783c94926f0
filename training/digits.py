"""The incident's data: scikit-learn's real handwritten digits, captured two ways.

`scanner` is the data set as shipped (bright ink on a dark background). `phone` is the same
digit as a different capture process delivers it, a deterministic transform of the scanner
image:

1. inverted polarity (dark ink on bright paper),
2. lower contrast (values squeezed into [PHONE_LOW, PHONE_HIGH]),
3. sensor noise (Gaussian, sigma PHONE_NOISE, seeded by the image's index),

then quantised to 8-bit like any camera output. Both captures are stored as uint8 8x8
images, so what the models train on is exactly what a PNG over HTTP delivers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED = 20151
CAPTURES = ("scanner", "phone")
PHONE_LOW, PHONE_HIGH, PHONE_NOISE = 0.30, 0.75, 0.08
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, validation, test


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x 8 x 8), labels and capture per image of one split."""

    images: np.ndarray
    labels: np.ndarray
    captures: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, capture: str) -> "Split":
        keep = self.captures == capture
        return Split(self.images[keep], self.labels[keep], self.captures[keep])


def scanner_capture(digits16: np.ndarray) -> np.ndarray:
    """scikit-learn's 0..16 ink values as 8-bit pixels."""
    return np.rint(digits16.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)


def phone_capture(digits16: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The phone transform, noise seeded per source image so any subset is reproducible."""
    ink = digits16.astype(np.float64) / 16.0
    paper = 1.0 - ink
    squeezed = PHONE_LOW + (PHONE_HIGH - PHONE_LOW) * paper
    noise = np.stack(
        [np.random.default_rng([SEED, int(i)]).normal(0.0, PHONE_NOISE, ink.shape[1:]) for i in indices]
    )
    return np.rint(np.clip(squeezed + noise, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (N x 8 x 8 values 0..16, labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def split_indices(n: int, labels: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Stratified train/validation/test indices of the source digits, fixed by the seed."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(len(idx) * SPLIT_FRACTIONS[0]))
        n_val = int(round(len(idx) * SPLIT_FRACTIONS[1]))
        parts["train"].append(idx[:n_train])
        parts["validation"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _captured(source: np.ndarray, labels: np.ndarray, idx: np.ndarray, capture: str) -> Split:
    images = scanner_capture(source[idx]) if capture == "scanner" else phone_capture(source[idx], idx)
    return Split(images, labels[idx], np.full(len(idx), capture))


def _concat(*splits: Split) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]),
        np.concatenate([s.labels for s in splits]),
        np.concatenate([s.captures for s in splits]),
    )


@dataclass(frozen=True)
class Incident:
    """The four data sets of the story. The test split is never used to train or calibrate."""

    baseline_train: Split
    retrained_train: Split
    validation: Split
    test: Split


def build_incident(phone_share: float = 0.03, seed: int = SEED) -> Incident:
    """Baseline trains on scanner images plus a `phone_share` sliver of phone images; the
    retrained model trains on every training digit in both captures (representative data).
    Validation and test hold every digit of their split in both captures."""
    source, labels = load_source()
    idx = split_indices(len(labels), labels, seed)
    train = idx["train"]
    n_phone = int(np.floor(phone_share * len(train) / (1.0 - phone_share)))
    phone_idx = np.sort(np.random.default_rng([seed, 1]).choice(train, size=n_phone, replace=False))
    both = lambda i: _concat(_captured(source, labels, i, "scanner"), _captured(source, labels, i, "phone"))  # noqa: E731
    return Incident(
        baseline_train=_concat(_captured(source, labels, train, "scanner"), _captured(source, labels, phone_idx, "phone")),
        retrained_train=both(train),
        validation=both(idx["validation"]),
        test=both(idx["test"]),
    )
