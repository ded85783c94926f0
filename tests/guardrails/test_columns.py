"""The batch form of a chain decides what the per-image form decides, answer by answer, over
random batches, chains, flags, alerts and regions."""

import numpy as np

from guardrails.answers import Abstain, AbstainBelow, AllowAll, ConfusionGuard, SuppressLabels
from guardrails.chain import Chain
from guardrails.columns import AnswerColumns, RequestColumns
from guardrails.core import Answer
from guardrails.routing import Route, Shadow

LABELS = tuple("0123456789")
KEYS = ["capture=phone", "capture=scanner", "capture=other"]
REGIONS = ["r00", "r01", "novel", None]
FLAGS = ["low_confidence", "known_confusion:6->0", "known_confusion:4->9"]
ALERTS = ["representation", "confidence", "known_confusion"]


def some(rng, values, none=0.3):
    """A random non-empty subset of `values`, or None."""
    if rng.random() < none:
        return None
    return [str(v) for v in rng.choice(values, size=int(rng.integers(1, len(values) + 1)), replace=False)]


def random_guardrail(rng):
    """One of the seven guardrail types with random settings (suppress_labels twice as often)."""
    kind = int(rng.integers(0, 8))
    regions = some(rng, REGIONS[:3], none=0.6)
    subgroups = some(rng, KEYS, none=0.5)
    if kind == 0:
        return AllowAll()
    if kind == 1:
        return SuppressLabels(some(rng, LABELS, none=0)[:3], floor=float(rng.choice([0.0, 0.3, 0.6, 1.0])),
                              subgroups=subgroups, regions=regions)
    if kind == 2:
        return Abstain(subgroups=subgroups or KEYS[:1], regions=regions)
    if kind == 3:
        return AbstainBelow(float(rng.choice([0.2, 0.5, 0.8])), {KEYS[0]: float(rng.choice([0.3, 0.9]))})
    if kind == 4:
        return ConfusionGuard(str(rng.choice(["abstain", "suppress"])), floor=float(rng.choice([0.1, 0.5])),
                              pairs=some(rng, ["6->0", "4->9"]), subgroups=subgroups, regions=regions)
    if kind == 5:
        canary = float(rng.choice([0.3, 1.0])) if rng.random() < 0.4 else None
        return Route("other", subgroups=subgroups, regions=regions, flags=some(rng, FLAGS, none=0.6),
                     alerts=some(rng, ALERTS, none=0.7), canary=canary)
    if kind == 6:
        return Shadow("other", share=float(rng.choice([0.0, 0.2, 1.0])), subgroups=subgroups, regions=regions)
    return SuppressLabels([str(rng.integers(0, 10))], subgroups=subgroups)


def random_batch(rng, n):
    keys = [str(k) for k in rng.choice(KEYS, size=n)]
    alerts = {k: frozenset(some(rng, ALERTS, none=0.5) or ()) for k in KEYS}
    requests = RequestColumns([f"id-{rng.integers(1 << 30)}" for _ in range(n)],
                              [dict([k.split("=")]) for k in keys], keys, alerts)
    requests.place([REGIONS[int(i)] for i in rng.integers(0, len(REGIONS), size=n)])
    # rounded probabilities: ties within a row, as float32 softmax outputs have
    probs = np.round(rng.dirichlet(np.full(10, 0.3), size=n), 1).astype(np.float32)
    flags = [tuple(f for f in FLAGS if rng.random() < 0.25) for _ in range(n)]
    return requests, probs, flags


def test_batch_decisions_equal_per_image_decisions():
    """Routes (before and after the primary), answer guardrails and shadows on 300 random chains
    and batches: every row's route decision, label, suppressed classes and trace are the ones the
    per-image calls give."""
    rng = np.random.default_rng(16)
    for _ in range(300):
        chain = Chain([random_guardrail(rng) for _ in range(int(rng.integers(1, 6)))])
        n = int(rng.integers(1, 40))
        requests, probs, flags = random_batch(rng, n)
        rows = np.arange(n)
        each = [requests.request(i) for i in rows]
        assert chain.route_many(requests, rows) == {
            i: d for i in rows.tolist() if (d := chain.route(each[i])) is not None}
        assert chain.route_many(requests, rows[::2], flags) == {
            i: d for i in rows[::2].tolist() if (d := chain.route(each[i], flags[i])) is not None}
        assert chain.shadows_many(requests) == [chain.shadows(r) for r in each]

        answers = AnswerColumns("m", LABELS, probs, flags, rows)
        chain.answer_many(requests, answers)
        for i in rows.tolist():
            expected = chain.answer(each[i], Answer.of("m", LABELS, probs[i], flags[i]))
            got = answers.answer(i)
            assert (got.label, got.suppressed, got.decisions) == (expected.label, expected.suppressed,
                                                                 expected.decisions)


def test_a_block_of_some_rows_reads_each_rows_own_request():
    """Answers for rows 1 and 3 of a batch are judged on those rows' subgroups, not rows 0 and 1."""
    requests = RequestColumns(["a", "b", "c", "d"], [{}] * 4,
                              ["capture=scanner", "capture=phone", "capture=scanner", "capture=scanner"], {})
    probs = np.tile(np.eye(10, dtype=np.float32)[0], (2, 1))
    answers = AnswerColumns("m", LABELS, probs, [(), ()], np.array([1, 3]))
    Chain([Abstain(subgroups=["capture=phone"])]).answer_many(requests, answers)
    assert answers.label.tolist() == [-1, 0]
