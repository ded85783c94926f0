"""The batch path against the physical limit: images/s through /classify_batch vs the raw
TorchScript forward pass of the same model at the same batch sizes, one run.

    python -m benchmarks.batch_path         (make bench-batch)

Raw: the model alone on already-decoded inputs (torch threads as the service sets them).
Service: requests of N real test-split images each, two in flight, everything on (monitors,
the demo's chain with a 10% shadow, the log): as N PNG parts, as one uint8 .npy array, and as
one .npy array answered in columns (`?format=columns`). Beside them, the ceiling of this stack:
`benchmarks.bare_batch_service`, the plainest BentoML endpoint taking the same `.npy` and
answering label and confidence in columns, forward pass inline, nothing else. The client is Python (httpx) on the
same machine and parses every answer (`response.json()`), as a user's would. Each batch size
is measured in 3 rounds that rotate the order of the four measurements, so the machine's
drift hits each alike; the figures are the medians. Where the rest of the time
goes: `python -m benchmarks.answer_path` (make bench-batch runs both).
Results: stdout and artifacts/bench_batch.json.
"""

from __future__ import annotations

import functools
import json
import statistics
import threading
import time
from pathlib import Path


OUT = Path("artifacts/bench_batch.json")
BATCHES = (1, 16, 64, 256)
ROUNDS = 3


@functools.cache
def baseline_module():
    import torch

    from runtime.models import find_stored
    from store.model_store import WEIGHTS_FILE

    return torch.jit.load(find_stored("classguard-baseline:latest").path_of(WEIGHTS_FILE)).eval()


def raw_images_per_s(batch: int, seconds: float = 3.0) -> float:
    """The TorchScript forward pass alone, in this process, one thread."""
    import torch

    torch.set_num_threads(1)
    module = baseline_module()
    x = torch.rand(batch, 1, 8, 8)
    n, started = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            torch.softmax(module(x), dim=1).numpy()
            n += batch
    return n / (time.perf_counter() - started)


def png_files(pngs: list[bytes], batch: int) -> list:
    return [("images", (f"{i}.png", pngs[i % len(pngs)], "image/png")) for i in range(batch)]


def array_files(pngs: list[bytes], batch: int) -> list:
    """The same images as one uint8 .npy upload."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(io.BytesIO(pngs[i % len(pngs)])).convert("L")) for i in range(batch)])
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    return [("array", ("batch.npy", buffer.getvalue(), "application/octet-stream"))]


def service_images_per_s(url: str, files: list, batch: int, seconds: float = 4.0, columns: bool = False) -> float:
    import httpx

    counts = []
    path = "/classify_batch?format=columns" if columns else "/classify_batch"

    def client() -> None:
        n, started = 0, time.perf_counter()
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() - started < seconds:
                response = c.post(path, files=files)
                response.raise_for_status()
                body = response.json()  # every answer parsed, as a client would
                answered = len(body["answers"]["label"]) if columns else len(body["results"])
                if answered != batch:
                    raise RuntimeError(f"{answered} answers to {batch} images")
                n += batch
        counts.append(n / (time.perf_counter() - started))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def main() -> int:
    from harness.server import Server, paused
    from harness.traffic import holdout_samples

    pngs = [s.png for s in holdout_samples()]
    kinds = ("raw", "service", "service_array", "service_columns", "bare_bentoml")
    rounds: dict[str, dict[str, list[int]]] = {k: {str(b): [] for b in BATCHES} for k in kinds}
    with Server(env={"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on"}) as server, \
            Server("benchmarks.bare_batch_service:BareBatch") as bare:
        service_images_per_s(server.url, png_files(pngs, 16), 16, seconds=1.0)  # warm-up
        service_images_per_s(bare.url, array_files(pngs, 16), 16, seconds=1.0, columns=True)
        measure = {
            "raw": lambda b: raw_images_per_s(b),
            "service": lambda b: service_images_per_s(server.url, png_files(pngs, b), b),
            "service_array": lambda b: service_images_per_s(server.url, array_files(pngs, b), b),
            "service_columns": lambda b: service_images_per_s(server.url, array_files(pngs, b), b, columns=True),
            "bare_bentoml": lambda b: service_images_per_s(bare.url, array_files(pngs, b), b, columns=True),
        }
        servers = {"classguard": server, "bare": bare}
        measured_on = {"raw": None, "bare_bentoml": "bare"}  # the other kinds: classguard
        for b in BATCHES:
            for r in range(ROUNDS):
                for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # the order rotates every round
                    # every other server paused (its background work is not this kind's cost); raw: all
                    measured = measured_on.get(kind, "classguard")
                    with paused(s for n, s in servers.items() if n != measured):
                        rounds[kind][str(b)].append(round(measure[kind](b)))
            print(f"batch {b}: " + ", ".join(f"{k} {rounds[k][str(b)]}" for k in kinds), flush=True)
    results = {k: {b: int(statistics.median(v)) for b, v in rounds[k].items()} for k in kinds}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({**results, "rounds": rounds}, indent=2) + "\n")
    print(f"\n{'batch':>6} {'raw torch':>10} {'PNG images':>11} {'ratio':>6} {'one .npy':>9} {'ratio':>6}"
          f" {'.npy, columns':>14} {'ratio':>6} {'bare BentoML':>13} {'ratio':>6}   (images/s, medians of {ROUNDS} rounds)")
    for b in BATCHES:
        raw, svc, arr, col, bare_ = (results[k][str(b)] for k in kinds)
        print(f"{b:>6} {raw:>10,} {svc:>11,} {svc / raw:>6.1%} {arr:>9,} {arr / raw:>6.1%} {col:>14,} {col / raw:>6.1%}"
              f" {bare_:>13,} {bare_ / raw:>6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
