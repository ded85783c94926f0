"""Read a Prometheus text exposition into {(name, labels): value} for assertions and tables."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str, timeout: float = 30.0) -> Samples:
    # 30 s, not Prometheus's 10: a test asserts what a scrape says, and a shared machine has
    # stalled a freshly started worker's first scrape past 10 s once (never reproduced here)
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the samples of `name` whose labels include `match`."""
    want = set(match.items())
    return sum(v for (n, labels), v in samples.items() if n == name and want <= labels)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)}
