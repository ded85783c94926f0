"""Embedding regions: the codebook against scipy and numpy, and the region monitor against
numpy counts and Page's recursion, on Gaussian blobs small enough to run in seconds."""

import json
import pickle
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import cdist, jensenshannon

from monitors.events import WindowConfig
from monitors.new_regions import NEW_SLOTS
from monitors.regions import (KMEANS_ITERATIONS, MAX_REGIONS, NOVEL, Codebook, RegionMonitor, RegionReference,
                              fit_codebook)
from tests.monitors.conftest import page

DIM, N_VALIDATION = 12, 1500  # 0.99 * (1500 - 1) is not a whole number: no sample sits on novel_distance
GROUPS = np.array(["capture=scanner", "capture=phone", "capture=other"])


@dataclass(frozen=True)
class Events:
    """The three event columns RegionMonitor reads."""

    t: np.ndarray
    region: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, mask: np.ndarray) -> "Events":
        return Events(self.t[mask], self.region[mask], self.confidence[mask])


@pytest.fixture(scope="module")
def validation():
    rng = np.random.default_rng(7)
    centers = rng.normal(0.0, 4.0, (6, DIM))
    blob = rng.integers(0, 6, N_VALIDATION)
    x = (centers[blob] + rng.normal(size=(N_VALIDATION, DIM))).astype(np.float32)
    labels = blob % 3
    predicted = np.where(rng.random(N_VALIDATION) < 0.8, labels, (labels + 1) % 3)
    confidence = rng.beta(5, 2, N_VALIDATION)
    subgroups = GROUPS[np.where(blob == 5, 1, rng.integers(0, 3, N_VALIDATION))]
    return dict(embeddings=x, labels=labels, predicted=predicted, confidence=confidence, subgroups=subgroups,
                centers=centers)


def fit(validation, **kwargs):
    columns = {k: v for k, v in validation.items() if k != "centers"}
    return fit_codebook(**columns, **{"k": 8, "seed": 3, **kwargs})


@pytest.fixture(scope="module")
def codebook(validation):
    return fit(validation)


def owned(prototypes, x):
    """kmeans2's centroids less those no row is nearest to, by brute force."""
    prototypes = prototypes.astype(np.float32)
    return prototypes[np.unique(cdist(x, prototypes).argmin(axis=1))]


def brute_force(codebook, x):
    d = cdist(x.astype(np.float64), codebook.prototypes.astype(np.float64))
    return np.where(d.min(axis=1) > codebook.novel_distance, codebook.k, d.argmin(axis=1)), d.min(axis=1)


# -- the codebook -------------------------------------------------------------------------


def test_fit_is_deterministic_and_equals_kmeans2(validation, codebook):
    """Fitting twice with a seed gives the same codebook, another seed another one, and the
    prototypes are exactly scipy's kmeans2 centroids (same arguments) that own a sample."""
    assert fit(validation).to_dict() == codebook.to_dict()
    assert not np.array_equal(fit(validation, seed=4).prototypes, codebook.prototypes)
    x = validation["embeddings"]
    centroids, _ = kmeans2(x.astype(np.float64), 8, iter=KMEANS_ITERATIONS, minit="++", rng=3)
    assert codebook.prototypes.dtype == np.float32
    assert np.array_equal(codebook.prototypes, owned(centroids, x))


def test_empty_clusters_are_removed():
    """With 6 distinct points and k=10, kmeans2 repeats a point; only the 6 centroids that own
    samples are kept, equal to kmeans2's, and every kept region has validation samples."""
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(size=(6, 4)), 20, axis=0)
    n = len(x)
    with np.errstate(invalid="ignore", divide="ignore"), pytest.warns(UserWarning, match="empty"):
        centroids, _ = kmeans2(x, 10, iter=KMEANS_ITERATIONS, minit="++", rng=0)
    book = fit_codebook(x, labels=np.zeros(n), predicted=np.zeros(n), confidence=rng.random(n), subgroups=["a"] * n,
                        k=10, seed=0)
    assert book.k == 6 and len(book.regions) == 7 and book.names()[book.k] == NOVEL
    assert np.array_equal(book.prototypes, owned(centroids, x))
    assert all(r.count == 20 for r in book.regions[:-1])
    # every sample sits on its prototype: float32 cancellation must not turn a distance into NaN
    assert all(0.0 <= q < 1e-2 for q in book.distance_quantiles.values())
    assert np.array_equal(book.assign(book.prototypes), np.arange(6))


def test_assign_equals_brute_force(codebook, validation):
    """assign() is cdist's argmin, and novel exactly where the nearest distance exceeds
    novel_distance; for N=0, N=1 and float64 input too."""
    rng = np.random.default_rng(2)
    near = validation["centers"][rng.integers(0, 6, 400)] + rng.normal(0, 1.3, (400, DIM))
    x = np.vstack([near, rng.normal(0, 8, (100, DIM))]).astype(np.float32)
    want, nearest = brute_force(codebook, x)
    assert np.min(np.abs(nearest - codebook.novel_distance)) > 1e-4  # no point on the edge
    got = codebook.assign(x)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert 20 < np.sum(got == codebook.k) < 200 and len(np.unique(got)) == codebook.k + 1
    assert [int(codebook.assign(row[None])[0]) for row in x] == want.tolist()
    assert np.array_equal(codebook.assign(x.astype(np.float64)), want)
    empty = codebook.assign(np.zeros((0, DIM), np.float32))
    assert empty.shape == (0,) and empty.dtype == np.int64
    with pytest.raises(ValueError, match="embeddings must be"):
        codebook.assign(np.zeros((3, DIM + 1)))


def test_reference_statistics_equal_numpy(codebook, validation):
    """novel_distance is np.quantile of the validation nearest distances at novel_quantile; the
    novel share is the share beyond it; each region's share, accuracy, confidence, low-confidence
    rate and subgroup shares equal numpy on its samples."""
    x, conf = validation["embeddings"], validation["confidence"]
    region, nearest = brute_force(codebook, x)
    assert codebook.novel_distance == pytest.approx(np.quantile(nearest, 0.99), rel=1e-5)
    for key, q in {"q50": 0.5, "q90": 0.9, "q95": 0.95, "q99": 0.99, "q999": 0.999}.items():
        assert codebook.distance_quantiles[key] == pytest.approx(np.quantile(nearest, q), rel=1e-5)
    assert codebook.regions[-1].share == pytest.approx(np.mean(nearest > codebook.novel_distance)) == pytest.approx(0.01, abs=1e-3)
    assert codebook.low_confidence == np.quantile(conf, 0.1)
    assert sum(r.share for r in codebook.regions) == pytest.approx(1.0)
    for r, ref in enumerate(codebook.regions):
        rows = region == r
        keys, counts = np.unique(validation["subgroups"][rows], return_counts=True)
        assert ref.count == rows.sum() > 0 and ref.share == pytest.approx(rows.mean())
        assert ref.accuracy == pytest.approx(np.mean(validation["labels"][rows] == validation["predicted"][rows]))
        assert ref.mean_confidence == pytest.approx(conf[rows].mean())
        assert ref.confidence_quantiles == pytest.approx(
            {f"q{round(q * 100):02d}": np.quantile(conf[rows], q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)})
        assert ref.low_confidence_rate == pytest.approx(np.mean(conf[rows] < np.quantile(conf, 0.1)))
        assert ref.subgroup_shares == pytest.approx(dict(zip(keys.tolist(), counts / rows.sum())))


def test_a_subgroup_mix_reweights_the_reference_to_that_mix(validation):
    """With `subgroup_mix`, each region's share is its share of validation resampled to that mix:
    the weighted share of its samples (weights = mix share / validation share per subgroup),
    and subgroups left out of the mix keep their validation share; prototypes are unchanged."""
    groups = validation["subgroups"]
    mix = {str(GROUPS[0]): 0.6, str(GROUPS[1]): 0.2}  # capture=other is left out of it
    plain, mixed = fit(validation), fit(validation, subgroup_mix=mix)
    assert np.array_equal(plain.prototypes, mixed.prototypes)
    observed = {g: np.mean(groups == g) for g in np.unique(groups)}
    rest = 1.0 - observed[str(GROUPS[2])]  # the named subgroups split what the others leave, 3:1
    w = np.array([mix[g] / 0.8 * rest / observed[g] if g in mix else 1.0 for g in groups.tolist()])
    region, _ = brute_force(mixed, validation["embeddings"])
    for r, ref in enumerate(mixed.regions):
        assert ref.share == pytest.approx(w[region == r].sum() / w.sum())
        if ref.count == 0:
            continue
        assert ref.accuracy == pytest.approx(np.average(
            (validation["labels"] == validation["predicted"])[region == r], weights=w[region == r]))
    assert sum(r.share for r in mixed.regions) == pytest.approx(1.0)
    assert w[groups == GROUPS[0]].sum() / w.sum() == pytest.approx(0.75 * rest)
    assert w[groups == GROUPS[2]].sum() / w.sum() == pytest.approx(observed[str(GROUPS[2])])


def test_round_trip_through_json(codebook, validation):
    """to_dict() -> strict JSON -> from_dict() gives back the same codebook, NaN statistics of an
    empty region included, and the same assignments."""
    again = Codebook.from_dict(json.loads(json.dumps(codebook.to_dict(), allow_nan=False)))
    assert again.to_dict() == codebook.to_dict() and again.regions == codebook.regions
    assert again.prototypes.dtype == np.float32 and np.array_equal(again.prototypes, codebook.prototypes)
    assert np.array_equal(again.assign(validation["embeddings"]), codebook.assign(validation["embeddings"]))
    nan = float("nan")
    unseen = RegionReference(0, 0.0, {}, nan, nan, {"q50": nan}, nan)
    hollow = replace(codebook, regions=codebook.regions[:-1] + (unseen,))
    back = Codebook.from_dict(json.loads(json.dumps(hollow.to_dict(), allow_nan=False)))
    assert back.regions[-1].count == 0 and np.isnan(back.regions[-1].accuracy)
    assert np.isnan(back.regions[-1].confidence_quantiles["q50"])


def test_fit_refuses_bad_arguments(validation):
    """k=0, k=65, fewer samples than k and columns of the wrong length fail with a ValueError
    that says which."""
    with pytest.raises(ValueError, match=rf"k must be within 1..{MAX_REGIONS}, got 0"):
        fit(validation, k=0)
    with pytest.raises(ValueError, match=r"k must be within 1..64, got 65"):
        fit(validation, k=MAX_REGIONS + 1)
    few = {k: v[:10] for k, v in validation.items() if k != "centers"}
    with pytest.raises(ValueError, match="needs at least 32 embeddings, got 10"):
        fit_codebook(**few, k=32)
    with pytest.raises(ValueError, match="one entry per embedding.*'labels': 5"):
        fit_codebook(**{**few, "labels": few["labels"][:5]}, k=4)


# -- the monitor --------------------------------------------------------------------------

REGIONS = ["r00", "r01", "r02", "r03", NOVEL]
SHARES = np.array([0.4, 0.25, 0.2, 0.14, 0.01])
LOW_RATES = np.array([0.1, 0.05, 0.2, 0.1, 0.3])
LOW = 0.5  # confidence below this is low


@pytest.fixture
def window():
    return WindowConfig(bucket_s=1.0, n_buckets=60, min_samples=50, cusum_threshold=8.0)


def monitor(window):
    return RegionMonitor(REGIONS, SHARES.tolist(), LOW_RATES.tolist(), LOW, window)


def stream(n, seed=0, t0=1_000.0, rate=50.0, shares=SHARES, low_rates=LOW_RATES, unassigned=0.0):
    """Events drawn at `shares`, low confidence at each region's `low_rates`; a share
    `unassigned` gets region -1."""
    rng = np.random.default_rng(seed)
    region = rng.choice(len(shares), n, p=shares)
    low = rng.random(n) < np.asarray(low_rates)[region]
    confidence = np.where(low, rng.uniform(0.05, LOW, n), rng.uniform(LOW, 1.0, n))
    region[rng.random(n) < unassigned] = -1
    return Events(t0 + np.arange(n) / rate, region, confidence)


def by(scores, **match):
    return [s for s in scores if all(getattr(s, k) == v for k, v in match.items())]


def test_monitor_shares_and_rates_equal_numpy(window):
    """Per region, the live share, low-confidence rate and sample count equal numpy over the
    window's events (unassigned ones left out), and the whole-mix JS distance equals scipy's."""
    mon, ev = monitor(window), stream(5000, seed=1, unassigned=0.1)
    mon.update_many(ev)
    now = float(ev.t[-1])
    recent = (np.floor(ev.t) > np.floor(now) - window.n_buckets) & (ev.region >= 0)
    live = np.bincount(ev.region[recent], minlength=5)
    scores = mon.results(now)
    for i, name in enumerate(REGIONS):
        mine, key = ev.region == i, f"region={name}"
        assert by(scores, statistic="share", subgroup=key)[0].value == pytest.approx(live[i] / live.sum())
        assert by(scores, statistic="share", subgroup=key)[0].reference == SHARES[i]
        rate = by(scores, statistic="low_confidence_rate", subgroup=key)[0]
        assert rate.value == pytest.approx(np.mean(ev.confidence[recent & mine] < LOW)) and rate.samples == live[i]
        assert rate.reference == LOW_RATES[i]
        assert by(scores, statistic="samples", subgroup=key)[0].value == live[i]
    js = by(scores, statistic="js_distance")[0]
    assert js.subgroup == "" and js.value == pytest.approx(jensenshannon(live, SHARES, base=2))
    assert js.samples == live.sum()


def rise(p, window):
    p0 = np.clip(p, window.rate_floor, 1 - window.rate_floor)
    odds = window.rate_ratio * p0 / (1 - p0)
    return p0, odds / (1 + odds)


def test_cusums_equal_page_recursion(window):
    """The share and low-confidence CUSUMs equal Page's recursion over numpy's per-second
    counts, with H1 the rate whose odds are rate_ratio times the reference's."""
    mon = monitor(window)
    ev = stream(3000, seed=2, shares=np.array([0.3, 0.25, 0.2, 0.2, 0.05]), low_rates=[0.1, 0.05, 0.4, 0.1, 0.3])
    mon.update_many(ev)
    now = float(ev.t[-1])
    bucket = np.floor(ev.t).astype(int)
    keep = bucket > np.floor(now) - window.n_buckets
    buckets = np.unique(bucket[keep])
    events = np.array([np.bincount(ev.region[keep & (bucket == b)], minlength=5) for b in buckets])
    low = np.array([np.bincount(ev.region[keep & (bucket == b) & (ev.confidence < LOW)], minlength=5)
                    for b in buckets])
    share_cusum = page(events, events.sum(axis=1, keepdims=True), *rise(SHARES, window))
    low_cusum = page(low, events, *rise(LOW_RATES, window))
    scores = mon.results(now)
    assert [s.value for s in by(scores, statistic="share_cusum")] == pytest.approx(share_cusum)
    assert [s.value for s in by(scores, statistic="low_confidence_cusum")] == pytest.approx(low_cusum)
    assert share_cusum[4] > window.cusum_threshold and low_cusum[2] > window.cusum_threshold  # the test has teeth


def test_no_alarm_under_min_samples(window):
    """A CUSUM over its threshold does not alarm until the window (for shares) or the region
    (for low confidence) holds min_samples events."""
    mon = monitor(window)
    few = Events(1_000.0 + np.arange(45) / 10, np.full(45, 4), np.full(45, 0.1))  # all novel, all low
    mon.update_many(few)
    scores = by(mon.results(1_005.0), subgroup="region=novel")
    assert by(scores, statistic="share_cusum")[0].value > window.cusum_threshold
    assert by(scores, statistic="low_confidence_cusum")[0].value > window.cusum_threshold
    assert not any(s.alarm for s in mon.results(1_005.0))
    mon.update_many(Events(1_005.0 + np.arange(30) / 10, np.zeros(30, np.int64), np.full(30, 0.9)))
    scores = by(mon.results(1_008.0), subgroup="region=novel")
    assert by(scores, statistic="share_cusum")[0].alarm  # 75 events in the window
    assert not by(scores, statistic="low_confidence_cusum")[0].alarm  # 45 novel events
    mon.update_many(Events(1_008.0 + np.arange(10) / 10, np.full(10, 4), np.full(10, 0.1)))
    assert by(mon.results(1_009.0), subgroup="region=novel", statistic="low_confidence_cusum")[0].alarm


def alarms(scores):
    return {(s.statistic, s.subgroup) for s in scores if s.alarm}


def test_alarm_when_one_region_share_jumps():
    """With the default window, r03 jumping from 14% to 40% of the traffic raises r03's share
    alarm and no other; r01's low-confidence rate jumping from 5% to 40% raises its alarm only."""
    window = WindowConfig()
    calm = stream(20_000, seed=3, rate=100.0)
    jumped = stream(3_000, seed=4, t0=float(calm.t[-1]) + 0.01, rate=100.0,
                    shares=np.array([0.25, 0.15, 0.19, 0.40, 0.01]))
    mon = monitor(window)
    for part in (calm, jumped):
        mon.update_many(part)
    assert alarms(mon.results(float(jumped.t[-1]))) == {("share_cusum", "region=r03")}
    unsure = stream(3_000, seed=5, t0=float(calm.t[-1]) + 0.01, rate=100.0, low_rates=[0.1, 0.4, 0.2, 0.1, 0.3])
    mon = monitor(window)
    for part in (calm, unsure):
        mon.update_many(part)
    assert alarms(mon.results(float(unsure.t[-1]))) == {("low_confidence_cusum", "region=r01")}


def test_stationary_stream_never_alarms():
    """100k events at 100/s drawn at the reference shares and rates, checked after every
    one-second bucket with the default window: not one alarm."""
    window, ev = WindowConfig(), stream(100_000, seed=6, rate=100.0)
    mon, fired = monitor(window), 0
    for start in range(0, len(ev), 100):
        part = ev[slice(start, start + 100)]
        mon.update_many(part)
        fired += sum(s.alarm for s in mon.results(float(part.t[-1])))
    assert fired == 0
    assert by(mon.results(float(ev.t[-1])), statistic="samples", subgroup="region=novel")[0].value > 0


def test_merged_halves_equal_one_monitor(window):
    """Two monitors fed random halves of a stream, merged, hold exactly the state of one
    monitor fed all of it."""
    ev = stream(4000, seed=8, unassigned=0.05)
    one, a, b = monitor(window), monitor(window), monitor(window)
    one.update_many(ev)
    side = np.random.default_rng(9).random(len(ev)) < 0.5
    a.update_many(ev[side])
    b.update_many(ev[~side])
    merged, whole = a.merge(b).state(), one.state()
    assert np.array_equal(merged["ids"], whole["ids"]) and np.array_equal(merged["counts"], whole["counts"])


def test_unassigned_events_are_ignored(window):
    """Events with region -1 change nothing: the state equals that of the assigned events alone."""
    ev = stream(2000, seed=10, unassigned=0.3)
    with_unassigned, without = monitor(window), monitor(window)
    with_unassigned.update_many(ev)
    without.update_many(ev[ev.region >= 0])
    assert np.array_equal(with_unassigned.state()["counts"], without.state()["counts"])
    assert with_unassigned.state()["counts"].sum() == np.sum(ev.region >= 0) < len(ev)


def test_monitor_keeps_the_contract(codebook, window):
    """from_codebook() takes the codebook's names, shares and rates, then the new regions'
    empty slots (share 0); the monitor pickles, round-trips its config through JSON and its
    state, and resets to no samples."""
    mon = RegionMonitor.from_codebook(codebook, window)
    new = len(codebook.names()) - codebook.k - 1
    assert new == NEW_SLOTS and mon.regions == codebook.names()
    assert mon.reference_shares == [r.share for r in codebook.regions] + [0.0] * new
    assert mon.low_confidence_rates[:codebook.k + 1] == [r.low_confidence_rate for r in codebook.regions]
    assert all(np.isnan(mon.low_confidence_rates[codebook.k + 1:]))
    assert mon.low_confidence == codebook.low_confidence
    even = np.full(codebook.k + 1, 1 / (codebook.k + 1))
    ev = stream(500, seed=11, shares=even, low_rates=np.full(codebook.k + 1, 0.1))
    mon.update_many(ev)
    now = float(ev.t[-1])
    before = [s.value for s in mon.results(now)]
    assert [s.value for s in pickle.loads(pickle.dumps(mon)).results(now)] == pytest.approx(before, nan_ok=True)
    rebuilt = RegionMonitor.from_config(json.loads(json.dumps(mon.get_config())))
    assert json.dumps(rebuilt.get_config()) == json.dumps(mon.get_config())  # as text: NaN != NaN
    rebuilt.load_state(mon.state())
    assert [s.value for s in rebuilt.results(now)] == pytest.approx(before, nan_ok=True)
    mon.reset()
    assert all(s.samples == 0 for s in mon.results(now))
    with pytest.raises(ValueError, match="one reference share and one low-confidence rate per region"):
        RegionMonitor(REGIONS, SHARES[:3].tolist(), LOW_RATES.tolist(), LOW, window)


def test_region_without_validation_rate_is_held_to_the_overall_rate(window):
    """A NaN low-confidence rate (a region validation never reached) is replaced by the
    share-weighted validation-wide rate, so its CUSUM stays a number and can alarm."""
    rates = [*LOW_RATES[:-1], float("nan")]
    mon = RegionMonitor(REGIONS, [*SHARES[:-1] / SHARES[:-1].sum(), 0.0], rates, LOW, window)
    mon.update_many(Events(1_000.0 + np.arange(200) / 10, np.full(200, 4), np.full(200, 0.1)))
    novel = by(mon.results(1_020.0), subgroup="region=novel")
    want = np.sum(SHARES[:-1] * LOW_RATES[:-1]) / SHARES[:-1].sum()
    assert by(novel, statistic="low_confidence_rate")[0].reference == pytest.approx(want)
    assert by(novel, statistic="low_confidence_cusum")[0].alarm
    assert np.isnan(mon.get_config()["low_confidence_rates"][-1])  # the configuration keeps what it was given


def test_the_upper_bounds_are_jeffreys_quantiles_at_the_effective_sample_size(validation):
    """share_upper and low_confidence_upper are the 95% quantiles of Beta(x + 1/2, n - x + 1/2)
    (scipy) at the weighted sample's effective size, and never below the point estimate."""
    from scipy.stats import beta

    mix = {str(GROUPS[0]): 0.9, str(GROUPS[1]): 0.1}
    codebook = fit(validation, subgroup_mix=mix)
    groups = validation["subgroups"]
    observed = {g: np.mean(groups == g) for g in np.unique(groups)}
    rest = 1.0 - observed[str(GROUPS[2])]
    w = np.array([mix[g] * rest / observed[g] if g in mix else 1.0 for g in groups.tolist()])
    w /= w.sum()
    region, _ = brute_force(codebook, validation["embeddings"])
    low = validation["confidence"] < codebook.low_confidence
    for r, ref in enumerate(codebook.regions):
        n_all = 1.0 / np.sum(w ** 2)
        assert ref.share_upper == pytest.approx(beta.ppf(0.95, ref.share * n_all + 0.5, (1 - ref.share) * n_all + 0.5))
        assert ref.share_upper >= ref.share
        if ref.count:
            wr = w[region == r]
            n_r = wr.sum() ** 2 / np.sum(wr ** 2)
            rate = np.average(low[region == r], weights=wr)
            assert ref.low_confidence_upper == pytest.approx(beta.ppf(0.95, rate * n_r + 0.5, (1 - rate) * n_r + 0.5))


def test_the_rise_tests_start_from_the_bounds_and_the_mix_distance_waits_for_enough_events(window):
    """Given bounds, a share that sits between the point estimate and its bound raises no share
    alarm (it does against the point estimate); the whole-mix distance alarms only from 20
    events per region."""
    from monitors.regions import JS_SAMPLES_PER_REGION

    shares = np.array([0.37, 0.25, 0.2, 0.14, 0.04])  # novel at 4x its point estimate, within its bound
    events = stream(3000, shares=shares)
    point, bounded = monitor(window), RegionMonitor(REGIONS, SHARES.tolist(), LOW_RATES.tolist(), LOW, window,
                                                    np.minimum(SHARES * 5, 0.9).tolist(), (LOW_RATES * 2).tolist())
    for m in (point, bounded):
        m.update_many(events)
    now = float(events.t.max())
    alarms = lambda m: {s.subgroup for s in m.results(now) if s.alarm and s.statistic == "share_cusum"}  # noqa: E731
    assert alarms(point) and not alarms(bounded)
    few = RegionMonitor(REGIONS, SHARES.tolist(), LOW_RATES.tolist(), LOW, window)
    skewed = stream(JS_SAMPLES_PER_REGION * len(REGIONS) - 1, shares=np.eye(len(REGIONS))[0])
    few.update_many(skewed)
    [js] = [s for s in few.results(float(skewed.t.max())) if s.statistic == "js_distance"]
    assert js.value > window.js_threshold and not js.alarm
