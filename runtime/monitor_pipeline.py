"""The monitor pipeline of one worker: per-prediction flags inline, everything else off the
request path, and one published answer however many workers there are.

Request path: `observe()` computes the prediction's flags (O(pairs)) and appends one tuple
to a bounded queue; a full queue drops the event and counts it, never blocks.

Background (a thread, every `DRAIN_SECONDS`): drain the queue into the worker's own monitor
suite and, when it got events, run its decision rules alone (no scores built: 1-2 ms for 20
subgroups x 2 models with the regions, `make bench-monitors`); a rule that newly fires
publishes at once, so an alarm waits a drain, not a recompute period (at most one such early
publish every `EARLY_PUBLISH_GAP` seconds). Every `recompute_seconds`: write the suite's
window state to `<state_dir>/<pid>.npz` (atomic rename), merge every live worker's file into
a fresh suite and publish its scores, after looking for new regions (runtime/new_regions.py).
Windows are epoch-aligned time buckets, so the merge is exactly what one process would count
over all workers' traffic; every worker publishes the same numbers, and the gauges keep the
most recent.

In a fleet (`fleet` set: store.fleet_windows), each publish instead writes the worker's
changed buckets to PostgreSQL and reads the fleet's totals, so every replica publishes the
whole fleet's statistics. When that store cannot be reached, the worker falls back to its
replica's own view (the file merge above) and says so (`classguard_fleet_view_degraded`).
Events are stamped, and windows read, in fleet time (core.clock: this host's clock corrected
by the database's, measured at each exchange), so a replica whose clock is wrong still counts
its events in the buckets the others count theirs in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections import Counter, deque
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from core import metrics
from core.batches import NUMPY_FROM
from core.clock import CLOCK
from core.config import MonitorsConfig
from core.keys import LOW_CONFIDENCE_FLAG
from monitors.confusion import ConfusionPair
from monitors.events import COLUMN, EVENT_COLUMNS, EventBatch, Score, WindowConfig
from monitors.reference import ReferenceProfile
from monitors.suite import MonitorSuite
from runtime.probability_rows import rows_of
from store.database import StoreUnavailable

if TYPE_CHECKING:
    from runtime.new_regions import NewRegionTracker
    from store.fleet_windows import FleetWindows

log = logging.getLogger("classguard.monitors")
# how often the worker's queue is drained and its decision rules run: at 100 events/s a
# worker's alarm can wait 10 events for its check (its statistic's own delay aside)
DRAIN_SECONDS = 0.1
EARLY_PUBLISH_GAP = 1.0  # a rule flapping at its threshold cannot publish more often than this
DECISIONS = {"js_distance", "cusum", "share_cusum", "low_confidence_cusum"}  # statistics with a decision rule


def runtime_dir(name: str) -> Path:
    """A directory every worker of this `bentoml serve` shares, emptied at each start: inside
    BentoML's metrics directory, which it wipes at start (a temporary one outside BentoML)."""
    base = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(base) / "classguard" / name if base else Path(tempfile.mkdtemp(prefix=f"classguard-{name}-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class MonitorsDisabled(Exception):
    """Monitors are off (monitors.enabled: false): no events to report on."""


class NoMonitors:
    """The off switch: same interface, does nothing; asking for its events says it is off."""

    alerts: dict[str, frozenset[str]] = {}
    alarming: list[tuple[str, str, str, str, str]] = []
    subgroups: list[str] = []

    def model_index(self, model: str) -> int:
        raise MonitorsDisabled("monitors are disabled (monitors.enabled: false)")

    def recent_events(self, window_seconds: float, now: float | None = None) -> np.ndarray:
        raise MonitorsDisabled("monitors are disabled (monitors.enabled: false)")

    def observe(self, model: str, subgroup: str, probs: np.ndarray, predicted: int, region: int = -1,
                request: bool = True) -> list[str]:
        return []

    def observe_many(self, models: Sequence[str], subgroups: Sequence[str], probs: Sequence[np.ndarray],
                     regions: Sequence[int], request: bool = True) -> list[list[str]]:
        return [self.observe(m, k, p, int(np.argmax(p)), r, request)
                for m, k, p, r in zip(models, subgroups, probs, regions)]

    async def run(self) -> None:
        return None

    def publish(self) -> None:
        return None


def window_config(config: MonitorsConfig) -> WindowConfig:
    return WindowConfig(
        bucket_s=config.bucket_seconds, n_buckets=max(1, round(config.window_seconds / config.bucket_seconds)),
        min_samples=config.min_samples, cusum_threshold=config.cusum_threshold, rate_ratio=config.rate_ratio,
        rate_floor=config.rate_floor, js_threshold=config.js_threshold,
    )


def confusion_pairs(config: MonitorsConfig) -> list[ConfusionPair]:
    return [ConfusionPair(p.source, p.target, p.margin, tuple(p.subgroups) if p.subgroups else None)
            for p in config.known_confusions]


class MonitorPipeline:
    def __init__(self, config: MonitorsConfig, models: Sequence[str], profiles: Sequence[ReferenceProfile],
                 subgroups: Sequence[str], fleet: "FleetWindows | None" = None) -> None:
        self.config = config
        self.fleet = fleet
        self._degraded = False  # publishing this replica's own view because the fleet store is away
        self.window = window_config(config)
        self.pairs = confusion_pairs(config)
        self._args = (list(models), list(profiles), list(subgroups), self.pairs, self.window, config.regions)
        self.suite = MonitorSuite(*self._args)
        self._merged = MonitorSuite(*self._args)
        self.state_dir = config.state_dir or runtime_dir("monitors")
        self.state_file = Path(self.state_dir) / f"worker-{os.getpid()}.npz"
        self._queue: deque[tuple] = deque()
        self._lock = threading.Lock()  # the timer thread and a report request may drain at once
        # the latest events themselves, for on-demand drift reports (shared like the windows)
        self.recent: deque[tuple] = deque(maxlen=config.report_events)
        self._last_publish = -float("inf")  # time.monotonic() of the last publish
        self._decided: list[np.ndarray | None] = []  # this worker's decision rules at the last check
        self.new_regions: "NewRegionTracker | None" = None  # set by the engine when regions are on
        self.alerts: dict[str, frozenset[str]] = {}  # subgroup -> monitors alarming for it, as last published
        self.alarming: list[tuple[str, str, str, str, str]] = []  # (monitor, statistic, model, subgroup, pair)
        self._pair_names = [p.name for p in self.pairs]
        if fleet is not None:
            self._measure_clock()

    def _measure_clock(self) -> None:
        """Read the database's clock before the first event is stamped (else a replica whose
        clock is wrong stamps its first events by it); a store that is away is read at the
        first publish instead."""
        try:
            self.fleet.now()
        except StoreUnavailable:
            log.warning("fleet store unreachable at start; events are stamped by this host's clock until it answers")

    # -- request path ------------------------------------------------------------------------
    def observe(self, model: str, subgroup: str, probs: np.ndarray, predicted: int, region: int = -1,
                request: bool = True) -> list[str]:
        """One answer's flags. `request`: False for a second model's answer to a request whose
        first answer was observed already (events.EventBatch.request says who counts which)."""
        try:
            return self._observe(model, subgroup, probs, predicted, region, request)
        except Exception:  # a monitor bug costs this prediction its flags, never its answer
            metrics.MONITOR_ERRORS.labels("observe").inc()
            log.warning("monitor observe failed; the prediction is answered without flags", exc_info=True)
            return []

    def _observe(self, model: str, subgroup: str, probs: np.ndarray, predicted: int, region: int,
                 request: bool) -> list[str]:
        m, s = self.suite.model_index[model], self.suite.subgroup_index[subgroup]
        flags, mask = self.suite.flags(m, s, probs, predicted)
        if flags:
            if flags[0] == LOW_CONFIDENCE_FLAG:
                metrics.ANOMALIES.labels(LOW_CONFIDENCE_FLAG, model, subgroup).inc()
            for p, name in enumerate(self._pair_names):
                if mask >> p & 1:
                    metrics.ANOMALIES.labels("known_confusion", model, subgroup).inc()
                    metrics.KNOWN_CONFUSIONS.labels(name, model, subgroup).inc()
        if len(self._queue) >= self.config.queue_size:
            metrics.MONITOR_DROPPED.inc()
        else:
            # the calibrated column holds the probabilities until `drain` calibrates them, per model in
            # one numpy pass, off the request path (one row alone cost several numpy calls here)
            self._queue.append((CLOCK.now(), m, s, predicted, float(probs[predicted]), mask, probs, region,
                                int(request)))
        return flags

    def observe_many(self, models: Sequence[str], subgroups: Sequence[str], probs: Sequence[np.ndarray],
                     regions: Sequence[int], request: bool = True) -> list[list[str]]:
        """`observe` for a batch of answers, each predicting its top class: the same flags, events
        and counters (tests/runtime/test_monitor_pipeline.py), computed in numpy per model."""
        if len(models) < NUMPY_FROM:
            return [self.observe(m, k, p, int(np.argmax(p)), r, request)
                    for m, k, p, r in zip(models, subgroups, probs, regions)]
        try:
            return self._observe_many(models, subgroups, probs, regions, request)
        except Exception:  # as in observe: the batch loses its flags, never its answers
            metrics.MONITOR_ERRORS.labels("observe").inc()
            log.warning("monitor observe failed; the predictions are answered without flags", exc_info=True)
            return [[] for _ in models]

    def _observe_many(self, models: Sequence[str], subgroups: Sequence[str], probs: Sequence[np.ndarray],
                      regions: Sequence[int], request: bool = True) -> list[list[str]]:
        suite, now = self.suite, CLOCK.now()
        out: list[list[str]] = [[] for _ in models]
        by_model: dict[str, list[int]] = {}
        for i, model in enumerate(models):
            by_model.setdefault(model, []).append(i)  # models may differ in classes: one matrix each
        anomalies: Counter = Counter()
        for model, idx in by_model.items():
            m = suite.model_index[model]
            keys = [subgroups[i] for i in idx]
            s = np.array([suite.subgroup_index[k] for k in keys], dtype=np.int64)
            matrix = rows_of(probs, idx)
            predicted = matrix.argmax(axis=1)
            flags, masks, low = suite.flags_many(m, s, matrix, predicted)
            for j, i in enumerate(idx):
                out[i] = flags[j]
            for j in np.flatnonzero(low | (masks != 0)).tolist():  # the few answers with an anomaly
                mask = int(masks[j])
                if low[j]:
                    anomalies[LOW_CONFIDENCE_FLAG, "", model, keys[j]] += 1
                for p, name in enumerate(self._pair_names):
                    if mask >> p & 1:
                        anomalies["known_confusion", name, model, keys[j]] += 1
            room = self.config.queue_size - len(self._queue)
            if room < len(idx):
                metrics.MONITOR_DROPPED.inc(len(idx) - max(room, 0))
            if room > 0:
                confidence = matrix[np.arange(len(idx)), predicted].tolist()
                calibrated = suite.confidence.calibrated_many(m, matrix).tolist()
                self._queue.extend(list(zip(repeat(now), repeat(m), s.tolist(), predicted.tolist(), confidence,
                                            masks.tolist(), calibrated, [int(regions[i]) for i in idx],
                                            repeat(int(request))))[:room])
        for (kind, pair, model, key), n in anomalies.items():
            metrics.ANOMALIES.labels(kind, model, key).inc(n)
            if pair:
                metrics.KNOWN_CONFUSIONS.labels(pair, model, key).inc(n)
        return out

    # -- background ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: drain, and publish when due. CPU work and file I/O run in a thread."""
        while True:
            await asyncio.sleep(DRAIN_SECONDS)
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # the pipeline must outlive any bug in it
                metrics.MONITOR_ERRORS.labels("pipeline").inc()
                log.exception("monitor tick failed")

    def tick(self) -> None:
        drained = self.drain()
        since = time.monotonic() - self._last_publish
        early = drained > 0 and since >= EARLY_PUBLISH_GAP and self.newly_alarming()
        if early or since >= self.config.recompute_seconds:
            self.publish()

    def newly_alarming(self, now: float | None = None) -> bool:
        """Whether a decision rule fires on this worker's own window that did not at the last
        check. Its own window only: the merged view is the publish's to read (with one worker
        they are the same; with several, a worker's share of the traffic is evidence enough to
        look). Each edge is reported once."""
        now = CLOCK.now() if now is None else now
        with self._lock:
            current = self.suite.decisions(now)
        previous = self._decided or [None] * len(current)
        self._decided = current
        return any(c is not None and (p is None or p.shape != c.shape or bool((c & ~p).any()))
                   and bool(c.any()) for c, p in zip(current, previous))

    def drain(self) -> int:
        with self._lock:
            rows = self._calibrated([self._queue.popleft() for _ in range(len(self._queue))])
            if rows:
                self.recent.extend(rows)
                for name in self.suite.update_many(EventBatch.from_rows(rows)):
                    metrics.MONITOR_ERRORS.labels(name).inc()
                metrics.MONITOR_EVENTS.inc(len(rows))
        return len(rows)

    def _calibrated(self, rows: list[tuple]) -> list[tuple]:
        """Events queued one by one carry their probabilities in the calibrated column: each
        becomes its calibrated confidence here, per model in one numpy pass."""
        pending: dict[int, list[int]] = {}
        for j, row in enumerate(rows):
            if isinstance(row[6], np.ndarray):
                pending.setdefault(row[1], []).append(j)
        for m, idx in pending.items():
            values = self.suite.confidence.calibrated_many(m, np.stack([rows[j][6] for j in idx])).tolist()
            for j, value in zip(idx, values):
                rows[j] = rows[j][:6] + (value,) + rows[j][7:]
        return rows

    def publish(self, now: float | None = None) -> list[Score]:
        """Publish the scores of the windows as of `now` (fleet time: by default, right after the
        exchange has measured this worker's clock against the database's)."""
        started = time.perf_counter()
        self._write_state()
        merged = self._merge_workers()
        now = CLOCK.now() if now is None else now
        self._refresh_new_regions(now)
        results = merged.results(now)
        for name in results.errors:
            metrics.MONITOR_ERRORS.labels(name).inc()
        export(results.scores)
        alarming: dict[str, set[str]] = {}
        for s in results.scores:
            if s.alarm and s.subgroup:
                alarming.setdefault(s.subgroup, set()).add(s.monitor)
        self.alerts = {k: frozenset(v) for k, v in alarming.items()}
        self.alarming = [(s.monitor, s.statistic, s.model, s.subgroup, s.pair) for s in results.scores if s.alarm]
        self._last_publish = time.monotonic()
        metrics.MONITOR_LAST_RUN.set(now)
        metrics.MONITOR_RUN_DURATION.observe(time.perf_counter() - started)
        return results.scores

    def _refresh_new_regions(self, now: float) -> None:
        """Look for new regions and take up the fleet's (runtime/new_regions.py); a failure costs
        this publish its search, never its scores."""
        if self.new_regions is None:
            return
        try:
            self.new_regions.refresh(now, self.config.window_seconds)
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels("new_regions").inc()
        except Exception:
            metrics.MONITOR_ERRORS.labels("new_regions").inc()
            log.warning("new-region search failed", exc_info=True)

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with self._lock:
            state = self.suite.state()
            recent = np.array(list(self.recent), dtype=np.float64).reshape(-1, len(EVENT_COLUMNS))
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **state, recent=recent)
            os.replace(tmp, self.state_file)
        except OSError:
            metrics.MONITOR_ERRORS.labels("state").inc()
            log.warning("could not write monitor state to %s", self.state_file, exc_info=True)

    def _other_workers(self) -> Iterator[dict[str, np.ndarray]]:
        """Every other live worker's last published state; stale and broken files are skipped
        (by this host's clock, which stamped the files: fleet time would call them all stale
        on a host whose clock runs behind)."""
        now = time.time()
        for path in sorted(Path(self.state_dir).glob("worker-*.npz")):
            if path == self.state_file:
                continue
            try:
                if now - path.stat().st_mtime > self.config.window_seconds + 60:
                    path.unlink(missing_ok=True)  # a worker gone for longer than the window
                    continue
                with np.load(path) as arrays:
                    yield {k: arrays[k] for k in arrays.files}
            except (OSError, ValueError, KeyError, EOFError):
                metrics.MONITOR_ERRORS.labels("state").inc()

    def _merge_workers(self) -> MonitorSuite:
        merged = self._merged
        if self.fleet is not None:
            with self._lock:
                own = self.suite.bucket_vectors()
            try:
                merged.load_bucket_vectors(self.fleet.exchange(own))
                if self._degraded:
                    log.warning("fleet window store reachable again; publishing the fleet's view")
                self._degraded = False
                metrics.FLEET_VIEW_DEGRADED.set(0)
                return merged
            except StoreUnavailable:
                metrics.STORE_ERRORS.labels("windows").inc()
                metrics.FLEET_VIEW_DEGRADED.set(1)
                if not self._degraded:  # once per outage; the gauge and the counter say the rest
                    log.warning("fleet window store unreachable; publishing this replica's own view",
                                exc_info=log.isEnabledFor(logging.DEBUG))
                self._degraded = True
            except ValueError:  # a layout mismatch cannot happen by design (the layout key says so)
                metrics.MONITOR_ERRORS.labels("state").inc()
                metrics.FLEET_VIEW_DEGRADED.set(1)
        merged.reset()
        with self._lock:
            merged.merge(self.suite)
        other = None
        for arrays in self._other_workers():
            try:
                other = other or MonitorSuite(*self._args)
                other.load_state(arrays)
                merged.merge(other)
            except (ValueError, KeyError):
                metrics.MONITOR_ERRORS.labels("state").inc()
        return merged

    @property
    def subgroups(self) -> list[str]:
        return self.suite.subgroups

    def model_index(self, model: str) -> int:
        return self.suite.model_index[model]

    def recent_events(self, window_seconds: float, now: float | None = None) -> np.ndarray:
        """The last events of every worker within `window_seconds`, columns EVENT_COLUMNS
        (this worker's up to now, the others' as of their last publish); times are fleet time."""
        now = CLOCK.now() if now is None else now
        self.drain()
        parts = [np.array(list(self.recent), dtype=np.float64).reshape(-1, len(EVENT_COLUMNS))]
        parts += [arrays["recent"] for arrays in self._other_workers() if "recent" in arrays]
        rows = np.concatenate(parts)
        return rows[rows[:, COLUMN["t"]] >= now - window_seconds]


def export(scores: Sequence[Score]) -> None:
    samples: dict[tuple[str, str, str], int] = {}
    for s in scores:
        labels = (s.monitor, s.statistic, s.model, s.subgroup, s.pair)
        metrics.MONITOR_SCORE.labels(*labels).set(s.value)
        if s.reference is not None:
            metrics.MONITOR_REFERENCE.labels(*labels).set(s.reference)
        if s.statistic in DECISIONS:
            metrics.MONITOR_ALARM.labels(*labels).set(1.0 if s.alarm else 0.0)
        samples[(s.monitor, s.model, s.subgroup)] = s.samples
    for (monitor, model, subgroup), n in samples.items():
        metrics.MONITOR_SAMPLES.labels(monitor, model, subgroup).set(n)
