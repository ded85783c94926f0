"""Real test-split images as PNG uploads, and an HTTP client that sends them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Sample:
    png: bytes
    label: int
    capture: str


def holdout_samples() -> list[Sample]:
    """Every test-split digit in both captures, as the PNG bytes a client would upload."""
    from runtime.preprocess import encode_png
    from training.digits import build_incident

    test = build_incident().test
    return [Sample(encode_png(img), int(y), str(c)) for img, y, c in zip(test.images, test.labels, test.captures)]


NEW_SENSOR = "new-sensor"  # a Sample's capture when a new scanner sensor took it (no attribute says so)


def new_sensor_samples(seed: int = 11) -> list[Sample]:
    """Every test-split scanner digit as a new, blurry, low-contrast scanner sensor delivers it
    (training.shifts.blurry_sensor). Its border stays dark: the service derives `scanner`."""
    from runtime.preprocess import encode_png
    from training.digits import build_incident
    from training.shifts import blurry_sensor

    scanner = build_incident().test.where("scanner")
    images = blurry_sensor(scanner.images, np.random.default_rng(seed))
    return [Sample(encode_png(img), int(y), NEW_SENSOR) for img, y in zip(images, scanner.labels)]


def production_samples(new_sensor_seed: int = 5) -> tuple[list[Sample], list[Sample]]:
    """The harvest's traffic: every training-split digit in both captures, and the training
    split's scanner digits as the new sensor delivers them. Never the test split: what is
    harvested and retrained on must not be what the accuracy is measured on."""
    from runtime.preprocess import encode_png
    from training.digits import build_incident
    from training.shifts import blurry_sensor

    train = build_incident().retrained_train
    both = [Sample(encode_png(img), int(y), str(c)) for img, y, c in zip(train.images, train.labels, train.captures)]
    scanner = train.where("scanner")
    images = blurry_sensor(scanner.images, np.random.default_rng(new_sensor_seed))
    return both, [Sample(encode_png(img), int(y), NEW_SENSOR) for img, y in zip(images, scanner.labels)]


def with_new_sensor(samples: list[Sample], sensor: list[Sample], share: float, seed: int = 0) -> list[Sample]:
    """`samples` with a `share` of its scanner images, drawn at random, taken by the new sensor instead."""
    rng = np.random.default_rng(seed)
    return [sensor[int(rng.integers(len(sensor)))] if s.capture == "scanner" and rng.random() < share else s
            for s in samples]


def stream(samples: list[Sample], n: int, phone_share: float, seed: int = 0) -> list[Sample]:
    """`n` samples drawn with the given share of `phone` captures, seeded."""
    rng = np.random.default_rng(seed)
    by_capture = {c: [s for s in samples if s.capture == c] for c in ("scanner", "phone")}
    picks = []
    for is_phone in rng.random(n) < phone_share:
        pool = by_capture["phone" if is_phone else "scanner"]
        picks.append(pool[int(rng.integers(len(pool)))])
    return picks


async def send_all(url: str | Sequence[str], samples: list[Sample], *, concurrency: int = 8,
                   send_context: bool = True, timeout: float = 30.0) -> list[tuple[Sample, int, dict]]:
    """POST each sample to /classify with `concurrency` in flight; (sample, status, body).
    Several URLs: sample i goes to url i mod n, as a round-robin load balancer sends it."""
    import aiohttp

    results: list[tuple[Sample, int, dict]] = [None] * len(samples)  # type: ignore[list-item]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(samples)):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            s = samples[i]
            form = aiohttp.FormData()
            form.add_field("image", s.png, filename="digit.png", content_type="image/png")
            if send_context:
                form.add_field("context", json.dumps({"capture": s.capture}))
            target = url if isinstance(url, str) else url[i % len(url)]
            async with session.post(f"{target}/classify", data=form) as r:
                results[i] = (s, r.status, await r.json(content_type=None))

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def run(url: str | Sequence[str], samples: list[Sample], **kwargs) -> tuple[list[tuple[Sample, int, dict]], float]:
    started = time.perf_counter()
    results = asyncio.run(send_all(url, samples, **kwargs))
    return results, time.perf_counter() - started
