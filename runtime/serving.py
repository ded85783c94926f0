"""From prepared images to answers: models, monitors and the guardrail chain together.

For each image: routes without flag or region conditions pick the model; that model runs (a
route target under its timeout, falling back to the primary); the monitors flag its output;
the primary's pass also places the image in a region of its codebook; routes with flag or
region conditions may send a primary answer to its target; answer guardrails
change what is emitted; shadows are scheduled off the response path. One chain reference
is taken per request, so a swap never mixes two chains in one response.

A request of NUMPY_FROM images (core/batches.py) or more is decided on columns: each model's
answers as one matrix, the chain's batch form (guardrails.columns), one pass of numpy for the
order, top_k and rounding. Fewer images go image by image, the form the batch path is tested
equal to. Either way the answers come out as one table of columns (guardrails/answer_table.py),
which the log and the metrics take once and the endpoint renders a dict per answer or columns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

import numpy as np

from core import metrics
from core.batches import NUMPY_FROM
from core.keys import subgroup_key
from guardrails.answer_table import AnswerTable
from guardrails.chain import Chain
from guardrails.columns import AnswerColumns, RequestColumns
from guardrails.core import Answer, Decision
from runtime.probability_rows import falling, rounded, rows_of

logger = logging.getLogger("classguard")
Batcher = Callable[[np.ndarray], Awaitable[np.ndarray]]  # a batch of inputs -> their probabilities


class ActiveChain(Protocol):
    chain: Chain  # read once per request


class Monitors(Protocol):
    alerts: Mapping[str, frozenset[str]]

    def observe(self, model: str, subgroup: str, probs: np.ndarray, predicted: int, region: int = -1,
                request: bool = True) -> list[str]: ...

    def observe_many(self, models: Sequence[str], subgroups: Sequence[str], probs: Sequence[np.ndarray],
                     regions: Sequence[int], request: bool = True) -> list[list[str]]: ...


class AnswerLog(Protocol):
    def record_table(self, table: AnswerTable, probs: Sequence[np.ndarray], config_hash: str,
                     subgroups: Sequence[str], images: Sequence[bytes] | None = None,
                     regions: Sequence[str | None] | None = None) -> None: ...

    def record_shadow(self, request_id: str, model: str, label: str | None) -> None: ...


class Serving:
    def __init__(self, *, models: Mapping[str, Any], primary: str, batchers: Mapping[str, Batcher],
                 shadow_batchers: Mapping[str, Batcher], monitors: Monitors, chain: ActiveChain, log: AnswerLog,
                 top_k: int, shadow_limit: int, regions: Sequence[str] = ()) -> None:
        self.models, self.primary, self.batchers = models, models[primary], batchers
        self.tags = {name: model.tag for name, model in models.items()}  # name:version, as responses show it
        self.regions = list(regions)  # the primary's region names, by index (novel last); empty: regions off
        self.shadow_batchers, self.monitors, self.guardrails = shadow_batchers, monitors, chain
        self.log, self.top_k, self.shadow_limit = log, top_k, shadow_limit
        self._shadow_tasks: set[asyncio.Task] = set()

    async def answer_all(self, pixels: np.ndarray, subgroups: Sequence[dict[str, str]], request_ids: Sequence[str],
                         correlation_ids: Sequence[str | None] | None = None,
                         images: Sequence[bytes] | None = None) -> AnswerTable:
        chain = self.guardrails.chain
        keys = [subgroup_key(s) for s in subgroups]
        requests = RequestColumns(request_ids, subgroups, keys, self.monitors.alerts)
        n = len(keys)
        trace: list[list[Decision]] = [[] for _ in range(n)]
        served = [self.primary.name] * n
        for i, decision in chain.route_many(requests, range(n)).items():
            served[i] = decision.model
            trace[i].append(decision)
        probs, regions = await self._run(pixels, served, trace, chain)
        flags = self.monitors.observe_many(served, keys, probs, regions)
        if self.regions:
            requests.place([self.regions[r] if r >= 0 else None for r in regions])

        rerun = (chain.route_many(requests, [i for i, name in enumerate(served) if name == self.primary.name], flags)
                 if chain.routes_after_primary else {})
        if rerun:
            idx = sorted(rerun)
            targets = [rerun[i].model for i in idx]
            sub_trace = [trace[i] + [rerun[i]] for i in idx]
            new, new_regions = await self._run(pixels[idx], targets, sub_trace, chain)
            if isinstance(probs, np.ndarray):
                # never written in place: the monitors may still hold the primary's rows (views)
                same = isinstance(new, np.ndarray) and new.shape[1] == probs.shape[1] and new.dtype == probs.dtype
                probs = probs.copy() if same else list(probs)  # other classes: a row each
            for j, i in enumerate(idx):
                served[i], trace[i], probs[i] = targets[j], sub_trace[j], new[j]
            answered = [j for j, i in enumerate(idx) if targets[j] != self.primary.name]  # not fallen back
            if answered:
                # a second answer to requests the mix has counted: the target's monitors count it,
                # the subgroup mix does not (request=False)
                observed = self.monitors.observe_many([targets[j] for j in answered], [keys[idx[j]] for j in answered],
                                                      [new[j] for j in answered], [new_regions[j] for j in answered],
                                                      request=False)
                for j, found in zip(answered, observed):
                    flags[idx[j]] = found

        counts = metrics.AnswerCounts()  # written once per label set, after the batch
        decide = self._answer_each if n < NUMPY_FROM else self._answer_columns
        correlations = correlation_ids if correlation_ids is not None else [None] * n
        table, shadowed = decide(chain, requests, served, probs, flags, trace, correlations, counts)
        self.log.record_table(table, probs, chain.config_hash, keys, images, requests.regions)
        counts.flush()
        for i, name, predicted in shadowed:
            self._shadow(name, pixels[i], predicted, keys[i], table.request_ids[i])
        return table

    def _answer_each(self, chain: Chain, requests: RequestColumns, served: list[str],
                     probs: np.ndarray | list[np.ndarray],
                     flags: list[list[str]], trace: list[list[Decision]], correlation_ids: Sequence[str | None],
                     counts: metrics.AnswerCounts) -> tuple[AnswerTable, list[tuple[int, str, str]]]:
        """The answers image by image (few images: numpy's fixed cost is more than the loop),
        and the shadows to run: (row, model, the class answered)."""
        table, shadowed = self._table(requests, correlation_ids, flags), []
        order = falling(probs)
        for i in range(len(requests)):
            request = requests.request(i)
            model = self.models[served[i]]
            answer = chain.answer(request, Answer.of(model.name, model.profile.labels, probs[i], flags[i]))
            decisions = trace[i] + list(answer.decisions)
            for decision in chain.shadows(request):
                decisions.append(decision)
                shadowed.append((i, decision.model, metrics.class_label(answer.labels, answer.label)))
            self._render(table, i, model, answer, decisions, order[i], counts, request.subgroup_key)
        return table, shadowed

    def _answer_columns(self, chain: Chain, requests: RequestColumns, served: list[str],
                        probs: np.ndarray | list[np.ndarray],
                        flags: list[list[str]], trace: list[list[Decision]],
                        correlation_ids: Sequence[str | None],
                        counts: metrics.AnswerCounts) -> tuple[AnswerTable, list[tuple[int, str, str]]]:
        """The same answers as `_answer_each`, decided per model over the batch's columns
        (tests/runtime/test_serving.py compares the two over random chains and batches)."""
        n = len(requests)
        shadows = chain.shadows_many(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(served):
            groups[name].append(i)
        table = self._table(requests, correlation_ids, flags)
        label_of: list = [None] * n
        exact: list = [0.0] * n
        for name, idx in groups.items():
            model = self.models[name]
            block = AnswerColumns(name, model.profile.labels, rows_of(probs, idx),
                                  [tuple(flags[i]) for i in idx], np.array(idx, dtype=np.int64))
            chain.answer_many(requests, block)
            tag = self.tags[name]
            for j, (label, confidence, shown, names, values) in enumerate(self._shown(block)):
                i = idx[j]
                label_of[i], exact[i] = label, confidence
                table.labels[i] = model.profile.labels[label] if label is not None else None
                table.confidences[i], table.top_labels[i], table.top_probabilities[i] = shown, names, values
                table.models[i], table.decisions[i] = tag, trace[i] + block.decisions[j] + shadows[i]
        shadowed = []
        keys, primary = requests.keys, self.primary.name
        for i in range(n):
            model = self.models[served[i]]
            predicted = metrics.class_label(model.profile.labels, label_of[i])
            for decision in shadows[i]:
                shadowed.append((i, decision.model, predicted))
            counts.answer(model.name, keys[i], predicted, exact[i], model.name != primary,
                          [(d.guardrail, d.action) for d in table.decisions[i]])
        return table, shadowed

    @staticmethod
    def _table(requests: RequestColumns, correlation_ids: Sequence[str | None], flags: list[list[str]]) -> AnswerTable:
        """A table for the batch's answers, the per-answer columns yet to fill."""
        n = len(requests)
        return AnswerTable(requests.request_ids, correlation_ids, [None] * n, [0.0] * n, [[]] * n, [[]] * n,
                           [""] * n, requests.subgroups, [[]] * n, flags)

    def _shown(self, block: AnswerColumns) -> list[tuple[int | None, float, float, list[str], list[float]]]:
        """Per row of a block: the emitted class (None: abstained), the confidence (exact, and
        rounded as shown), and the top_k classes' names and rounded probabilities, as `_render`
        gives them: classes by falling probability, suppressed ones left out."""
        k, probs = self.top_k, block.probs
        order = np.argsort(probs, axis=1)[:, ::-1]  # as `falling` orders each row
        kept = ~np.take_along_axis(block.suppressed, order, axis=1)
        rank = np.cumsum(kept, axis=1) - 1  # each kept class's place among the shown ones
        chosen = kept & (rank < k)
        rows, cols = np.nonzero(chosen)
        top = np.zeros((len(block), k), dtype=np.int64)
        top[rows, rank[rows, cols]] = order[rows, cols]
        count = chosen.sum(axis=1)
        label = block.label
        best = np.where(label >= 0, label, np.where(count > 0, top[:, 0], -1))
        confidence = np.where(best >= 0, probs[np.arange(len(block)), np.maximum(best, 0)], 0).astype(probs.dtype)
        names = _names(tuple(block.labels))[top].tolist()
        out = []
        for top_names, values, n_shown, emitted, exact, shown_confidence in zip(
                names, rounded(np.take_along_axis(probs, top, axis=1)), count.tolist(), label.tolist(),
                confidence.tolist(), rounded(confidence)):
            if n_shown < k:
                top_names, values = top_names[:n_shown], values[:n_shown]
            out.append((emitted if emitted >= 0 else None, exact, shown_confidence, top_names, values))
        return out

    async def _run(self, pixels: np.ndarray, served: list[str], trace: list[list[Decision]],
                   chain) -> tuple[np.ndarray | list[np.ndarray], list[int]]:
        """Each image through its model, one batch per model; a failing target falls back.
        Probabilities per image (one matrix when every model answering has as many classes,
        else a list of rows), and its region where the primary answered (else -1)."""
        regions = [-1] * len(served)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(served):
            groups[name].append(i)
        answered: list[tuple[list[int], np.ndarray]] = []

        async def run_group(name: str, idx: list[int]) -> None:
            batch = pixels[idx] if len(idx) < len(served) else pixels
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
            answered.append((idx, probs))
            if placed is not None:
                for i, region in zip(idx, placed.tolist()):
                    regions[i] = region

        if len(groups) == 1:  # one model answers the batch: no task to gather
            [(name, idx)] = groups.items()
            await run_group(name, idx)
        else:
            await asyncio.gather(*(run_group(name, idx) for name, idx in groups.items()))
        if len(answered) == 1 and len(answered[0][0]) == len(served):
            return answered[0][1], regions
        widths = {probs.shape[1] for _, probs in answered}
        if len(widths) == 1:
            out = np.empty((len(served), widths.pop()), dtype=np.result_type(*(p for _, p in answered)))
            for idx, probs in answered:
                out[idx] = probs
            return out, regions
        rows: list[np.ndarray] = [None] * len(served)  # type: ignore[list-item]
        for idx, probs in answered:
            for j, i in enumerate(idx):
                rows[i] = probs[j]
        return rows, regions

    def _shadow(self, name: str, pixels: np.ndarray, ours: str, key: str, request_id: str) -> None:
        """Compare model `name` on these pixels with the class answered (`ours`), off the response
        path, and log its answer to the request (the evidence automatic actions are gated on)."""
        if len(self._shadow_tasks) >= self.shadow_limit:
            metrics.SHADOW_SKIPPED.labels(name, "busy").inc()
            return
        task = asyncio.create_task(self._compare(name, pixels, ours, key, request_id))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _compare(self, name: str, pixels: np.ndarray, ours: str, key: str, request_id: str) -> None:
        try:
            probs = (await self.shadow_batchers[name](pixels[None]))[0]
        except Exception:
            metrics.SHADOW_SKIPPED.labels(name, "error").inc()
            return
        labels = self.models[name].profile.labels
        top = int(np.argmax(probs))
        self.log.record_shadow(request_id, name, labels[top])
        theirs = metrics.class_label(labels, top)
        outcome = "agree" if theirs == ours else "flip"
        metrics.child(metrics.SHADOW_COMPARISONS, (name, key, outcome)).inc()
        if outcome == "flip":
            metrics.child(metrics.SHADOW_FLIPS, (name, key, ours, theirs)).inc()

    def _render(self, table: AnswerTable, i: int, model, answer: Answer, decisions: list[Decision],
                order: np.ndarray, counts: metrics.AnswerCounts, key: str) -> None:
        """Fill row `i` of `table` with `answer` and count it in `counts`; `order`: its classes
        by falling probability."""
        hidden = answer.suppressed
        shown = [int(c) for c in order if int(c) not in hidden]
        best = answer.label if answer.label is not None else (shown[0] if shown else None)
        confidence = float(answer.probs[best]) if best is not None else 0.0
        counts.answer(model.name, key, metrics.class_label(answer.labels, answer.label), confidence,
                      model.name != self.primary.name, ((d.guardrail, d.action) for d in decisions))
        table.labels[i] = answer.labels[answer.label] if answer.label is not None else None
        table.confidences[i] = round(confidence, 6)
        table.top_labels[i] = [answer.labels[c] for c in shown[:self.top_k]]
        table.top_probabilities[i] = [round(float(answer.probs[c]), 6) for c in shown[:self.top_k]]
        table.models[i], table.decisions[i] = self.tags[model.name], decisions


@functools.lru_cache(maxsize=64)
def _names(labels: tuple[str, ...]) -> np.ndarray:
    """A model's class names as an array to index with a matrix of classes (one per model)."""
    return np.array(labels, dtype=object)
