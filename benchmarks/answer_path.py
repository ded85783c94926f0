"""Where a batch's time goes besides the forward pass, in-process, everything on (monitors, the
demo's chain with a 10% shadow, the prediction log), with the models' outputs computed
beforehand, so the figures are the Python around the model and nothing else.

    python -m benchmarks.answer_path          (part of make bench-batch)

Per batch size, microseconds per image (medians of 5 rounds of about 1 s), at three depths:
`answer`: `Serving.answer_all` and the JSON body (after the forward pass: monitors,
guardrails, rendering, log row, metrics); `npy`: the whole /classify_batch handler on one
uint8 .npy upload (multipart parsing, decoding, normalising, subgroups, then the same);
`npy_columns`: the same with columnar answers (`?format=columns`); `png`: the handler on N
PNG parts. The log's writer and the monitors' drain, which run off the
request path (a thread, a background task), are timed apart. Then one profiled round of each
depth at batch 64, its time split by component. Last, a single image through the whole
/classify handler, everything on against everything off (a second wiring in the same
process), in 6 alternating rounds. `--batches 1,64` measures only those batch sizes.
Results: stdout and artifacts/bench_answer.json.
"""

from __future__ import annotations

import argparse
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
BATCHES = (1, 8, 64, 256)
DEPTHS = ("answer", "npy", "npy_columns", "png")
COMPONENTS = (  # (component, path fragments of the functions it owns), first match wins
    ("multipart parsing", ("multipart", "starlette/formparsers", "http_input")),
    ("decoding (PNG, .npy)", ("PIL/", "array_input", "preprocess", "runtime/prepare", "subgroups", "derived")),
    ("render + trace", ("guardrails/answer_table", "runtime/serving", "probability_rows", "service/classify")),
    ("guardrails", ("guardrails/",)),
    ("monitors", ("monitors/", "monitor_pipeline")),
    ("prediction log", ("prediction_log",)),
    ("metrics", ("core/metrics", "prometheus_client")),
    ("event loop", ("asyncio", "selectors", "select.epoll")),
    ("numpy", ("numpy",)),
)


EVERYTHING_ON = {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on"}
EVERYTHING_OFF = {"CLASSGUARD_GUARDRAILS__ACTIVE": "allow_all", "CLASSGUARD_MONITORS__ENABLED": "false",
                  "CLASSGUARD_LOG__ENABLED": "false"}


def engine_with_precomputed_outputs(tmp: str, env: dict[str, str] = EVERYTHING_ON):
    """The service's wiring (everything on unless `env` says otherwise), its batchers answering
    from outputs computed once; the classify endpoints on it; the test digits (normalised, their
    subgroups, as PNGs)."""
    os.environ.update({"PROMETHEUS_MULTIPROC_DIR": tmp, "CLASSGUARD_LOG__PATH": f"{tmp}/log.sqlite",
                       "CLASSGUARD_RUNTIME_DIR": tmp, **env})
    import numpy as np

    from core.config import load_settings
    from runtime.engine import Engine
    from runtime.preprocess import encode_png, normalise
    from service.classify import ClassifyEndpoints
    from training.digits import build_incident

    load_settings.cache_clear()  # settings are read once per process; each engine here reads its own
    settings = load_settings()
    engine = Engine(settings)
    endpoints = ClassifyEndpoints(serving=engine.serving, resolver=engine.resolver, spec=engine.spec,
                                  limits=settings.limits, model_tag=engine.primary.tag,
                                  keep_images=settings.log.store_image_hash or settings.capture.policy != "off")
    test = build_incident().test
    n = max(BATCHES)  # every batch measured is a prefix of these
    unit = (test.images[:n].astype(np.float32) / 255.0)[:, None]
    pixels = normalise(unit, engine.spec)
    subgroups = engine.resolver.resolve_many([None] * n, unit)
    primary = engine.primary
    outputs = primary.predict_with_regions(pixels) if engine.regions else primary.predict(pixels)
    others = {name: model.predict(pixels) for name, model in engine.models.items()}

    def answering(output):
        async def batcher(x):
            m = len(x)
            return tuple(part[:m] for part in output) if isinstance(output, tuple) else output[:m]
        return batcher

    serving = engine.serving
    serving.batchers = {name: answering(outputs if name == primary.name else others[name]) for name in engine.models}
    serving.shadow_batchers = {name: answering(others[name]) for name in engine.models}
    for name in env:
        del os.environ[name]
    import gc

    gc.freeze()  # as the service does once loaded (service/service.py)
    images = test.images[:n]
    return engine, endpoints, pixels, subgroups, images, [encode_png(img) for img in images]


BOUNDARY = "classguardanswerpath"


def multipart(parts: list[tuple[str, str, bytes, str]]) -> bytes:
    """A multipart/form-data body of (field, filename, bytes, content type) parts."""
    out = b""
    for field, filename, data, kind in parts:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def starlette_request(body: bytes, path: str = "/classify_batch", query: bytes = b""):
    """A starlette Request for POST `path?query` carrying `body`, as the server builds it."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
                         (b"content-length", str(len(body)).encode())]}
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def main(argv: list[str] | None = None) -> int:
    import io

    import numpy as np
    import orjson

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=list(BATCHES))
    batches = [b for b in parser.parse_args(argv).batches if 1 <= b <= max(BATCHES)]
    tmp = tempfile.mkdtemp(prefix="classguard-answer-")
    engine, endpoints, pixels, subgroups, images, pngs = engine_with_precomputed_outputs(tmp)
    serving, counter = engine.serving, [0]

    def npy_body(batch: int) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, images[:batch])
        return multipart([("array", "batch.npy", buffer.getvalue(), "application/octet-stream")])

    bodies = {("npy", b): npy_body(b) for b in batches}
    bodies.update({("png", b): multipart([("images", f"{i}.png", pngs[i], "image/png") for i in range(b)])
                   for b in batches})

    async def answer(batch: int) -> None:
        counter[0] += 1
        ids = [f"{counter[0]:012d}.{i}" for i in range(batch)]
        table = await serving.answer_all(pixels[:batch], subgroups[:batch], ids, [None] * batch, None)
        orjson.dumps({"results": table.rows()})

    async def handler(kind: str, batch: int, query: bytes = b"") -> None:
        response = await endpoints.classify_batch(starlette_request(bodies[kind, batch], query=query))
        assert response.status_code == 200, response.body[:300]

    def depth(name: str):
        if name == "answer":
            return lambda b: answer(b)
        if name == "npy_columns":
            return lambda b: handler("npy", b, b"format=columns")
        return lambda b: handler(name, b)

    async def rounds(work, batch: int, seconds: float) -> list[float]:
        per_image = []
        for _ in range(5):
            n, spent, started = 0, 0.0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                t = time.perf_counter()
                await work(batch)
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
        await rounds(depth("npy"), batches[-1], 0.2)  # warm-up
        results: dict = {}
        print(f"{'batch':>5} {'answer':>8} {'npy':>8} {'columns':>8} {'png':>8}   us an image besides the forward pass "
              f"(medians of 5 rounds); off the request path: log write, monitor drain", flush=True)
        for batch in batches:
            row = results[str(batch)] = {}
            for name in DEPTHS:
                per_image = await rounds(depth(name), batch, 1.0)
                row[name] = {"us": round(statistics.median(per_image), 2), "rounds": [round(v, 2) for v in per_image]}
            log_us, drain_us = await off_path(batch)
            row["log_write_us"], row["monitor_drain_us"] = round(log_us, 2), round(drain_us, 2)
            print(f"{batch:>5} " + " ".join(f"{row[name]['us']:>8.2f}" for name in DEPTHS)
                  + f"   {log_us:.2f}, {drain_us:.2f}", flush=True)
        return results

    results = asyncio.run(run())
    profiles = {}
    profile_at = 64 if 64 in batches else batches[-1]
    for name in DEPTHS:
        profile = profiled(depth(name), engine, profile_at)
        total, measured = sum(profile.values()), results[str(profile_at)][name]["us"]
        profiles[name] = {k: round(v / total, 4) for k, v in profile.items()}
        print(f"\n{name} at batch {profile_at}, {measured:.1f} us an image, by component "
              f"(shares of one profiled round):")
        for component, seconds in sorted(profile.items(), key=lambda kv: -kv[1]):
            print(f"  {component:<24} {seconds / total:6.1%}  ~{seconds / total * measured:5.1f} us")
    single = on_against_off(engine, endpoints, pngs[0])
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"batches": results, f"profile_{profile_at}": profiles, "single_on_off_us": single},
                              indent=2) + "\n")
    return 0


def on_against_off(engine, endpoints, png: bytes) -> dict[str, list[float]]:
    """One PNG through /classify, microseconds a request, everything on and everything off taking
    turns over 6 rounds of 1,000 requests."""
    off = engine_with_precomputed_outputs(tempfile.mkdtemp(prefix="classguard-answer-off-"), EVERYTHING_OFF)
    body = multipart([("image", "0.png", png, "image/png")])
    sides = {"on": (engine, endpoints), "off": off[:2]}

    async def one_round(endpoint) -> float:
        started = time.perf_counter()
        for _ in range(1000):
            response = await endpoint.classify(starlette_request(body, "/classify"))
            assert response.status_code == 200, response.body[:300]
            await asyncio.sleep(0)
        return (time.perf_counter() - started) / 1000 * 1e6

    async def run() -> dict[str, list[float]]:
        per_request: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(6):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                per_request[name].append(round(await one_round(sides[name][1]), 1))
            engine.log.flush()
            engine.monitors.drain()
        return per_request

    per_request = asyncio.run(run())
    on, off_us = statistics.median(per_request["on"]), statistics.median(per_request["off"])
    print(f"\none image through /classify, in-process: everything on {on:.1f} us, off {off_us:.1f} us, "
          f"+{on - off_us:.1f} us (rounds on {per_request['on']}, off {per_request['off']})")
    return per_request


def profiled(work, engine, batch: int) -> dict[str, float]:
    """Own time of every function in one round at `batch`, summed by component."""

    async def round_() -> None:
        for _ in range(60):
            await work(batch)
            await asyncio.sleep(0)

    profile = cProfile.Profile()
    profile.enable()
    asyncio.run(round_())
    profile.disable()
    engine.log.flush()
    engine.monitors.drain()
    by_component: dict[str, float] = {}
    for (path, _, function), (_, _, own, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        where = f"{path}:{function}"
        name = next((c for c, parts in COMPONENTS if any(p in where for p in parts)), "other (Python builtins)")
        by_component[name] = by_component.get(name, 0.0) + own
    return by_component


if __name__ == "__main__":
    raise SystemExit(main())
