"""The wiring of one worker: models, subgroup resolver, monitors, the active guardrail chain,
micro-batchers, the prediction log and the Serving that uses them, built once from the
validated settings. Null objects stand in for parts switched off, so nothing past here
asks whether a part is enabled."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Coroutine

import numpy as np

from core import metrics
from core.config import Settings
from core.errors import ENDPOINTS, REASONS
from monitors.confidence import ESTIMATE
from monitors.estimates import PublishedEstimate
from monitors.new_regions import NEW_SLOTS
from runtime.active_chain import GuardrailRuntime, chain_context
from runtime.automation import OUTCOMES as AUTOMATION_OUTCOMES
from runtime.automation import Automation
from runtime.automation_policy import load_policy
from runtime.batching import MicroBatcher
from runtime.models import ServedModel, find_stored, resolve_device
from runtime.monitor_pipeline import MonitorPipeline, NoMonitors, runtime_dir, window_config
from runtime.new_regions import NewRegionTracker
from runtime.serving import Serving
from runtime.subgroups import SubgroupResolver
from store.chain_store import ChainStore, FleetChainStore
from store.database import open_database
from store.feedback import Hold, join_held
from store.fleet_windows import FleetWindows
from store.new_regions import FleetNewRegionStore, LocalNewRegionStore
from store.prediction_log import NoLog, PredictionLog


class Engine:
    def __init__(self, settings: Settings) -> None:
        import torch

        self.settings = settings
        self.device = resolve_device(settings.device)
        if self.device == "cpu":
            torch.set_num_threads(settings.torch_threads)
        self.models: dict[str, ServedModel] = {}
        for i, tag in enumerate(settings.models.tags()):
            model = ServedModel.load(find_stored(tag), "primary" if i == 0 else "secondary", self.device,
                                     settings.half_precision)
            self.models[model.name] = model
            metrics.MODEL_INFO.labels(model.name, model.version, model.role, model.device, model.precision).set(1)
        self.primary = next(iter(self.models.values()))
        self.spec = self.primary.profile.input_spec
        self.resolver = SubgroupResolver(settings.subgroups.attributes)
        fleet = settings.fleet
        self.replica = fleet.replica_name()
        # the shared store: PostgreSQL in a fleet, else the log's SQLite file (when the log is on)
        self.db = open_database(settings) if fleet.enabled or settings.log.enabled else None
        if self.db is not None:  # replicas starting together: the schema is created once, before any use
            self.db.prepare(fleet.startup_wait_seconds if fleet.enabled else 0.0)
        self.monitors = (
            MonitorPipeline(settings.monitors, list(self.models), [m.profile for m in self.models.values()],
                            self.resolver.keys(), fleet=self._fleet_windows() if fleet.enabled else None)
            if settings.monitors.enabled else NoMonitors()
        )
        labels = {label for model in self.models.values() for label in model.profile.labels}
        store = (FleetChainStore(self.db, self.replica) if fleet.enabled
                 else ChainStore(runtime_dir("guardrails"), settings.guardrails.audit_log))
        # the primary's batches also place each image in a region of its embedding (the region
        # monitors and region conditions of guardrails use the primary's codebook), novel ones
        # in the new regions the fleet forms from them
        self.regions = (self.primary.codebook.names()
                        if settings.monitors.regions and self.primary.codebook is not None else [])
        if self.regions and settings.monitors.enabled:
            self.primary.new_regions = NewRegionTracker(self.primary.codebook, self._new_region_store())
            self.monitors.new_regions = self.primary.new_regions
        context = chain_context(settings, labels, self.regions)
        self.guardrails = GuardrailRuntime(settings.guardrails, context, store)
        self.automation = self._automation(context)
        self.batchers = {
            name: MicroBatcher(model.predict_with_regions if name == self.primary.name and self.regions
                               else model.predict,
                               max_batch_size=settings.batching.max_batch_size,
                               max_wait_s=settings.batching.max_wait_ms / 1000.0, name=name,
                               on_batch=self._batch_observer(name))
            for name, model in self.models.items()
        }
        # Shadows are off the response path, so they can wait to share a forward pass: one
        # pass per sparse shadow request costs more in thread hand-offs than the model itself.
        self.shadow_batchers = {
            name: MicroBatcher(model.predict, max_batch_size=settings.batching.max_batch_size,
                               max_wait_s=settings.guardrails.shadow_wait_ms / 1000.0, name=f"shadow-{name}")
            for name, model in self.models.items()
        }
        # labels wait for their answers only when every answer is written (log.mode: all)
        self.hold = (Hold(settings.log.hold_feedback_seconds, settings.log.max_held_feedback)
                     if settings.log.mode == "all" else Hold(seconds=0))
        self.log = (PredictionLog(settings.log, self.db, self.replica, settings.capture) if settings.log.enabled
                    else NoLog())
        if settings.log.enabled:
            labels_of, pairs, estimates = self.labels_of(), self.pairs(), self.estimates()
            self.log.after_write = lambda conn: join_held(conn, labels_of, pairs, self.hold, estimates=estimates)
        self.serving = Serving(models=self.models, primary=self.primary.name, regions=self.regions,
                               batchers=self.batchers,
                               shadow_batchers=self.shadow_batchers, monitors=self.monitors, chain=self.guardrails,
                               log=self.log, top_k=settings.top_k,
                               shadow_limit=settings.guardrails.shadow_max_in_flight)
        self._create_series()
        for name in self.models:  # first forward pass (and region assignment) pays lazy init, not a client
            self.batchers[name].infer(np.zeros((1, self.spec.channels, self.spec.height, self.spec.width), np.float32))

    def _automation(self, context) -> Automation:
        """The automatic actions of the policy file, checked now: a rule naming a model that is
        not loaded stops the start-up. Off in the file: every alert is answered `disabled`."""
        policy = load_policy(self.settings.guardrails.automation_path)
        if not policy.enabled:
            return Automation(policy, self.guardrails, None, primary=self.primary.name, replica=self.replica)
        if self.db is None:
            raise ValueError(f"{self.settings.guardrails.automation_path}: automatic actions read their evidence "
                             "from the prediction log and record their decisions in its store: turn the log on "
                             "(log.enabled: true)")
        try:
            policy.check(context)
        except ValueError as exc:
            raise ValueError(f"{self.settings.guardrails.automation_path}: {exc}") from None
        return Automation(policy, self.guardrails, self.db, primary=self.primary.name, replica=self.replica,
                          subgroups=context.subgroups, regions=context.regions)

    def _create_series(self) -> None:
        """Zero-valued series for every bounded label combination, so rate() in alerts and
        dashboards sees them before the first event (a missing series is not a zero)."""
        keys = self.resolver.keys()
        for endpoint in ENDPOINTS:
            metrics.INTERNAL_ERRORS.labels(endpoint)
            for reason in REASONS:
                metrics.REJECTED.labels(endpoint, reason)
        for model in self.models:
            for reason in metrics.FALLBACK_REASONS:
                metrics.ROUTE_FALLBACKS.labels(model, reason)
            for key in keys:
                for outcome in metrics.FEEDBACK_OUTCOMES:
                    metrics.FEEDBACK.labels(model, key, outcome)
                metrics.FEEDBACK_ESTIMATED.labels(model, key)
                metrics.PREDICTIONS.labels(model, key, metrics.ABSTAINED)  # abstention rate reads 0, not nothing
                metrics.ROUTED.labels(model, key)
                for kind in metrics.ANOMALY_KINDS:
                    metrics.ANOMALIES.labels(kind, model, key)
                for outcome in metrics.SHADOW_OUTCOMES:
                    metrics.SHADOW_COMPARISONS.labels(model, key, outcome)
                for pair in self.settings.monitors.known_confusions:
                    metrics.KNOWN_CONFUSIONS.labels(pair.name, model, key)
        for labels in self.resolver.claim_labels():
            metrics.SUBGROUP_CLAIMS.labels(*labels)
        for labels in self.resolver.failure_labels():
            metrics.SUBGROUP_DERIVE_FAILURES.labels(*labels)
        for outcome in metrics.SWAP_OUTCOMES:
            metrics.GUARDRAIL_SWAPS.labels(outcome)
        for rule in [r.name for r in self.automation.policy.rules] + ["none"]:
            for outcome in AUTOMATION_OUTCOMES:
                metrics.AUTOMATION_DECISIONS.labels(rule, outcome)
        for stage in metrics.LOG_STAGES:
            metrics.LOG_ERRORS.labels(stage)
        for outcome in metrics.FEEDBACK_HELD_OUTCOMES:
            metrics.FEEDBACK_HELD.labels(outcome)
        for component in metrics.STORE_COMPONENTS:
            metrics.STORE_ERRORS.labels(component)
        for reason in metrics.CAPTURE_REASONS:
            metrics.INPUTS_CAPTURED.labels(reason)
        for reason in metrics.CAPTURE_DROP_REASONS:
            metrics.INPUTS_DROPPED.labels(reason)
        for reason in metrics.ORIGINAL_SKIP_REASONS:
            metrics.INPUTS_ORIGINAL_SKIPPED.labels(reason)
        metrics.INPUTS_EVICTED.inc(0)
        metrics.INPUTS_ERASED.inc(0)
        metrics.FLEET_VIEW_DEGRADED.set(0)
        metrics.MONITOR_DROPPED.inc(0)
        metrics.MONITOR_EVENTS.inc(0)

    @staticmethod
    def _batch_observer(name: str):
        size, duration = metrics.BATCH_SIZE.labels(name), metrics.INFERENCE_DURATION.labels(name)

        def observe(n: int, seconds: float) -> None:
            size.observe(n)
            duration.observe(seconds)

        return observe

    def background(self) -> list[Coroutine]:
        """What runs beside the requests, for the worker's lifetime."""
        return [self.monitors.run(), self.guardrails.run(), self.log.run(), self.automation.run()]

    def pairs(self) -> list[tuple[str, str]]:
        """The known-confusion pairs, (true class, answered class)."""
        return [(p.source, p.target) for p in self.settings.monitors.known_confusions]

    def _fleet_windows(self) -> FleetWindows:
        """This worker's share of the fleet's monitor windows. Replicas share totals only when
        they count the same way: same models and versions (so codebooks), subgroups, pairs,
        buckets, region monitors on or off, and the same accuracy estimate."""
        config = self.settings.monitors
        layout = {"models": [m.tag for m in self.models.values()], "subgroups": self.resolver.keys(),
                  "pairs": [p.model_dump() for p in config.known_confusions],
                  "bucket_seconds": config.bucket_seconds, "buckets": window_config(config).n_buckets,
                  "regions": config.regions, "new_region_slots": NEW_SLOTS if config.regions else 0,
                  "estimate": ESTIMATE}
        key = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]
        worker = f"{self.replica}:{os.getpid()}:{secrets.token_hex(4)}"  # a restarted pid is a new worker
        return FleetWindows(self.db, layout=key, worker=worker, bucket_s=config.bucket_seconds,
                            n_buckets=window_config(config).n_buckets)

    def _new_region_store(self) -> LocalNewRegionStore | FleetNewRegionStore:
        """Where this worker's new regions are shared: per primary version (they live in its
        embedding space), in the fleet's database or this host's runtime directory."""
        layout = hashlib.sha256(self.primary.tag.encode()).hexdigest()[:16]
        if self.settings.fleet.enabled:
            return FleetNewRegionStore(self.db, layout, self.replica)
        return LocalNewRegionStore(runtime_dir("regions"), layout)

    def estimates(self) -> dict[str, PublishedEstimate]:
        """Each loaded model's published accuracy estimate."""
        return {name: model.estimate for name, model in self.models.items()}

    def labels_of(self) -> dict[str, tuple[str, ...]]:
        """Each loaded model's class names."""
        return {name: model.profile.labels for name, model in self.models.items()}
