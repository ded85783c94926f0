"""From prepared images to answers: models, monitors and the guardrail chain together.

For each image: routes without flag or region conditions pick the model; that model runs (a
route target under its timeout, falling back to the primary); the monitors flag its output;
the primary's pass also places the image in a region of its codebook; routes with flag or
region conditions may send a primary answer to its target; answer guardrails
change what is emitted; shadows are scheduled off the response path. One chain reference
is taken per request, so a swap never mixes two chains in one response.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

import numpy as np

from guardrails.chain import Chain
from guardrails.core import Answer, Decision, Request
from monitors.keys import subgroup_key
from service import metrics

logger = logging.getLogger("classguard")
Batcher = Callable[[np.ndarray], Awaitable[np.ndarray]]  # a batch of inputs -> their probabilities


class ActiveChain(Protocol):
    chain: Chain  # read once per request


class Monitors(Protocol):
    alerts: Mapping[str, frozenset[str]]

    def observe(self, model: str, subgroup: str, probs: np.ndarray, predicted: int, region: int = -1) -> list[str]: ...

    def observe_many(self, models: Sequence[str], subgroups: Sequence[str], probs: Sequence[np.ndarray],
                     regions: Sequence[int]) -> list[list[str]]: ...


class AnswerLog(Protocol):
    def record(self, response: dict[str, Any], probs: np.ndarray, config_hash: str, model: str, subgroup: str,
               image: bytes | None = None, region: str | None = None) -> None: ...


class Serving:
    def __init__(self, *, models: Mapping[str, Any], primary: str, batchers: Mapping[str, Batcher],
                 shadow_batchers: Mapping[str, Batcher], monitors: Monitors, chain: ActiveChain, log: AnswerLog,
                 top_k: int, shadow_limit: int, regions: Sequence[str] = ()) -> None:
        self.models, self.primary, self.batchers = models, models[primary], batchers
        self.regions = list(regions)  # the primary's region names, by index (novel last); empty: regions off
        self.shadow_batchers, self.monitors, self.guardrails = shadow_batchers, monitors, chain
        self.log, self.top_k, self.shadow_limit = log, top_k, shadow_limit
        self._shadow_tasks: set[asyncio.Task] = set()

    async def answer_all(self, pixels: np.ndarray, subgroups: Sequence[dict[str, str]], request_ids: Sequence[str],
                         correlation_ids: Sequence[str | None] | None = None,
                         images: Sequence[bytes] | None = None) -> list[dict[str, Any]]:
        chain = self.guardrails.chain
        alerts = self.monitors.alerts
        keys = [subgroup_key(s) for s in subgroups]
        requests = [Request(rid, s, k, alerts.get(k, frozenset())) for rid, s, k in zip(request_ids, subgroups, keys)]
        trace: list[list[Decision]] = [[] for _ in requests]

        served = [self.primary.name] * len(requests)
        for i, request in enumerate(requests):
            decision = chain.route(request)
            if decision is not None:
                served[i] = decision.model
                trace[i].append(decision)
        probs, regions = await self._run(pixels, served, trace, chain)
        flags = self.monitors.observe_many(served, keys, probs, regions)
        if self.regions:
            requests = [replace(q, region=self.regions[r]) if r >= 0 else q for q, r in zip(requests, regions)]

        rerun = {}
        for i, request in enumerate(requests):
            if served[i] == self.primary.name:
                decision = chain.route(request, flags[i])
                if decision is not None:
                    rerun[i] = decision
        if rerun:
            idx = sorted(rerun)
            targets = [rerun[i].model for i in idx]
            sub_trace = [trace[i] + [rerun[i]] for i in idx]
            new, new_regions = await self._run(pixels[idx], targets, sub_trace, chain)
            for j, i in enumerate(idx):
                served[i], trace[i], probs[i] = targets[j], sub_trace[j], new[j]
            answered = [j for j, i in enumerate(idx) if targets[j] != self.primary.name]  # not fallen back
            if answered:
                observed = self.monitors.observe_many([targets[j] for j in answered], [keys[idx[j]] for j in answered],
                                                      [new[j] for j in answered], [new_regions[j] for j in answered])
                for j, found in zip(answered, observed):
                    flags[idx[j]] = found

        results = []
        counts = metrics.AnswerCounts()  # written once per label set, after the batch
        order = falling(probs)
        for i, request in enumerate(requests):
            model = self.models[served[i]]
            answer = Answer.of(model.name, model.profile.labels, probs[i], flags[i])
            answer = chain.answer(request, answer)
            decisions = trace[i] + list(answer.decisions)
            for decision in chain.shadows(request):
                decisions.append(decision)
                self._shadow(decision.model, pixels[i], answer, keys[i])
            rendered = self._render(request, model, answer, decisions,
                                    correlation_ids[i] if correlation_ids is not None else None, order[i], counts)
            self.log.record(rendered, answer.probs, chain.config_hash, model.tag, request.subgroup_key,
                            images[i] if images is not None else None, request.region)
            results.append(rendered)
        counts.flush()
        return results

    async def _run(self, pixels: np.ndarray, served: list[str], trace: list[list[Decision]],
                   chain) -> tuple[list[np.ndarray], list[int]]:
        """Each image through its model, one batch per model; a failing target falls back.
        Probabilities per image, and its region where the primary answered (else -1)."""
        out: list[np.ndarray | None] = [None] * len(served)
        regions = [-1] * len(served)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(served):
            groups[name].append(i)

        async def run_group(name: str, idx: list[int]) -> None:
            batch = pixels[idx]
            if name == self.primary.name:
                result = await self.batchers[name](batch)
            else:
                try:
                    result = await asyncio.wait_for(self.batchers[name](batch), chain.timeout_s(name))
                except Exception as exc:  # the target failed or timed out: the primary answers
                    reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else "error"
                    metrics.ROUTE_FALLBACKS.labels(name, reason).inc(len(idx))
                    logger.warning("route target %s failed (%s); primary answers", name, reason)
                    for i in idx:
                        served[i] = self.primary.name
                        trace[i].append(Decision("route", "fallback", f"{name} {reason}: {type(exc).__name__}",
                                                 model=self.primary.name))
                    result = await self.batchers[self.primary.name](batch)
            probs, placed = result if isinstance(result, tuple) else (result, None)
            for j, i in enumerate(idx):
                out[i] = probs[j]
                if placed is not None:
                    regions[i] = int(placed[j])

        await asyncio.gather(*(run_group(name, idx) for name, idx in groups.items()))
        return out, regions  # type: ignore[return-value]

    def _shadow(self, name: str, pixels: np.ndarray, answer: Answer, key: str) -> None:
        if len(self._shadow_tasks) >= self.shadow_limit:
            metrics.SHADOW_SKIPPED.labels(name, "busy").inc()
            return
        task = asyncio.create_task(self._compare(name, pixels, answer, key))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _compare(self, name: str, pixels: np.ndarray, answer: Answer, key: str) -> None:
        try:
            probs = (await self.shadow_batchers[name](pixels[None]))[0]
        except Exception:
            metrics.SHADOW_SKIPPED.labels(name, "error").inc()
            return
        theirs = metrics.class_label(self.models[name].profile.labels, int(np.argmax(probs)))
        ours = metrics.class_label(answer.labels, answer.label)
        outcome = "agree" if theirs == ours else "flip"
        metrics.SHADOW_COMPARISONS.labels(name, key, outcome).inc()
        if outcome == "flip":
            metrics.SHADOW_FLIPS.labels(name, key, ours, theirs).inc()

    def _render(self, request: Request, model, answer: Answer, decisions: list[Decision], correlation: str | None,
                order: np.ndarray, counts: metrics.AnswerCounts) -> dict[str, Any]:
        """The answer as the client gets it, counted in `counts`; `order`: its classes by falling
        probability."""
        key = request.subgroup_key
        emitted = answer.labels[answer.label] if answer.label is not None else None
        hidden = answer.suppressed
        shown = [int(c) for c in order if int(c) not in hidden]
        best = answer.label if answer.label is not None else (shown[0] if shown else None)
        confidence = float(answer.probs[best]) if best is not None else 0.0
        counts.answer(model.name, key, metrics.class_label(answer.labels, answer.label), confidence,
                      model.name != self.primary.name, ((d.guardrail, d.action) for d in decisions))
        return {
            "request_id": request.request_id,
            "correlation_id": correlation,
            "label": emitted,
            "confidence": round(confidence, 6),
            "top_k": [{"label": answer.labels[c], "probability": round(float(answer.probs[c]), 6)}
                      for c in shown[:self.top_k]],
            "abstained": answer.abstained,
            "model": model.tag,
            "subgroup": dict(request.subgroup),
            "guardrails": [d.as_dict() for d in decisions],
            "flags": list(answer.flags),
        }


def falling(probs: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """Each image's classes by falling probability: one argsort for the batch when every answer
    has as many classes (rows are sorted independently, so each gets the order its own argsort
    gives), else one per image (routed models may have other classes)."""
    if len({len(p) for p in probs}) == 1:
        return np.argsort(np.stack(probs), axis=1)[:, ::-1]
    return [np.argsort(p)[::-1] for p in probs]
