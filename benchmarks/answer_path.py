"""Where a batch's time goes after the forward pass: `Serving.answer_all` in-process, everything
on (monitors, the demo's chain with a 10% shadow, the prediction log), with the models' outputs
computed beforehand, so the figure is the Python around the model and nothing else.

    python -m benchmarks.answer_path          (part of make bench-batch)

Per batch size: microseconds per image on the request path (median of 5 rounds of about 1 s),
plus rendering the batch's JSON body; the log's writer and the monitors' drain, which run off
the request path (a thread, a background task), are timed apart per image. Then one profiled
round at batch 64, its time split by component. Results: stdout and artifacts/bench_answer.json.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

OUT = Path("artifacts/bench_answer.json")
BATCHES = tuple(int(b) for b in os.environ.get("BATCHES", "1,8,64,256").split(","))
COMPONENTS = (  # (component, path fragments of the functions it owns), first match wins
    ("guardrails", ("guardrails/",)),
    ("monitors", ("monitors/", "monitor_pipeline")),
    ("prediction log", ("prediction_log",)),
    ("metrics", ("service/metrics", "prometheus_client")),
    ("render + trace", ("runtime/serving",)),
    ("event loop", ("asyncio", "selectors", "select.epoll")),
    ("numpy", ("numpy",)),
)


def engine_with_precomputed_outputs(tmp: str):
    """The service's wiring with everything on, its batchers answering from outputs computed once."""
    os.environ.update({"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on", "PROMETHEUS_MULTIPROC_DIR": tmp,
                       "CLASSGUARD_LOG__PATH": f"{tmp}/log.sqlite", "CLASSGUARD_RUNTIME_DIR": tmp})
    import numpy as np

    from runtime.engine import Engine
    from runtime.preprocess import normalise
    from service.config import load_settings
    from training.digits import build_incident

    engine = Engine(load_settings())
    test = build_incident().test
    n = max(BATCHES)
    unit = (test.images[:n].astype(np.float32) / 255.0)[:, None]
    pixels = normalise(unit, engine.spec)
    subgroups = engine.resolver.resolve_many([None] * n, unit)
    primary = engine.primary
    outputs = primary.predict_with_regions(pixels) if engine.regions else primary.predict(pixels)
    others = {name: model.predict(pixels) for name, model in engine.models.items()}

    def answering(name: str, output):
        async def batcher(x):
            m = len(x)
            return tuple(part[:m] for part in output) if isinstance(output, tuple) else output[:m]
        return batcher

    serving = engine.serving
    serving.batchers = {name: answering(name, outputs if name == primary.name else others[name])
                        for name in engine.models}
    serving.shadow_batchers = {name: answering(name, others[name]) for name in engine.models}
    import gc

    gc.freeze()  # as the service does once loaded (service/service.py)
    return engine, pixels, subgroups


def main() -> int:
    import numpy as np
    import orjson

    tmp = tempfile.mkdtemp(prefix="classguard-answer-")
    engine, pixels, subgroups = engine_with_precomputed_outputs(tmp)
    serving, counter = engine.serving, [0]

    async def answer(batch: int) -> list:
        counter[0] += 1
        ids = [f"{counter[0]:012d}.{i}" for i in range(batch)]
        return await serving.answer_all(pixels[:batch], subgroups[:batch], ids, [None] * batch, None)

    async def rounds(batch: int, seconds: float) -> list[float]:
        per_image = []
        for _ in range(5):
            n, spent, started = 0, 0.0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                t = time.perf_counter()
                body = await answer(batch)
                orjson.dumps({"results": body})
                spent += time.perf_counter() - t
                n += batch
                await asyncio.sleep(0)  # shadow comparisons run, as they would between requests
            per_image.append(spent / n * 1e6)
            engine.log.flush()
            engine.monitors.drain()
        return per_image

    async def off_path(batch: int) -> tuple[float, float]:
        """The log write and the monitors' drain, per image, for 20 batches."""
        engine.log.flush()
        engine.monitors.drain()
        for _ in range(20):
            await answer(batch)
        t = time.perf_counter()
        engine.log.flush(retention=False)
        log_us = (time.perf_counter() - t) / (20 * batch) * 1e6
        t = time.perf_counter()
        engine.monitors.drain()
        return log_us, (time.perf_counter() - t) / (20 * batch) * 1e6

    async def run() -> dict:
        await rounds(16, 0.3)  # warm-up
        results = {}
        for batch in BATCHES:
            per_image = await rounds(batch, 1.0)
            log_us, drain_us = await off_path(batch)
            results[str(batch)] = {"request_path_us": round(statistics.median(per_image), 2),
                                   "rounds_us": [round(v, 2) for v in per_image],
                                   "log_write_us": round(log_us, 2), "monitor_drain_us": round(drain_us, 2)}
            print(f"batch {batch:>4}: {statistics.median(per_image):7.2f} us an image on the request path "
                  f"(rounds {', '.join(f'{v:.1f}' for v in per_image)}); off it: log write {log_us:.2f}, "
                  f"monitor drain {drain_us:.2f}", flush=True)
        return results

    results = asyncio.run(run())
    profile = profiled(answer, engine, 64)
    total = sum(profile.values())
    request_us = results["64"]["request_path_us"]
    print(f"\nbatch 64, {request_us:.1f} us an image, by component (shares of one profiled round):")
    for name, seconds in sorted(profile.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {seconds / total:6.1%}  ~{seconds / total * request_us:5.1f} us")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"batches": results, "profile_64": {k: round(v / total, 4) for k, v in profile.items()}},
                              indent=2) + "\n")
    return 0


def profiled(answer, engine, batch: int) -> dict[str, float]:
    """Own time of every function in one round at `batch`, summed by component."""
    import orjson

    async def round_() -> None:
        for _ in range(100):
            orjson.dumps({"results": await answer(batch)})
            await asyncio.sleep(0)

    profile = cProfile.Profile()
    profile.enable()
    asyncio.run(round_())
    profile.disable()
    engine.log.flush()
    by_component: dict[str, float] = {}
    for (path, _, function), (_, _, own, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        where = f"{path}:{function}"
        name = next((c for c, parts in COMPONENTS if any(p in where for p in parts)), "other (Python builtins)")
        by_component[name] = by_component.get(name, 0.0) + own
    return by_component


if __name__ == "__main__":
    raise SystemExit(main())
