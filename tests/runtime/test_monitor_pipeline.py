"""The service's monitor pipeline: bounded, isolated from failures, and one answer across workers."""

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import MonitorsConfig
from monitors.events import EventBatch
from runtime.monitor_pipeline import MonitorPipeline
from tests.monitors.conftest import MODELS, SUBGROUPS, make_profile, random_events

PAIRS = [{"source": "a", "target": "b", "margin": 0.3}]


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def make_pipeline(tmp_path):
    profiles = [make_profile(1), make_profile(2)]

    def make(**overrides):
        config = MonitorsConfig(**{"state_dir": tmp_path, "min_samples": 20, "known_confusions": PAIRS, **overrides})
        return MonitorPipeline(config, MODELS, profiles, SUBGROUPS)

    return make


def test_full_queue_drops_and_counts_without_blocking(make_pipeline):
    """With room for 5 events, 12 predictions all get flags; 7 events are dropped and counted."""
    pipeline = make_pipeline(queue_size=5)
    before = value("classguard_monitor_events_dropped_total")
    probs = np.array([0.3, 0.45, 0.15, 0.1])
    flags = [pipeline.observe("base", "capture=phone", probs, 1) for _ in range(12)]
    assert all("known_confusion:a->b" in f for f in flags)
    assert value("classguard_monitor_events_dropped_total") == before + 7
    assert pipeline.drain() == 5


def test_failing_monitor_is_counted_and_others_publish(make_pipeline):
    """A monitor that raises is counted under its name; the rest still publish scores."""
    pipeline = make_pipeline()
    pipeline.suite.monitors[1].update_many = lambda events: 1 / 0
    before = value("classguard_monitor_errors_total", monitor="class_drift")
    for _ in range(30):
        pipeline.observe("base", "capture=scanner", np.array([0.7, 0.1, 0.1, 0.1]), 0)
    pipeline.drain()
    scores = pipeline.publish()
    assert value("classguard_monitor_errors_total", monitor="class_drift") == before + 1
    shares = [s for s in scores if s.monitor == "representation" and s.statistic == "share"]
    assert shares and shares[0].samples == 30


def test_monitor_raising_on_the_request_path_costs_flags_not_the_answer(make_pipeline):
    """If computing a prediction's flags raises, observe() returns no flags and counts the
    failure; the next prediction is observed normally once the fault is gone."""
    pipeline = make_pipeline()
    healthy = pipeline.suite.flags
    pipeline.suite.flags = lambda *args: 1 / 0
    before = value("classguard_monitor_errors_total", monitor="observe")
    probs = np.array([0.3, 0.45, 0.15, 0.1])
    assert pipeline.observe("base", "capture=phone", probs, 1) == []
    assert value("classguard_monitor_errors_total", monitor="observe") == before + 1
    pipeline.suite.flags = healthy
    assert "known_confusion:a->b" in pipeline.observe("base", "capture=phone", probs, 1)


def test_workers_sharing_a_state_dir_publish_one_process_answer(make_pipeline):
    """Two pipelines that saw halves of the traffic publish, through their state files, the
    same scores as one pipeline that saw all of it (the multi-worker design end to end)."""
    events = random_events(3000, seed=2, phone_share=0.3, n_pairs=1)
    half = np.random.default_rng(0).random(len(events)) < 0.5
    pick = lambda m: EventBatch(*(getattr(events, f)[m] for f in ("t", "model", "subgroup", "predicted", "confidence", "confusions")))  # noqa: E731
    worker_a, worker_b = make_pipeline(), make_pipeline()
    worker_b.state_file = worker_b.state_file.with_name("worker-other.npz")
    worker_a.suite.update_many(pick(half))
    worker_b.suite.update_many(pick(~half))
    now = float(events.t[-1])
    worker_b.publish(now)
    published = worker_a.publish(now)

    (worker_a.state_dir / "alone").mkdir()
    single = make_pipeline(state_dir=worker_a.state_dir / "alone")
    single.suite.update_many(events)
    expected = single.publish(now)
    key = lambda s: (s.monitor, s.statistic, s.model, s.subgroup, s.pair, s.samples, s.alarm)  # noqa: E731
    assert [key(s) for s in published] == [key(s) for s in expected]
    assert np.allclose([s.value for s in published], [s.value for s in expected], equal_nan=True)
    assert value("classguard_monitor_window_samples", monitor="representation", model="", subgroup="") == 3000


def test_corrupt_state_file_is_counted_and_skipped(make_pipeline):
    """A garbage file from another worker is counted as a state error; publishing goes on."""
    pipeline = make_pipeline()
    (pipeline.state_dir / "worker-999.npz").write_bytes(b"not a numpy file")
    before = value("classguard_monitor_errors_total", monitor="state")
    assert pipeline.publish()
    assert value("classguard_monitor_errors_total", monitor="state") == before + 1


def test_observe_many_equals_observe_one_by_one(make_pipeline):
    """Over random batches (both models mixed, every subgroup, near-ties between a pair's classes, rows
    at low confidence, regions), observe_many's numpy path returns each answer's flags, queues the same events (but
    their time and order) and moves the anomaly and known-confusion counters as observe one by one does."""
    rng = np.random.default_rng(12)
    one, many = make_pipeline(queue_size=10**6), make_pipeline(queue_size=10**6)
    counters = [("classguard_anomalies_total", dict(kind=k, model=m, subgroup=s))
                for k in ("low_confidence", "known_confusion") for m in MODELS for s in SUBGROUPS]
    counters += [("classguard_known_confusion_detections_total", dict(pair="a->b", model=m, subgroup=s))
                 for m in MODELS for s in SUBGROUPS]
    for _ in range(30):
        n = int(rng.integers(1, 40))
        probs = rng.dirichlet(np.full(4, 0.7), n).astype(np.float32)
        probs[: n // 3, 1] += 0.2  # `b` ahead of `a` by less than the margin on some rows
        probs /= probs.sum(axis=1, keepdims=True)
        models = [MODELS[i] for i in rng.integers(0, 2, n)]
        keys = [SUBGROUPS[i] for i in rng.integers(0, len(SUBGROUPS), n)]
        regions = rng.integers(-1, 5, n).tolist()
        before = [value(name, **labels) for name, labels in counters]
        expected = [one.observe(m, k, p, int(np.argmax(p)), r) for m, k, p, r in zip(models, keys, probs, regions)]
        moved = [value(name, **labels) - b for (name, labels), b in zip(counters, before)]
        before = [value(name, **labels) for name, labels in counters]
        assert many._observe_many(models, keys, list(probs), regions) == expected  # numpy, whatever the size
        assert [value(name, **labels) - b for (name, labels), b in zip(counters, before)] == moved
    # a batch's events queue model by model: order is free; one by one, they are calibrated when drained
    events_one = sorted(e[1:] for e in one._calibrated(list(one._queue)))
    events_many = sorted(e[1:] for e in many._calibrated(list(many._queue)))
    assert events_many == events_one and any(e[4] for e in events_one) and len(events_one) > 300


def test_a_new_alarm_publishes_at_the_next_drain_not_the_next_recompute(make_pipeline, monkeypatch):
    """With a recompute period of 300 s, an alarm that appears between recomputes is published
    by the next tick (the drain's decision check), once per edge: a tick that finds the same
    alarm again publishes nothing."""
    monkeypatch.setattr("runtime.monitor_pipeline.EARLY_PUBLISH_GAP", 0.0)
    pipeline = make_pipeline(recompute_seconds=300)
    probs = np.array([0.7, 0.1, 0.1, 0.1])
    for _ in range(50):
        pipeline.observe("base", "capture=scanner", probs, 0)
    pipeline.tick()  # the first publish, the phone share quiet
    phone = ("representation", "cusum", "", "capture=phone", "")
    assert phone not in pipeline.alarming
    first = pipeline._last_publish
    for _ in range(200):  # phone was 3% of training; now it is all the traffic
        pipeline.observe("base", "capture=phone", probs, 0)
    pipeline.tick()
    assert phone in pipeline.alarming
    assert pipeline._last_publish > first
    published = pipeline._last_publish
    pipeline.observe("base", "capture=phone", probs, 0)
    pipeline.tick()
    assert pipeline._last_publish == published


def test_a_quiet_drain_costs_no_decision_check(make_pipeline, monkeypatch):
    """A tick that drained nothing runs no decision rule (an idle service spends nothing)."""
    pipeline = make_pipeline(recompute_seconds=300)
    pipeline.tick()
    monkeypatch.setattr(pipeline.suite, "decisions", lambda now: 1 / 0)
    pipeline.tick()  # would raise if it checked
