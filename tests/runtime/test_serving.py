"""The request path with guardrails, in-process with stand-in models: route fallback on a
failing or slow target, and shadows that never change the answer."""

import asyncio
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from guardrails.answers import AllowAll
from guardrails.chain import Chain
from guardrails.routing import Route, Shadow
from runtime.monitor_pipeline import NoMonitors
from runtime.serving import Serving
from store.prediction_log import NoLog

LABELS = tuple("0123456789")


def model(name):
    return SimpleNamespace(name=name, tag=f"{name}:v1", profile=SimpleNamespace(labels=LABELS))


def probs_for(label):
    p = np.full(10, 0.02)
    p[label] = 0.82
    return p


def make_serving(chain, target_behaviour="ok"):
    async def primary(x):
        return np.stack([probs_for(1)] * len(x))

    async def target(x):
        if target_behaviour == "error":
            raise RuntimeError("target down")
        if target_behaviour == "slow":
            await asyncio.sleep(1.0)
        return np.stack([probs_for(7)] * len(x))

    return Serving(models={"base": model("base"), "fixed": model("fixed")}, primary="base",
                   batchers={"base": primary, "fixed": target}, shadow_batchers={"base": primary, "fixed": target},
                   monitors=NoMonitors(), chain=SimpleNamespace(chain=chain), log=NoLog(), top_k=3, shadow_limit=8)


def serve(serving, n=1, subgroup="phone"):
    async def go():
        out = (await serving.answer_all(np.zeros((n, 1, 8, 8), np.float32), [{"capture": subgroup}] * n,
                                        [f"r{i}" for i in range(n)])).rows()
        await asyncio.sleep(0.05)  # let shadow tasks finish
        return out

    return asyncio.run(go())


ROUTE = Route("fixed", subgroups=["capture=phone"], timeout_ms=100)


def test_route_answers_with_the_target():
    """Phone requests are answered by the target model and the trace says why."""
    [out] = serve(make_serving(Chain([ROUTE, AllowAll()])))
    assert out["model"] == "fixed:v1" and out["label"] == "7"
    assert out["guardrails"][0] == {"guardrail": "route", "action": "route", "reason": "subgroup capture=phone"}


def test_failing_target_falls_back_to_the_primary():
    """A target that raises: the primary answers, and the fallback is in the trace."""
    [out] = serve(make_serving(Chain([ROUTE]), "error"))
    assert out["model"] == "base:v1" and out["label"] == "1"
    assert [d["action"] for d in out["guardrails"]] == ["route", "fallback"]
    assert "error" in out["guardrails"][1]["reason"]


def test_slow_target_times_out_to_the_primary():
    """A target slower than timeout_ms: the primary answers within about the timeout."""
    serving = make_serving(Chain([ROUTE]), "slow")
    [out] = serve(serving)
    assert out["model"] == "base:v1" and "timeout" in out["guardrails"][1]["reason"]


def test_shadow_never_changes_the_answer():
    """With a shadow of a model that disagrees on every image, answers equal the unshadowed ones
    except for the shadow entry in the trace."""
    plain = serve(make_serving(Chain([AllowAll()])), n=20)
    shadowed = serve(make_serving(Chain([AllowAll(), Shadow("fixed", share=1.0)])), n=20)
    for a, b in zip(plain, shadowed):
        assert {k: v for k, v in a.items() if k != "guardrails"} == {k: v for k, v in b.items() if k != "guardrails"}
        assert b["guardrails"][-1]["action"] == "shadow"


def test_unrouted_requests_never_touch_the_target():
    """Scanner requests are served by the primary alone even when the target is down."""
    [out] = serve(make_serving(Chain([ROUTE]), "error"), subgroup="scanner")
    assert out["model"] == "base:v1" and out["guardrails"] == []


def test_the_primarys_regions_reach_the_monitors_and_a_routed_answer_has_none():
    """With a primary batcher giving (probabilities, regions), each answer the primary served is
    observed with its region, a fallback keeps the primary's, and a routed answer is observed
    with -1 (the codebook is the primary's)."""
    seen = []

    class Recording(NoMonitors):
        def observe(self, model, subgroup, probs, predicted, region=-1, request=True):
            seen.append((model, subgroup, region))
            return []

    async def primary(x):
        return np.stack([probs_for(1)] * len(x)), np.arange(len(x), dtype=np.int64) + 5

    serving = make_serving(Chain([ROUTE, AllowAll()]))
    serving.batchers["base"] = primary
    serving.monitors = Recording()
    serve(serving, n=2, subgroup="scanner")
    serve(serving, n=1, subgroup="phone")
    assert seen == [("base", "capture=scanner", 5), ("base", "capture=scanner", 6), ("fixed", "capture=phone", -1)]
    seen.clear()
    failing = make_serving(Chain([ROUTE]), "error")
    failing.batchers["base"] = primary
    failing.monitors = Recording()
    serve(failing, n=1, subgroup="phone")
    assert seen == [("base", "capture=phone", 5)]


def test_region_conditions_route_and_abstain_on_the_primarys_region_and_the_log_row_carries_it():
    """A route on region r06 sends that image to the target after the primary placed it (the trace
    names the region), `abstain` on novel withholds the other's label, and each log row holds the
    primary's region, the routed one included."""
    from guardrails.answers import Abstain

    rows = []

    class RecordingLog(NoLog):
        def record_table(self, table, probs, config_hash, subgroups, images=None, regions=None):
            rows.extend(zip(table.request_ids, table.models, regions))

    async def primary(x):
        return np.stack([probs_for(1)] * len(x)), np.array([6, 7, 2][:len(x)], dtype=np.int64)

    serving = make_serving(Chain([Route("fixed", regions=["r06"]), Abstain(regions=["novel"])]))
    serving.batchers["base"], serving.log = primary, RecordingLog()
    serving.regions = [f"r{i:02d}" for i in range(7)] + ["novel"]
    routed, novel, plain = serve(serving, n=3, subgroup="scanner")
    assert routed["model"] == "fixed:v1" and routed["label"] == "7"
    assert routed["guardrails"][0] == {"guardrail": "route", "action": "route", "reason": "region r06"}
    assert novel["label"] is None and novel["guardrails"] == [
        {"guardrail": "abstain", "action": "abstain", "reason": "region novel"}]
    assert plain["model"] == "base:v1" and plain["label"] == "1" and plain["guardrails"] == []
    assert rows == [("r0", "fixed:v1", "r06"), ("r1", "base:v1", "novel"), ("r2", "base:v1", "r02")]


def test_batch_ordering_renders_what_each_answers_own_methods_give():
    """Over random batches with ties, some rows of another length (a routed model's classes) and random
    suppressed labels, the order `falling` gives makes the same top_k and best allowed label as
    Answer.top_k and Answer.best_allowed."""
    from guardrails.core import Answer
    from runtime.probability_rows import falling

    rng = np.random.default_rng(9)
    for trial in range(200):
        n, classes = int(rng.integers(1, 20)), int(rng.integers(2, 12))
        rows = [np.round(rng.dirichlet(np.ones(classes)), 1).astype(np.float32) for _ in range(n)]
        if trial % 3 == 0:
            rows[0] = np.round(rng.dirichlet(np.ones(classes + 1)), 1).astype(np.float32)
        for probs, order in zip(rows, falling(rows)):
            labels = tuple(str(c) for c in range(len(probs)))
            hidden = frozenset(int(c) for c in np.flatnonzero(rng.random(len(probs)) < 0.3))
            answer = Answer("m", labels, probs, None, suppressed=hidden)
            shown = [int(c) for c in order if int(c) not in hidden]
            assert [(labels[c], float(probs[c])) for c in shown[:3]] == answer.top_k(3)
            assert (shown[0] if shown else None) == answer.best_allowed()


def test_the_batch_path_answers_logs_and_counts_as_the_per_image_path(monkeypatch):
    """Over 150 random chains and batches (routes before and after the primary, every answer
    guardrail, shadows, random flags and regions, ties in the probabilities), deciding the batch
    on columns gives the same responses, log rows, shadow comparisons and metric counts as
    deciding it image by image; and on both paths the columnar format, read back row by row, is
    the per-answer format, answer by answer."""
    from core import metrics
    import runtime.serving as serving_module
    from tests.guardrails.test_columns import FLAGS, KEYS, random_guardrail

    recorded = {}

    class Counts(metrics.AnswerCounts):
        def flush(self):
            recorded["counts"] = (dict(self.predictions), dict(self.confidence), dict(self.routed),
                                  dict(self.actions))

    class Flags(NoMonitors):
        alerts = {"capture=phone": frozenset({"representation"})}

        def observe_many(self, models, subgroups, probs, regions, request=True):
            # flags that depend on the answer only, so both paths see the same ones
            return [[f for k, f in enumerate(FLAGS) if int(p.argmax() * 7 + k) % 3 == 0] for p in probs]

    class Log(NoLog):
        def record_table(self, table, probs, config_hash, subgroups, images=None, regions=None):
            recorded["log"].extend((r, p.tolist(), config_hash, m, k, region, table.flagged(i))
                                   for i, (r, p, m, k, region) in enumerate(zip(table.rows(), probs, table.models,
                                                                                subgroups, regions)))

    def probs_of(x):  # each image's probabilities are in its pixels: both paths get the same
        return np.ascontiguousarray(x[:, 0, 0, :10]).astype(np.float32)

    async def primary(x):
        return probs_of(x), (x[:, 0, 1, 0] * 10).astype(np.int64) % 4 - 1

    async def other(x):
        return probs_of(x)[:, ::-1].copy()

    monkeypatch.setattr(metrics, "AnswerCounts", Counts)
    rng = np.random.default_rng(6)
    regions = ["r00", "r01", "novel"]
    for _ in range(150):
        chain = Chain([random_guardrail(rng) for _ in range(int(rng.integers(1, 6)))])
        n = int(rng.integers(1, 30))
        pixels = np.zeros((n, 1, 2, 10), np.float32)
        pixels[:, 0, 0, :10] = np.round(rng.dirichlet(np.full(10, 0.3), size=n), 1)
        pixels[:, 0, 1, 0] = rng.integers(0, 4, size=n) / 10
        subgroups = [dict([k.split("=")]) for k in rng.choice(KEYS, size=n)]
        ids = [f"id-{rng.integers(1 << 30)}" for _ in range(n)]
        outcomes = []
        for numpy_from in (1, 10 ** 6):
            monkeypatch.setattr(serving_module, "NUMPY_FROM", numpy_from)
            serving = Serving(models={"base": model("base"), "other": model("other")}, primary="base",
                              batchers={"base": primary, "other": other}, shadow_batchers={}, monitors=Flags(),
                              chain=SimpleNamespace(chain=chain), log=Log(), top_k=3, shadow_limit=8,
                              regions=regions)
            shadows = []
            serving._shadow = lambda name, px, ours, key, request_id: shadows.append((name, px.tolist(), ours, key, request_id))
            recorded["log"] = []
            table = asyncio.run(serving.answer_all(pixels, subgroups, ids, [f"c{i}" for i in range(n)]))
            outcomes.append((table.rows(), recorded["log"], shadows, recorded["counts"], orjson.loads(orjson.dumps(table.columns()))))
        assert outcomes[0] == outcomes[1]
        for rows, *_, columns in outcomes:
            assert answers_of(columns) == orjson.loads(orjson.dumps(rows))


def answers_of(columns: dict) -> list[dict]:
    """The per-answer format, read from the columnar one as a client would."""
    return [{"request_id": columns["request_id"][i], "correlation_id": columns["correlation_id"][i],
             "label": columns["label"][i], "confidence": columns["confidence"][i],
             "top_k": [{"label": label, "probability": p}
                       for label, p in zip(columns["top_k_labels"][i], columns["top_k_probabilities"][i])],
             "abstained": columns["abstained"][i], "model": columns["model"][i],
             "subgroup": columns["subgroups"][columns["subgroup"][i]],
             "guardrails": [columns["decisions"][j] for j in columns["guardrails"][i]], "flags": columns["flags"][i]}
            for i in range(len(columns["request_id"]))]


def test_a_rerun_leaves_the_primarys_answers_the_monitors_hold_untouched():
    """A flag route re-answers an image with the target: the probabilities the monitors were given
    for the primary's answer (queued, calibrated later) still read the primary's, not the target's."""
    held = []

    class Holding(NoMonitors):
        def observe_many(self, models, subgroups, probs, regions, request=True):
            held.extend(zip(models, list(probs)))
            return [["low_confidence"] for _ in models]

    serving = make_serving(Chain([Route("fixed", flags=["low_confidence"])]))
    serving.monitors = Holding()
    for n in (1, 9):  # the per-image and the column paths
        held.clear()
        answers = serve(serving, n=n, subgroup="scanner")
        assert all(a["model"] == "fixed:v1" for a in answers)
        assert [int(np.argmax(p)) for m, p in held if m == "base"] == [1] * n


def test_the_subgroup_mix_counts_requests_and_the_model_monitors_count_each_models_answers(tmp_path):
    """With a route judged after the primary, 300 requests (90 phone, some re-answered by the
    target) are 300 samples of the subgroup mix at phone share 0.300, while the class and
    confidence monitors count every answer of each model: the primary's 300 and the target's
    re-answers."""
    from core.config import MonitorsConfig
    from runtime.monitor_pipeline import MonitorPipeline
    from tests.monitors.conftest import MODELS, SUBGROUPS, make_profile

    def four(name):
        return SimpleNamespace(name=name, tag=f"{name}:v1", profile=SimpleNamespace(labels=tuple("abcd")))

    unsure = np.array([0.26, 0.25, 0.25, 0.24], np.float32)  # low confidence for any profile: the flag route fires
    sure = np.array([0.94, 0.02, 0.02, 0.02], np.float32)

    async def primary(x):  # every fourth image unsure
        return np.stack([unsure if i % 4 == 0 else sure for i in range(len(x))])

    async def target(x):
        return np.stack([np.array([0.02, 0.94, 0.02, 0.02], np.float32)] * len(x))

    pipeline = MonitorPipeline(MonitorsConfig(state_dir=tmp_path, min_samples=20), MODELS,
                               [make_profile(1), make_profile(2)], SUBGROUPS)
    serving = Serving(models={"base": four("base"), "fixed": four("fixed")}, primary="base",
                      batchers={"base": primary, "fixed": target}, shadow_batchers={},
                      monitors=pipeline, chain=SimpleNamespace(chain=Chain([Route("fixed", flags=["low_confidence"])])),
                      log=NoLog(), top_k=3, shadow_limit=8)
    captures = ["phone"] * 90 + ["scanner"] * 210
    answers = []
    for start in range(0, 300, 30):  # batches of 30 (the column path) and ...
        chunk = captures[start:start + 30]
        answers += asyncio.run(serving.answer_all(np.zeros((len(chunk), 1, 8, 8), np.float32),
                                                  [{"capture": c} for c in chunk],
                                                  [f"r{start + i}" for i in range(len(chunk))])).rows()
    for i in range(3):  # ... single images (the per-image path)
        answers += asyncio.run(serving.answer_all(np.zeros((1, 1, 8, 8), np.float32), [{"capture": "phone"}],
                                                  [f"s{i}"])).rows()
    rerouted = sum(a["model"] == "fixed:v1" for a in answers)
    assert 0 < rerouted < len(answers) == 303
    pipeline.drain()
    scores = pipeline.publish()

    def score(monitor, statistic, **where):
        [s] = [s for s in scores if s.monitor == monitor and s.statistic == statistic
               and all(getattr(s, k) == v for k, v in where.items())]
        return s

    share = score("representation", "share", subgroup="capture=phone")
    assert share.samples == 303 and share.value == pytest.approx(93 / 303)
    for monitor, statistic in (("class_drift", "js_distance"), ("confidence", "mean_confidence")):
        answered = {m: sum(score(monitor, statistic, model=m, subgroup=k).samples for k in SUBGROUPS[:2]) for m in MODELS}
        assert answered == {"base": 303, "fixed": rerouted}
