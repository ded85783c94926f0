"""Batch-written metrics equal the one-by-one writes they replace: a histogram's buckets and sum
through `observe_many`, and a batch's counters through `AnswerCounts`."""

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from core import metrics


def samples(registry):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_observe_many_counts_every_value_in_the_bucket_observe_would():
    """Random values plus every bucket edge, zero, a negative and values past the last bound: each
    bucket and the count equal observe() one by one; the sum equals up to float rounding."""
    rng = np.random.default_rng(4)
    bounds = (0.2, 0.3, 0.5, 0.9, 1.0)
    values = [*rng.uniform(-0.1, 1.2, 500), *bounds, 0.0, -0.5, 1.0000001, float(np.nextafter(0.3, 1))]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "x", ["k"], buckets=bounds, registry=one).labels("a")
    h2 = Histogram("h", "x", ["k"], buckets=bounds, registry=many).labels("a")
    for v in values:
        h1.observe(v)
    metrics.observe_many(h2, values[:5])  # a few: observed one by one
    metrics.observe_many(h2, values[5:])  # many: through numpy
    a, b = samples(one), samples(many)
    assert {k: v for k, v in a.items() if k[0] != "h_sum"} == {k: v for k, v in b.items() if k[0] != "h_sum"}
    assert b[("h_sum", (("k", "a"),))] == pytest.approx(a[("h_sum", (("k", "a"),))], rel=1e-12)


def test_answer_counts_write_what_one_increment_per_answer_would():
    """Three answers over two label sets: predictions, confidence buckets, routed and guardrail actions move
    by what per-answer increments would have added."""
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    keys = [("classguard_predictions_total", dict(model="mx", subgroup="s1", predicted_class="3")),
            ("classguard_predictions_total", dict(model="my", subgroup="s1", predicted_class="abstained")),
            ("classguard_prediction_confidence_bucket", dict(model="mx", subgroup="s1", le="0.9")),
            ("classguard_prediction_confidence_count", dict(model="mx", subgroup="s1")),
            ("classguard_routed_total", dict(target="my", subgroup="s1")),
            ("classguard_guardrail_actions_total", dict(guardrail="g", action="abstain", subgroup="s1"))]
    before = [value(n, **labels) for n, labels in keys]
    counts = metrics.AnswerCounts()
    counts.answer("mx", "s1", "3", 0.85, False, [("g", "pass")])
    counts.answer("mx", "s1", "3", 0.95, False, [])
    counts.answer("my", "s1", "abstained", 0.4, True, [("route", "route"), ("g", "abstain")])
    assert [value(n, **labels) for n, labels in keys] == before  # nothing written before flush
    counts.flush()
    assert [value(n, **labels) - b for (n, labels), b in zip(keys, before)] == [2, 1, 1, 2, 1, 1]
