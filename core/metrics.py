"""Every metric the service exports, in one place, under the `classguard_` prefix.

Label values come only from configured or model-declared sets (model names, subgroup keys
the resolver can produce, the model's class names, the closed set of rejection reasons),
so no client can grow the number of series. BentoML runs prometheus_client in
multiprocess mode: counters and histograms sum across workers, gauges say how to combine.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Iterable

from prometheus_client import Counter, Gauge, Histogram

from core.batches import NUMPY_FROM

MAX_CLASS_LABELS = 50  # classes beyond this share the `predicted_class="other"` series

PREDICTIONS = Counter(
    "classguard_predictions", "Predictions answered, by serving model, subgroup and predicted class.",
    ["model", "subgroup", "predicted_class"],
)
CONFIDENCE = Histogram(
    "classguard_prediction_confidence", "Top-class probability of each prediction.",
    ["model", "subgroup"], buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
REJECTED = Counter(
    "classguard_rejected_requests", "Requests or batch items refused as bad input, by reason.",
    ["endpoint", "reason"],
)
INTERNAL_ERRORS = Counter(
    "classguard_internal_errors", "Requests that failed inside the service (5xx).", ["endpoint"],
)
REQUEST_DURATION = Histogram(
    "classguard_request_duration_seconds", "Time from request received to response ready.",
    ["endpoint"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "classguard_inference_batch_size", "Images per forward pass of the in-process micro-batcher.",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_DURATION = Histogram(
    "classguard_inference_duration_seconds", "Forward pass time per micro-batch.",
    ["model"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
MODEL_INFO = Gauge(
    "classguard_model_info", "Loaded models (value 1): version, role and where they run.",
    ["model", "version", "role", "device", "precision"], multiprocess_mode="livemax",
)


SUBGROUP_CLAIMS = Counter(
    "classguard_subgroup_claims", "Subgroup values sent by clients for attributes the service also derives from "
    "the image, by what was claimed and derived (declared values or `other`) and whether they agree.",
    ["attribute", "claimed", "derived", "outcome"],
)

SUBGROUP_DERIVE_FAILURES = Counter(
    "classguard_subgroup_derive_failures", "Images whose subgroup deriver raised (`raised`) or gave a value outside "
    "the attribute's declared set (`unknown`); either way the image's value is `other` and it is answered.",
    ["attribute", "reason"],
)


ABSTAINED = "abstained"  # the predicted_class of an answer withheld by a guardrail
# the closed label-value sets below are stated here once; start-up creates each series at zero
ANOMALY_KINDS = ("low_confidence", "known_confusion")
FALLBACK_REASONS = ("timeout", "error")
SHADOW_OUTCOMES = ("agree", "flip")
SWAP_OUTCOMES = ("applied", "refused", "sync_failed", "audit_failed")
LOG_STAGES = ("write", "retention", "flush", "join", "evict", "shadow")
FEEDBACK_OUTCOMES = ("correct", "wrong", "abstained")


class AnswerCounts:
    """One batch's answer metrics, counted here and written once per label set by `flush()`:
    in multiprocess mode every increment is a write to a memory-mapped file, so a batch of 64
    answers wrote about 400 of them one by one."""

    def __init__(self) -> None:
        self.predictions: collections.Counter[tuple[str, ...]] = collections.Counter()  # label values -> how many
        self.confidence: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.routed: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.actions: collections.Counter[tuple[str, ...]] = collections.Counter()

    def answer(self, model: str, subgroup: str, predicted: str, confidence: float, routed: bool,
               actions: Iterable[tuple[str, str]]) -> None:
        self.predictions[model, subgroup, predicted] += 1
        self.confidence[model, subgroup].append(confidence)
        if routed:
            self.routed[model, subgroup] += 1
        for guardrail, action in actions:
            self.actions[guardrail, action, subgroup] += 1

    def flush(self) -> None:
        for labels, n in self.predictions.items():
            child(PREDICTIONS, labels).inc(n)
        for labels, values in self.confidence.items():
            observe_many(child(CONFIDENCE, labels), values)
        for labels, n in self.routed.items():
            child(ROUTED, labels).inc(n)
        for labels, n in self.actions.items():
            child(GUARDRAIL_ACTIONS, labels).inc(n)


_CHILDREN: dict[tuple, Any] = {}


def child(metric, labels: tuple[str, ...]):
    """`metric.labels(*labels)`, validated once per label set (prometheus_client checks and
    locks on every call). Only for label values drawn from closed sets, so this holds no more
    entries than the series it names."""
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


def observe_many(child, values: Iterable[float]) -> None:
    """`child.observe(v)` for every value, as one increment per bucket and one of the sum.
    prometheus_client (pinned < 0.27) has no batch observe: this writes the counts through the
    child's own bucket and sum values, as its `observe` does (tests/core/test_metrics.py
    holds the two equal)."""
    values = list(values)
    if len(values) < NUMPY_FROM:
        for value in values:
            child.observe(value)
        return
    import numpy as np

    amounts = np.asarray(values, dtype=np.float64)
    child._raise_if_not_observable()
    child._sum.inc(float(amounts.sum()))
    # observe() counts an amount in the first bucket whose upper bound is >= it (NaN in none)
    index = np.searchsorted(np.asarray(child._upper_bounds, dtype=np.float64), amounts, side="left")
    buckets, counts = np.unique(index[index < len(child._upper_bounds)], return_counts=True)
    for bucket, n in zip(buckets.tolist(), counts.tolist()):
        child._buckets[bucket].inc(n)


def class_label(labels: tuple[str, ...], index: int | None) -> str:
    if index is None:
        return ABSTAINED
    return labels[index] if index < MAX_CLASS_LABELS else "other"

# -- monitors ---------------------------------------------------------------------------------
# Every worker publishes the same merged scores, so gauges keep the most recent value written.
MONITOR_SCORE = Gauge(
    "classguard_monitor_score", "A monitor's windowed statistic (see README, Monitors).",
    ["monitor", "statistic", "model", "subgroup", "pair"], multiprocess_mode="mostrecent",
)
MONITOR_REFERENCE = Gauge(
    "classguard_monitor_reference", "The reference value a statistic is compared with.",
    ["monitor", "statistic", "model", "subgroup", "pair"], multiprocess_mode="mostrecent",
)
MONITOR_ALARM = Gauge(
    "classguard_monitor_alarm", "1 while a monitor's decision rule fires (never below min_samples).",
    ["monitor", "statistic", "model", "subgroup", "pair"], multiprocess_mode="mostrecent",
)
MONITOR_SAMPLES = Gauge(
    "classguard_monitor_window_samples", "Events in the monitor's window.",
    ["monitor", "model", "subgroup"], multiprocess_mode="mostrecent",
)
ANOMALIES = Counter(
    "classguard_anomalies", "Per-prediction flags raised, by kind.", ["kind", "model", "subgroup"],
)
KNOWN_CONFUSIONS = Counter(
    "classguard_known_confusion_detections", "Predictions on which a known-confusion detector fired.",
    ["pair", "model", "subgroup"],
)
MONITOR_EVENTS = Counter("classguard_monitor_events", "Prediction events taken by the monitor pipeline.")
MONITOR_DROPPED = Counter(
    "classguard_monitor_events_dropped", "Prediction events the full monitor queue could not take.",
)
MONITOR_ERRORS = Counter(
    "classguard_monitor_errors", "Failures inside the monitor pipeline, by monitor (or `state`).", ["monitor"],
)
NEW_REGIONS = Gauge(
    "classguard_new_regions", "New regions formed from novel traffic and not retired (runtime/new_regions.py), "
    "at most the codebook's new slots.", multiprocess_mode="livemax",
)
MONITOR_LAST_RUN = Gauge(
    "classguard_monitor_last_run_timestamp_seconds", "When scores were last published.",
    multiprocess_mode="max",
)
MONITOR_RUN_DURATION = Histogram(
    "classguard_monitor_run_duration_seconds", "Time to merge worker state and recompute every score.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

# -- guardrails -------------------------------------------------------------------------------
GUARDRAIL_ACTIONS = Counter(
    "classguard_guardrail_actions", "Guardrail decisions, by guardrail, action and subgroup.",
    ["guardrail", "action", "subgroup"],
)
ROUTED = Counter("classguard_routed", "Requests answered by a route target.", ["target", "subgroup"])
ROUTE_FALLBACKS = Counter(
    "classguard_route_fallbacks", "Routed requests answered by the primary because the target failed.",
    ["target", "reason"],
)
SHADOW_COMPARISONS = Counter(
    "classguard_shadow_comparisons", "Shadow runs compared with the answer, by outcome (agree/flip).",
    ["model", "subgroup", "outcome"],
)
SHADOW_FLIPS = Counter(
    "classguard_shadow_flips", "Shadow disagreements: the answer's class and the shadow model's.",
    ["model", "subgroup", "from_class", "to_class"],
)
SHADOW_SKIPPED = Counter("classguard_shadow_skipped", "Shadow runs skipped (too many in flight, or failed).",
                         ["model", "reason"])
GUARDRAIL_CONFIG_INFO = Gauge(
    "classguard_guardrail_config_info", "The active guardrail chain (value 1) by profile and config hash.",
    ["profile", "hash"], multiprocess_mode="mostrecent",
)


def publish_active_chain(profile: str, config_hash: str) -> None:
    """`classguard_guardrail_config_info{profile, hash}`: one series, the active chain's.

    prometheus_client cannot remove a series in multiprocess mode, so setting the old chain's
    series to 0 left one series behind per swap (1,000 swaps: 1,000 series). Under BentoML the
    gauge therefore lives in a file of its own in the metrics directory, in prometheus_client's
    own format, rewritten whole (atomic rename) whenever a worker installs a chain; workers
    install the same chain, so whichever writes last writes the same series."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:  # one process (unit tests, tools): the registry can drop old series itself
        GUARDRAIL_CONFIG_INFO.clear()
        GUARDRAIL_CONFIG_INFO.labels(profile, config_hash).set(1)
        return
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    name = "classguard_guardrail_config_info"
    # file name: {type}_{multiprocess mode}_{id}.db, as prometheus_client's collector reads it
    path = os.path.join(directory, "gauge_mostrecent_guardrailchain.db")
    # a swap and the worker's sync can publish at once from two threads of one process: each
    # writes its own file, and the lock keeps the last installed chain the last one renamed
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with _CHAIN_INFO_LOCK:
        values = MmapedDict(tmp)
        try:
            values.write_value(mmap_key(name, name, ["profile", "hash"], [profile, config_hash],
                                        GUARDRAIL_CONFIG_INFO._documentation), 1.0, time.time())
        finally:
            values.close()
        os.replace(tmp, path)
_CHAIN_INFO_LOCK = threading.Lock()
GUARDRAIL_SWAPS = Counter("classguard_guardrail_swaps", "Guardrail chain changes, by outcome.", ["outcome"])
# rule: a name from the automation policy file, or `none` (an alert no rule acts on)
AUTOMATION_DECISIONS = Counter("classguard_automation_decisions", "Decisions on alerts Alertmanager posted "
                               "(POST /admin/alerts), by policy rule and outcome (runtime/automation.py).",
                               ["rule", "outcome"])

# -- fleet store -------------------------------------------------------------------------------
STORE_COMPONENTS = ("chain", "windows")
STORE_ERRORS = Counter("classguard_fleet_store_errors", "Failed operations on the shared fleet store, by component "
                       "(the prediction log counts its own in classguard_log_errors_total).", ["component"])
FLEET_VIEW_DEGRADED = Gauge(
    "classguard_fleet_view_degraded", "1 while the monitors publish this replica's own view because the fleet's "
    "window store cannot be reached; 0 when they publish the fleet's.", multiprocess_mode="livemax",
)
FLEET_CLOCK_SKEW = Gauge(
    "classguard_fleet_clock_skew_seconds", "This replica's clock minus the fleet database's, as last measured "
    "(positive: ahead). Fleet state uses the database's clock; a skew still means this host's clock is wrong.",
    multiprocess_mode="livemostrecent",
)

# -- prediction log ---------------------------------------------------------------------------
LOG_WRITTEN = Counter("classguard_log_rows_written", "Prediction-log rows written to the store (SQLite or PostgreSQL).")
LOG_DROPPED = Counter("classguard_log_rows_dropped", "Prediction-log rows lost: the queue was full, or a write "
                      "failed in a way a retry would not fix.")
LOG_ERRORS = Counter("classguard_log_errors", "Failed prediction-log operations (a write is retried at the next "
                     "flush), by stage.", ["stage"])

# -- captured inputs -------------------------------------------------------------------------
CAPTURE_REASONS = ("flagged", "stratified", "all")
CAPTURE_DROP_REASONS = ("queue_full", "unreadable", "write_failed")
ORIGINAL_SKIP_REASONS = ("too_large", "format")
INPUTS_CAPTURED = Counter("classguard_inputs_captured", "Input images written to the store, by why they were kept "
                          "(flagged answer, a stratum's budget, or every answer).", ["reason"])
INPUTS_DROPPED = Counter("classguard_inputs_dropped", "Inputs chosen for capture but not kept: the capture queue "
                         "was full, the image could not be read again, or the write failed.", ["reason"])
INPUTS_ORIGINAL_SKIPPED = Counter("classguard_inputs_original_skipped", "Captured inputs kept as a thumbnail only, "
                                  "because the upload was over capture.max_original_bytes or not a kept format.",
                                  ["reason"])
INPUTS_EVICTED = Counter("classguard_inputs_evicted", "Captured inputs deleted to stay within capture.max_bytes.")
INPUTS_ERASED = Counter("classguard_inputs_erased", "Captured inputs erased on request (admin route or CLI).")
INPUTS_BYTES = Gauge("classguard_inputs_stored_bytes", "Bytes of captured inputs in the store (the whole store's, "
                     "as this worker last measured it).", multiprocess_mode="livemostrecent")

# -- ground truth ------------------------------------------------------------------------------
FEEDBACK = Counter(
    "classguard_feedback", "True labels joined with answers, by outcome (correct, wrong, abstained).",
    ["model", "subgroup", "outcome"],
)
FEEDBACK_ESTIMATED = Counter(
    "classguard_feedback_estimated", "For the labelled answers (correct or wrong) in classguard_feedback_total: "
    "the sum of what the published accuracy estimate credited them before their labels arrived. Divided by "
    "their count it is the estimated accuracy of exactly the answers whose realized accuracy is known.",
    ["model", "subgroup"],
)
FEEDBACK_HELD_OUTCOMES = ("held", "joined", "expired", "rejected", "full")
FEEDBACK_HELD = Counter(
    "classguard_feedback_held", "Labels that arrived before their answers were written: held, joined later, "
    "expired unjoined, rejected when joined (conflict, unknown class), or refused because the hold was full.",
    ["outcome"],
)
FEEDBACK_RETRIES = Counter(
    "classguard_feedback_write_retries", "Feedback writes PostgreSQL aborted because another ran at the same "
    "moment (a deadlock), run again holding the feedback lock alone.",
)
FEEDBACK_CONFUSIONS = Counter(
    "classguard_feedback_known_confusions", "Answers that feedback proved to be a known confusion.",
    ["pair", "model", "subgroup"],
)
