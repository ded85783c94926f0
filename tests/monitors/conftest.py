"""A small synthetic world for monitor tests: 2 models, 3 subgroups, 4 classes."""

import numpy as np
import pytest

from monitors.events import EventBatch, WindowConfig
from monitors.reference import InputSpec, build_profile

SUBGROUPS = ["capture=scanner", "capture=phone", "capture=other"]
MODELS = ["base", "fixed"]


def make_profile(seed: int, regions: int = 0):
    """A 4-class profile on 800 validation rows; `regions` > 0 adds a codebook of that many
    regions fitted on random 16-wide embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 800)
    logits = rng.normal(0, 1, (800, 4))
    logits[np.arange(800), labels] += 3.0
    groups = np.where(np.arange(800) % 10 == 0, SUBGROUPS[1], SUBGROUPS[0])
    embeddings = rng.normal(0, 1, (800, 16)).astype(np.float32) if regions else None
    return build_profile(logits=logits, labels=labels, subgroups=groups, class_names="abcd", input_spec=InputSpec(),
                         training_subgroup_shares={SUBGROUPS[0]: 0.97, SUBGROUPS[1]: 0.03},
                         embeddings=embeddings, regions=regions or 32)


@pytest.fixture(scope="session")
def profiles():
    return [make_profile(1), make_profile(2)]


@pytest.fixture
def window():
    return WindowConfig(bucket_s=1.0, n_buckets=60, min_samples=50, cusum_threshold=8.0)


def random_events(n: int, seed: int = 0, t0: float = 1_000.0, rate: float = 50.0, phone_share: float = 0.03,
                  n_pairs: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    return EventBatch(
        t=t0 + np.arange(n) / rate,
        model=rng.integers(0, 2, n),
        subgroup=np.where(rng.random(n) < phone_share, 1, 0),
        predicted=rng.integers(0, 4, n),
        confidence=rng.uniform(0.2, 1.0, n),
        confusions=rng.integers(0, 2 ** n_pairs, n) if n_pairs else np.zeros(n, np.int64),
    )


def page(successes, trials, p0, p1):
    """Page's recursion S_t = max(0, S_{t-1} + log-likelihood ratio of bucket t)."""
    s = np.zeros_like(p0)
    for x, n in zip(successes, trials):
        s = np.maximum(0.0, s + x * np.log(p1 / p0) + (n - x) * np.log((1 - p1) / (1 - p0)))
    return s
