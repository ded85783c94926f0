"""The wiring of one worker: models, subgroup resolver, monitors, the active guardrail chain,
micro-batchers, the prediction log and the Serving that uses them, built once from the
validated settings. Null objects stand in for parts switched off, so nothing past here
asks whether a part is enabled."""

from __future__ import annotations

from typing import Coroutine

import numpy as np

from runtime.active_chain import GuardrailRuntime, chain_context
from runtime.batching import MicroBatcher
from runtime.models import ServedModel, find_stored, resolve_device
from runtime.monitor_pipeline import MonitorPipeline, NoMonitors, runtime_dir
from runtime.serving import Serving
from runtime.subgroups import SubgroupResolver
from service import metrics
from service.config import Settings
from service.errors import ENDPOINTS, REASONS
from store.chain_store import ChainStore
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
        self.monitors = (
            MonitorPipeline(settings.monitors, list(self.models), [m.profile for m in self.models.values()],
                            self.resolver.keys())
            if settings.monitors.enabled else NoMonitors()
        )
        labels = {label for model in self.models.values() for label in model.profile.labels}
        self.guardrails = GuardrailRuntime(settings.guardrails, chain_context(settings, labels),
                                           ChainStore(runtime_dir("guardrails"), settings.guardrails.audit_log))
        self.batchers = {
            name: MicroBatcher(model.predict, max_batch_size=settings.batching.max_batch_size,
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
        self.log = PredictionLog(settings.log) if settings.log.enabled else NoLog()
        self.serving = Serving(models=self.models, primary=self.primary.name, batchers=self.batchers,
                               shadow_batchers=self.shadow_batchers, monitors=self.monitors, chain=self.guardrails,
                               log=self.log, top_k=settings.top_k,
                               shadow_limit=settings.guardrails.shadow_max_in_flight)
        self._create_series()
        for model in self.models.values():  # first forward pass pays lazy init, not a client
            model.predict(np.zeros((1, self.spec.channels, self.spec.height, self.spec.width), np.float32))

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
                metrics.PREDICTIONS.labels(model, key, metrics.ABSTAINED)  # abstention rate reads 0, not nothing
                metrics.ROUTED.labels(model, key)
                for kind in metrics.ANOMALY_KINDS:
                    metrics.ANOMALIES.labels(kind, model, key)
                for outcome in metrics.SHADOW_OUTCOMES:
                    metrics.SHADOW_COMPARISONS.labels(model, key, outcome)
                for pair in self.settings.monitors.known_confusions:
                    metrics.KNOWN_CONFUSIONS.labels(pair.name, model, key)
        for outcome in metrics.SWAP_OUTCOMES:
            metrics.GUARDRAIL_SWAPS.labels(outcome)
        for stage in metrics.LOG_STAGES:
            metrics.LOG_ERRORS.labels(stage)
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
        return [self.monitors.run(), self.guardrails.run(), self.log.run()]

    def labels_of(self) -> dict[str, tuple[str, ...]]:
        """Each loaded model's class names."""
        return {name: model.profile.labels for name, model in self.models.items()}
