"""The sidecar's cost next to a real model's compute: a ResNet-18-sized network (random
weights, 224 x 224 RGB, 10 classes) imported with `classguard import-model`, served with
everything classguard does, against its raw TorchScript forward pass, one run.

    python -m benchmarks.realistic_model        (make bench-resnet)

Results name the device: CUDA when available, else CPU (torch threads as the service sets
them, 1). The single-request time is split with the server's own histograms: the forward
pass, the rest of the handler (multipart parsing, PNG decode, preprocessing, monitors, log),
and what lies outside the handler (HTTP transfer, BentoML's routing, the client).
Stdout and artifacts/bench_resnet.json.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.imported_model import SIZE, head, import_torchscript, stem

OUT = Path("artifacts/bench_resnet.json")
SINGLE, BATCHES = 30, 8  # timed repetitions


def resnet18(n_classes: int = 10):
    """ResNet-18's layout (He et al., 2016): 4 stages of 2 basic blocks, 11.2 M parameters."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = stem(), 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += head(512, n_classes)
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


def raw_forward(module, device: str) -> dict[int, dict[str, float]]:
    """ms per batch and images/s of the bare TorchScript forward, batch 1 and 8."""
    import torch

    torch.set_num_threads(1)
    raw = {}
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.rand(batch, 3, SIZE, SIZE, device=device)
            for _ in range(3):  # TorchScript's profiling executor optimises on the second call
                module(x)
            times = []
            for _ in range(SINGLE if batch == 1 else BATCHES):
                started = time.perf_counter()
                module(x).cpu()
                times.append(time.perf_counter() - started)
            raw[batch] = {"ms_per_batch": 1000 * float(np.median(times)), "images_per_s": batch / float(np.median(times))}
    return raw


def main() -> int:
    import httpx
    import torch
    from PIL import Image

    from harness import promtext
    from harness.server import Server

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import_torchscript(tmp, "resnet18", resnet18(), images, rng.integers(0, 10, len(images)))

        module = torch.jit.load(str(tmp / "resnet18.ts"), map_location=device).eval()
        # on a thread of its own, as the service runs forward passes: on this CPU the same
        # batch-8 pass took 194 ms on the main thread and 160 ms on another one
        with ThreadPoolExecutor(1) as pool:
            raw = pool.submit(raw_forward, module, device).result()

        pngs = []
        for img in images[:8]:
            buffer = io.BytesIO()
            Image.fromarray(img).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        serve_env = {"BENTOML_HOME": str(tmp / "home"), "CLASSGUARD_MODELS__PRIMARY": "resnet18:latest",
                     "CLASSGUARD_MODELS__OTHERS": "[]", "CLASSGUARD_GUARDRAILS__ACTIVE": "allow_all",
                     "CLASSGUARD_MONITORS__KNOWN_CONFUSIONS": "[]"}
        with Server(env=serve_env) as server, httpx.Client(base_url=server.url, timeout=120) as client:
            files = [("images", (f"{i}.png", pngs[i], "image/png")) for i in range(8)]
            for _ in range(3):
                client.post("/classify", files={"image": ("a.png", pngs[0])}).raise_for_status()
                client.post("/classify_batch", files=files).raise_for_status()
            before = promtext.scrape(server.url)
            single = []
            for i in range(SINGLE):
                started = time.perf_counter()
                client.post("/classify", files={"image": ("a.png", pngs[i % 8])}).raise_for_status()
                single.append(time.perf_counter() - started)
            after = promtext.scrape(server.url)
            batch_times, before_batches = [], after
            for _ in range(BATCHES):
                started = time.perf_counter()
                client.post("/classify_batch", files=files).raise_for_status()
                batch_times.append(time.perf_counter() - started)
            after_batches = promtext.scrape(server.url)
    served_ms = 1000 * float(np.median(single))

    def mean_ms(name: str, start=None, end=None, **labels: str) -> float:
        start, end = start or before, end or after
        total = promtext.total(end, f"{name}_sum", **labels) - promtext.total(start, f"{name}_sum", **labels)
        count = promtext.total(end, f"{name}_count", **labels) - promtext.total(start, f"{name}_count", **labels)
        return round(1000 * total / count, 2)

    handler_ms = mean_ms("classguard_request_duration_seconds", endpoint="classify")
    forward_ms = mean_ms("classguard_inference_duration_seconds")
    results = {
        "device": device, "model": "ResNet-18 layout, random weights, 224x224x3, TorchScript",
        "upload_bytes": len(pngs[0]),
        "raw_forward_ms_batch1": round(raw[1]["ms_per_batch"], 2),
        "classify_ms_batch1": round(served_ms, 2),
        "sidecar_ms_added_batch1": round(served_ms - raw[1]["ms_per_batch"], 2),
        # where a single request's time goes, from the server's own histograms (means)
        "in_server_forward_ms": forward_ms,
        "in_server_handler_ms": handler_ms,
        "handler_besides_forward_ms": round(handler_ms - forward_ms, 2),
        "outside_handler_ms": round(1000 * float(np.mean(single)) - handler_ms, 2),
        "raw_images_per_s_batch8": round(raw[8]["images_per_s"], 1),
        "classify_batch_images_per_s_batch8": round(8 / float(np.median(batch_times)), 1),
    }
    results["in_server_forward_ms_batch8"] = mean_ms("classguard_inference_duration_seconds", before_batches,
                                                     after_batches)
    results["raw_forward_ms_batch8"] = round(raw[8]["ms_per_batch"], 2)
    results["batch8_ratio"] = round(results["classify_batch_images_per_s_batch8"] / results["raw_images_per_s_batch8"], 3)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results.items():
        print(f"{k:<36} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
