"""The GPU benchmark: does the service keep up with a GPU? One run, one command, under 8 minutes.

    python -m benchmarks.gpu                  (make bench-gpu; needs an NVIDIA GPU and CUDA torch)
    python -m benchmarks.gpu --device cpu --quick    (a short rehearsal of the same steps on CPU)

A ResNet-50 layout (He et al., 2016: bottleneck stages of 3, 4, 6 and 3 blocks, 23.5 M
parameters with 10 classes; random weights, so accuracy means nothing here) on 224 x 224
RGB is imported with `classguard import-model` into a fresh model store and served by
`bentoml serve` with the monitors and the prediction log on (`allow_all`: the chains in
config/guardrails.yaml name the incident's models), in float16 on CUDA. Measured, each for
`--seconds`:

- raw: the TorchScript forward pass alone, on the same device and precision, batch 1, 8, 64
  and 256 (inputs already on the device: the ceiling);
- `/classify_batch` with one uint8 `.npy` array and with N JPEG parts, at the same batch sizes,
  two requests in flight;
- `/classify`, one JPEG a request, at concurrency 1, 8 and 32.

Each: images/s and p99 latency of a request; GPU utilisation sampled by `nvidia-smi` every
0.5 s when it is present. Results: a table on stdout and artifacts/bench_gpu.json, naming the
card.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.imported_model import SIZE, head, import_torchscript, stem

OUT = Path("artifacts/bench_gpu.json")
BATCHES = (1, 8, 64, 256)
CONCURRENCY = (1, 8, 32)


def log(event: str, **fields: object) -> None:
    print(" ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())]), file=sys.stderr, flush=True)


def resnet50(n_classes: int = 10):
    """ResNet-50's layout: a 7x7 stem, then bottleneck blocks (1x1, 3x3, 1x1, expansion 4)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = stem(), 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
    layers += head(cin, n_classes)
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


def import_model(tmp: Path, n_val: int) -> dict[str, str]:
    """The model, scripted and imported with the CLI into a fresh store; the serving environment."""
    rng = np.random.default_rng(0)
    return import_torchscript(tmp, "resnet50", resnet50(),
                              rng.integers(0, 256, (n_val, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 10, n_val))


def raw_forward(path: Path, device: str, half: bool, batches, seconds: float) -> dict[str, dict[str, float]]:
    """images/s and p99 ms of the bare forward pass (synchronised), inputs already on the device."""
    import torch

    torch.set_num_threads(1)
    module = torch.jit.load(str(path), map_location=device).eval()
    dtype = torch.float16 if half else torch.float32
    module = module.to(dtype)
    results = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.rand(batch, 3, SIZE, SIZE, device=device, dtype=dtype)
            for _ in range(3):  # TorchScript's profiling executor optimises on the second call
                torch.softmax(module(x).float(), dim=1).cpu()
            times, started = [], time.perf_counter()
            while time.perf_counter() - started < seconds or len(times) < 3:
                t = time.perf_counter()
                torch.softmax(module(x).float(), dim=1).cpu()  # the answer's probabilities reach the host
                times.append(time.perf_counter() - t)
            results[str(batch)] = summary(batch, times)
    return results


def summary(batch: int, times: list[float]) -> dict[str, float]:
    return {"images_per_s": round(batch * len(times) / sum(times), 1),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 2), "requests": len(times)}


def jpegs(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def npy(batch: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(2).integers(0, 256, (batch, 3, SIZE, SIZE), dtype=np.uint8))
    return buffer.getvalue()


def hammer(url: str, path: str, make_files, images_per_request: int, in_flight: int,
           seconds: float) -> dict[str, float]:
    """`in_flight` clients posting for `seconds`: images/s over all, p99 of a request."""
    import httpx

    times: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            i = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                c.post(path, files=make_files(k + i)).raise_for_status()
                with lock:
                    times.append(time.perf_counter() - t)
                i += in_flight

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"images_per_s": round(images_per_request * len(times) / elapsed, 1),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 2), "requests": len(times)}


class Utilisation:
    """GPU utilisation (%) from nvidia-smi every 0.5 s while a measurement runs; None without it."""

    def __init__(self) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Utilisation":
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                self.samples.append(float(done.stdout.split()[0]))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def card() -> str:
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    import platform

    return f"no GPU: {platform.machine()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8, concurrency 1 and 8, 1 s each")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs an NVIDIA GPU and the CUDA build of torch "
              "(`--device cpu --quick` rehearses it on CPU)", file=sys.stderr)
        return 2
    from harness.server import Server

    half = args.device == "cuda"
    batches = BATCHES[:2] if args.quick else BATCHES
    concurrency = CONCURRENCY[:2] if args.quick else CONCURRENCY
    seconds = 1.0 if args.quick else args.seconds
    report: dict = {"card": card(), "device": args.device, "precision": "float16" if half else "float32",
                    "model": "ResNet-50 layout, random weights, 224x224x3, 10 classes, TorchScript",
                    "seconds_per_measurement": seconds}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log("bench_gpu.import", card=report["card"].replace(" ", "_"))
        env = import_model(tmp, n_val=64)
        log("bench_gpu.raw", batches=",".join(map(str, batches)))
        report["raw"] = raw_forward(tmp / "resnet50.ts", args.device, half, batches, seconds)
        serve_env = {"BENTOML_HOME": env["BENTOML_HOME"], "CLASSGUARD_MODELS__PRIMARY": "resnet50:latest",
                     "CLASSGUARD_MODELS__OTHERS": "[]", "CLASSGUARD_GUARDRAILS__ACTIVE": "allow_all",
                     "CLASSGUARD_MONITORS__KNOWN_CONFUSIONS": "[]", "CLASSGUARD_DEVICE": args.device,
                     "CLASSGUARD_HALF_PRECISION": str(half).lower(),
                     "CLASSGUARD_BATCHING__MAX_BATCH_SIZE": str(max(batches)),
                     "CLASSGUARD_LIMITS__MAX_UPLOAD_BYTES": str(max(batches) * 3 * SIZE * SIZE + 1_000_000),
                     "CLASSGUARD_LIMITS__MAX_BATCH_IMAGES": str(max(batches))}
        pictures = jpegs(64)
        with Server(env=serve_env, log_path=tmp / "serve.log") as server:
            report["array"], report["jpeg_parts"], report["classify"], report["gpu_utilisation"] = {}, {}, {}, {}
            for batch in batches:
                array = npy(batch)
                parts = [("images", (f"{i}.jpg", pictures[i % len(pictures)], "image/jpeg")) for i in range(batch)]
                hammer(server.url, "/classify_batch", lambda k: [("array", ("b.npy", array))], batch, 1, 0.5)  # warm
                log("bench_gpu.batch", batch=batch)
                with Utilisation() as gpu:
                    report["array"][str(batch)] = hammer(server.url, "/classify_batch",
                                                         lambda k: [("array", ("b.npy", array))], batch, 2, seconds)
                report["gpu_utilisation"][f"array_{batch}"] = gpu.mean
                with Utilisation() as gpu:
                    report["jpeg_parts"][str(batch)] = hammer(server.url, "/classify_batch", lambda k: parts, batch, 2,
                                                              seconds)
                report["gpu_utilisation"][f"jpeg_{batch}"] = gpu.mean
            for c in concurrency:
                log("bench_gpu.classify", concurrency=c)
                with Utilisation() as gpu:
                    report["classify"][str(c)] = hammer(
                        server.url, "/classify",
                        lambda k: {"image": ("a.jpg", pictures[k % len(pictures)], "image/jpeg")}, 1, c, seconds)
                report["gpu_utilisation"][f"classify_{c}"] = gpu.mean
    report["ratios"] = {b: {"array_over_raw": round(report["array"][b]["images_per_s"] / report["raw"][b]["images_per_s"], 3),
                            "jpeg_over_raw": round(report["jpeg_parts"][b]["images_per_s"] / report["raw"][b]["images_per_s"], 3)}
                        for b in map(str, batches)}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['card']}; {report['device']}, {report['precision']}; {seconds:g} s a measurement, "
          f"{report['wall_s']:.0f} s in all")
    print(f"{'batch':>6} {'raw img/s':>10} {'p99 ms':>8} {'.npy img/s':>11} {'p99 ms':>8} {'ratio':>6} "
          f"{'JPEG img/s':>11} {'p99 ms':>8} {'ratio':>6} {'GPU % (npy/jpeg)':>17}")
    for b in map(str, batches):
        raw, arr, jpg = report["raw"][b], report["array"][b], report["jpeg_parts"][b]
        util = "/".join(shown(report["gpu_utilisation"][f"{kind}_{b}"]) for kind in ("array", "jpeg"))
        print(f"{b:>6} {raw['images_per_s']:>10,.0f} {raw['p99_ms']:>8.2f} {arr['images_per_s']:>11,.0f} "
              f"{arr['p99_ms']:>8.2f} {report['ratios'][b]['array_over_raw']:>6.1%} {jpg['images_per_s']:>11,.0f} "
              f"{jpg['p99_ms']:>8.2f} {report['ratios'][b]['jpeg_over_raw']:>6.1%} {util:>17}")
    for c in map(str, concurrency):
        r = report["classify"][c]
        print(f"/classify at concurrency {c}: {r['images_per_s']:,.0f} images/s, p99 {r['p99_ms']:.2f} ms, "
              f"GPU {shown(report['gpu_utilisation'][f'classify_{c}'])}%")
    return 0


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
