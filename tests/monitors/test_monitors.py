"""Each monitor against numpy/scipy on the same events; and the contract every monitor keeps."""

import json
import pickle

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from core.keys import LOW_CONFIDENCE_FLAG
from monitors.class_drift import PredictedClassDrift
from monitors.confidence import ConfidenceDrift
from monitors.confusion import ConfusionPair, KnownConfusions, reference_rate
from monitors.events import EventBatch
from monitors.representation import SubgroupRepresentation
from monitors.suite import MonitorSuite
from tests.monitors.conftest import MODELS, SUBGROUPS, page, random_events

PAIRS = [ConfusionPair("a", "b", margin=0.3), ConfusionPair("c", "d", margin=0.3, subgroups=("capture=phone",))]


def by(scores, **match):
    return [s for s in scores if all(getattr(s, k) == v for k, v in match.items())]


def feed(monitor, events, window):
    """Update with `events`; the time of the last one, and which events are still in the window."""
    monitor.update_many(events)
    now = float(events.t[-1])
    return now, np.floor(events.t) > np.floor(now) - window.n_buckets


def test_representation_shares_and_distance(window):
    """Live shares equal np.bincount shares; JS distance equals scipy against the training mix."""
    mon = SubgroupRepresentation(SUBGROUPS, {SUBGROUPS[0]: 0.97, SUBGROUPS[1]: 0.03}, window)
    now, recent = feed(mon, ev := random_events(2000, phone_share=0.2), window)
    scores = mon.results(now)
    live = np.bincount(ev.subgroup[recent], minlength=3)
    for i, key in enumerate(SUBGROUPS):
        assert by(scores, statistic="share", subgroup=key)[0].value == pytest.approx(live[i] / live.sum())
    assert by(scores, statistic="js_distance")[0].value == pytest.approx(jensenshannon(live, [0.97, 0.03, 0], base=2))


def test_representation_alarm_on_rising_share_only(window):
    """Phone at its 3% training share stays quiet; phone at 30% raises the phone CUSUM alarm."""
    quiet, loud = (SubgroupRepresentation(SUBGROUPS, {SUBGROUPS[0]: 0.97, SUBGROUPS[1]: 0.03}, window) for _ in "ab")
    calm, rising = random_events(3000, seed=4, phone_share=0.03), random_events(3000, seed=4, phone_share=0.3)
    quiet.update_many(calm)
    loud.update_many(rising)
    assert not any(s.alarm for s in quiet.results(float(calm.t[-1])))
    assert by(loud.results(float(rising.t[-1])), statistic="cusum", subgroup="capture=phone")[0].alarm


def test_class_drift_matches_scipy(profiles, window):
    """Per model and subgroup, JS distance of live predicted classes vs the profile's distribution."""
    mon = PredictedClassDrift(MODELS, profiles, SUBGROUPS, window)
    ev = random_events(3000)
    now, recent = feed(mon, ev, window)
    for m, model in enumerate(MODELS):
        rows = recent & (ev.model == m) & (ev.subgroup == 0)
        live = np.bincount(ev.predicted[rows], minlength=4)
        ref = profiles[m].subgroups[SUBGROUPS[0]].predicted_class_distribution
        score = by(mon.results(now), model=model, subgroup=SUBGROUPS[0])[0]
        assert score.value == pytest.approx(jensenshannon(live, ref, base=2)) and score.samples == rows.sum()


def test_confidence_rates_flags_and_collapse(profiles, window):
    """Low-confidence rate and mean equal numpy; the flag uses the reference p01; a collapse alarms."""
    mon = ConfidenceDrift(MODELS, profiles, SUBGROUPS, window)
    ev = random_events(3000)
    now, recent = feed(mon, ev, window)
    rows = recent & (ev.model == 0) & (ev.subgroup == 0)
    p05 = profiles[0].subgroups[SUBGROUPS[0]].confidence_quantiles["p05"]
    scores = by(mon.results(now), model="base", subgroup=SUBGROUPS[0])
    assert by(scores, statistic="low_confidence_rate")[0].value == pytest.approx(np.mean(ev.confidence[rows] < p05))
    assert by(scores, statistic="mean_confidence")[0].value == pytest.approx(ev.confidence[rows].mean())
    p01 = profiles[0].subgroups[SUBGROUPS[0]].confidence_quantiles["p01"]
    assert mon.flag(0, 0, p01 - 1e-6) and not mon.flag(0, 0, p01 + 1e-6)
    healthy = ConfidenceDrift(MODELS, profiles, SUBGROUPS, window)
    high = random_events(3000, seed=9)
    high = EventBatch(high.t, high.model, high.subgroup, high.predicted, np.full(len(high), 0.999), high.confusions)
    healthy.update_many(high)
    assert not any(s.alarm for s in healthy.results(float(high.t[-1])))
    assert any(s.alarm for s in by(mon.results(now), statistic="cusum"))  # uniform(0.2, 1) is a collapse here


def test_known_confusion_fires_on_close_second_only(profiles, window):
    """A pair fires when the target is emitted with the source within the margin, in its subgroups."""
    mon = KnownConfusions(PAIRS, MODELS, profiles, SUBGROUPS, window)
    probs = np.array([0.30, 0.45, 0.15, 0.10])  # emits b, a is 0.15 behind
    assert mon.fired(0, 0, probs, 1) == 0b01
    assert mon.fired(0, 0, np.array([0.05, 0.80, 0.1, 0.05]), 1) == 0  # a far behind
    assert mon.fired(0, 0, np.array([0.1, 0.1, 0.35, 0.45]), 3) == 0  # c->d only for phone
    assert mon.fired(0, 1, np.array([0.1, 0.1, 0.35, 0.45]), 3) == 0b10


def test_known_confusion_rates_and_reference(profiles, window):
    """Fire rates equal numpy counts; the reference is the subgroup's validation confusion rate."""
    mon = KnownConfusions(PAIRS, MODELS, profiles, SUBGROUPS, window)
    ev = random_events(3000, n_pairs=2)
    now, recent = feed(mon, ev, window)
    rows = recent & (ev.model == 1) & (ev.subgroup == 0)
    score = by(mon.results(now), model="fixed", subgroup=SUBGROUPS[0], pair="a->b", statistic="fire_rate")[0]
    assert score.value == pytest.approx(np.mean(ev.confusions[rows] & 1))
    ref = profiles[1].subgroups[SUBGROUPS[0]]
    want = ref.confusion_matrix[0][1] / ref.count
    assert score.reference == pytest.approx(want) == pytest.approx(reference_rate(profiles[1], SUBGROUPS[0], 0, 1))
    other = by(mon.results(now), model="fixed", subgroup="capture=other", pair="a->b", statistic="fire_rate")[0]
    all_ref = profiles[1].subgroups["all"]
    assert other.reference == pytest.approx(all_ref.confusion_matrix[0][1] / all_ref.count)
    assert not by(mon.results(now), subgroup=SUBGROUPS[0], pair="c->d")  # not watched outside phone


def test_known_confusion_cusum_is_the_larger_of_two_rises(profiles, window):
    """The published CUSUM is the larger of Page's recursions for a 3x and a 9x rise from the
    floored reference rate; a 10x rise alarms on the 9x test where the 3x one alone is below
    the threshold."""
    mon = KnownConfusions(PAIRS[:1], MODELS, profiles, SUBGROUPS, window)
    rng = np.random.default_rng(3)
    n = 200  # scanner only, base model: 4 s of 50 events, a->b fired on 6% of them (p0 is the 0.5% floor)
    ev = EventBatch(1_000.0 + np.arange(n) / 50, np.zeros(n, np.int64), np.zeros(n, np.int64),
                    np.ones(n, np.int64), np.full(n, 0.5), (rng.random(n) < 0.06).astype(np.int64))
    mon.update_many(ev)
    bucket = np.floor(ev.t).astype(int)
    hits = np.array([ev.confusions[bucket == b].sum() for b in np.unique(bucket)], dtype=float)
    trials = np.array([(bucket == b).sum() for b in np.unique(bucket)], dtype=float)
    p0 = np.clip(mon._expected[0, 0, 0], window.rate_floor, 1 - window.rate_floor)
    small, large = (page(hits, trials, p0, (r * p0 / (1 - p0)) / (1 + r * p0 / (1 - p0))) for r in (3.0, 9.0))
    score = by(mon.results(float(ev.t[-1])), model="base", subgroup=SUBGROUPS[0], statistic="cusum")[0]
    assert score.value == pytest.approx(max(small, large))
    assert small < window.cusum_threshold < large and score.alarm  # the second test is what alarms


def test_known_confusion_refuses_bad_pairs():
    """A pair with the same class twice or a margin out of range fails at construction."""
    with pytest.raises(ValueError, match="different"):
        ConfusionPair("a", "a", margin=0.3)
    with pytest.raises(ValueError, match="margin"):
        ConfusionPair("a", "b", margin=0.0)


@pytest.fixture
def suite_factory(profiles, window):
    return lambda: MonitorSuite(MODELS, profiles, SUBGROUPS, PAIRS, window)


def test_every_monitor_keeps_the_contract(suite_factory, profiles):
    """Every monitor updates, resets, pickles, and round-trips its state and its config
    (through JSON) to a monitor that publishes the same scores."""
    suite, suite_profiles = suite_factory(), profiles
    ev = random_events(500, n_pairs=2)
    suite.update_many(ev)
    now = float(ev.t[-1])
    for monitor in suite.monitors:
        before = monitor.results(now)
        assert before and all(s.monitor == monitor.name for s in before)
        clone = pickle.loads(pickle.dumps(monitor))
        assert [s.value for s in clone.results(now)] == pytest.approx([s.value for s in before], nan_ok=True)
        config = json.loads(json.dumps(monitor.get_config()))  # plain data
        rebuilt = type(monitor).from_config(config, profiles=suite_profiles)
        assert rebuilt.get_config() == monitor.get_config()
        rebuilt.load_state(monitor.state())
        assert [s.value for s in rebuilt.results(now)] == pytest.approx([s.value for s in before], nan_ok=True)
        monitor.reset()
        assert all(s.samples == 0 for s in monitor.results(now))


def test_two_workers_merged_equal_one_process(suite_factory):
    """Events split between two suites, shipped as state bytes and merged, publish exactly the
    scores one suite computes over all events (the multi-worker design in one test)."""
    ev = random_events(4000, seed=11, phone_share=0.25, n_pairs=2)
    one, w1, w2 = suite_factory(), suite_factory(), suite_factory()
    one.update_many(ev)
    side = np.random.default_rng(5).random(len(ev)) < 0.5
    pick = lambda mask: EventBatch(*(getattr(ev, f)[mask] for f in ("t", "model", "subgroup", "predicted", "confidence", "confusions")))  # noqa: E731
    w1.update_many(pick(side))
    w2.update_many(pick(~side))
    merged = suite_factory()
    for worker in (w1, w2):
        copy = suite_factory()
        copy.load_state(pickle.loads(pickle.dumps(worker.state())))  # as if shipped between processes
        merged.merge(copy)
    now = float(ev.t[-1])
    a, b = one.results(now).scores, merged.results(now).scores
    assert [(s.monitor, s.statistic, s.model, s.subgroup, s.pair, s.samples, s.alarm) for s in a] == \
           [(s.monitor, s.statistic, s.model, s.subgroup, s.pair, s.samples, s.alarm) for s in b]
    assert np.allclose([s.value for s in a], [s.value for s in b], equal_nan=True)


def test_a_failing_monitor_is_isolated(suite_factory):
    """A monitor that raises is reported by name; the other monitors still update and publish."""
    suite = suite_factory()

    def boom(*_):
        raise RuntimeError("broken")

    suite.monitors[1].update_many = boom
    suite.monitors[1].results = boom
    ev = random_events(300)
    assert suite.update_many(ev) == {"class_drift": "RuntimeError: broken"}
    results = suite.results(float(ev.t[-1]))
    assert results.errors == {"class_drift": "RuntimeError: broken"}
    assert {s.monitor for s in results.scores} == {"representation", "confidence", "known_confusion"}


def test_flags_name_what_fired(suite_factory, profiles):
    """flags() reports low confidence below the subgroup's reference 1st percentile and not above
    it, and each known confusion that fired, with the event's mask."""
    suite = suite_factory()
    p01 = profiles[0].subgroups[SUBGROUPS[1]].confidence_quantiles["p01"]
    assert 0.05 < p01 < 0.95  # room on both sides of the threshold

    def answered(top: float) -> np.ndarray:
        return np.array([top, *[(1 - top) / 3] * 3])

    low_flags, low_mask = suite.flags(0, 1, answered(p01 * 0.9), 0)
    high_flags, _ = suite.flags(0, 1, answered(min(1.0, p01 * 1.1 + 0.05)), 0)
    assert low_flags == [LOW_CONFIDENCE_FLAG] and low_mask == 0
    assert LOW_CONFIDENCE_FLAG not in high_flags
    flags, mask = suite.flags(0, 1, np.array([0.30, 0.45, 0.15, 0.10]), 1)
    assert "known_confusion:a->b" in flags and mask == 1


def test_calibrated_confidence_is_temperature_scaled_softmax(profiles, window):
    """calibrated_many() equals the top class of scipy's softmax(log(p) / T), T from the profile."""
    from scipy.special import softmax as scipy_softmax

    mon = ConfidenceDrift(MODELS, profiles, SUBGROUPS, window)
    probs = np.random.default_rng(4).dirichlet(np.ones(4), 20)
    for m in range(2):
        want = scipy_softmax(np.log(probs) / profiles[m].temperature, axis=1).max(axis=1)
        assert np.allclose(mon.calibrated_many(m, probs), want)


@pytest.mark.parametrize("seed,phone_share", [(3, 0.03), (4, 0.4), (5, 0.9)])
def test_decisions_are_the_alarms_results_publish(profiles, window, seed, phone_share):
    """Each monitor's `decisions` (the pipeline's cheap check after every drain) says True
    exactly as often as its published scores alarm, on quiet and shifted traffic, regions on."""
    from tests.monitors.conftest import make_profile

    with_codebook = [make_profile(1, regions=8), profiles[1]]
    suite = MonitorSuite(MODELS, with_codebook, SUBGROUPS, PAIRS, window, regions=True)
    ev = random_events(6000, seed=seed, phone_share=phone_share, n_pairs=2)
    low = np.random.default_rng(seed).random(len(ev)) < phone_share  # shifted traffic is unsure, too
    ev = EventBatch(ev.t, ev.model, ev.subgroup, ev.predicted, np.where(low, 0.25, ev.confidence), ev.confusions,
                    region=np.random.default_rng(seed).integers(0, 9, len(ev)))
    suite.update_many(ev)
    now = float(ev.t[-1])
    alarms = 0
    for monitor, decided in zip(suite.monitors, suite.decisions(now)):
        published = [s.alarm for s in monitor.results(now)]
        assert int(decided.sum()) == sum(published), monitor.name
        alarms += sum(published)
    if phone_share > 0.5:
        assert alarms > 0  # the comparison above saw alarms, not only silence


def test_estimated_accuracy_streams_atc_and_merges_across_workers(profiles, window):
    """Two workers' windows merged publish, per model and subgroup, the share of answers above the
    profile's ATC threshold (PublishedEstimate's credits over the same probabilities in one pass),
    and the mean calibrated confidence beside it."""
    from monitors.estimates import PublishedEstimate

    rng = np.random.default_rng(8)
    probs = rng.dirichlet(np.full(4, 0.4), 3000)
    ev = random_events(3000, seed=8, phone_share=0.3)
    workers = [ConfidenceDrift(MODELS, profiles, SUBGROUPS, window) for _ in range(2)]
    for w, part in enumerate((slice(0, 1700), slice(1700, None))):
        rows = np.arange(3000)[part]
        calibrated = np.array([workers[w].calibrated_many(int(ev.model[i]), probs[i][None])[0] for i in rows])
        workers[w].update_many(EventBatch(ev.t[rows], ev.model[rows], ev.subgroup[rows], ev.predicted[rows],
                                          probs[rows].max(axis=1), ev.confusions[rows], calibrated))
    merged = workers[0].merge(workers[1])
    now = float(ev.t[-1])
    recent = np.floor(ev.t) > np.floor(now) - window.n_buckets
    scores = merged.results(now)
    for m, model in enumerate(MODELS):
        estimate = PublishedEstimate.of(profiles[m])
        for s, key in enumerate(SUBGROUPS[:2]):
            rows = recent & (ev.model == m) & (ev.subgroup == s)
            assert rows.sum() > 50
            want = estimate.credit_probs(probs[rows], key).mean()
            assert 0.0 < want < 1.0  # the thresholds cut this traffic: credits are not all alike
            [got] = by(scores, statistic="estimated_accuracy", model=model, subgroup=key)
            assert got.value == pytest.approx(want, abs=1e-12) and got.samples == rows.sum()
            [mean] = by(scores, statistic="mean_calibrated_confidence", model=model, subgroup=key)
            assert mean.value == pytest.approx(workers[0].calibrated_many(m, probs[rows]).mean(), abs=1e-12)
