"""Requests/s and latency of /classify, one run: (a) the minimal BentoML endpoint, (b)
classguard with monitors, guardrails (allow_all) and the log off, (c) classguard with
everything on: monitors, the demo's suppression chain, a 10% shadow, the prediction log.

    make bench            (or: python -m benchmarks.throughput --duration 10)

All serve the same TorchScript model with one worker and no access log, one after
the other on this machine, loaded by wrk (from Debian's `wrk` package) with the same real
test-split PNGs (70% scanner, 30% phone, no context: classguard infers the subgroup) at each
concurrency for requests/s; latency percentiles come from a sequential keep-alive client
(wrk's tails on a 2-core machine measure its own descheduling).
Results: a table on stdout and artifacts/bench_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.server import Server
from harness.traffic import holdout_samples, stream

BOUNDARY = "classguardbenchboundary"
LUA = Path(__file__).with_name("wrk_multipart.lua")
OUT = Path("artifacts/bench_throughput.json")
BARE = {"CLASSGUARD_MONITORS__ENABLED": "false", "CLASSGUARD_LOG__ENABLED": "false",
        "CLASSGUARD_GUARDRAILS__ACTIVE": "allow_all"}
TARGETS = {  # name: (bentoml serve target, environment)
    "(a) minimal BentoML": ("benchmarks.minimal_service:Minimal", {}),
    "(b) classguard, all off": (".", BARE),
    "(c) classguard, all on": (".", {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on"}),
}
SEQUENTIAL_REQUESTS = 1500  # per target, one in flight: the latency figures


def multipart(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def wrk(url: str, bodies: list[str], connections: int, seconds: int) -> dict[str, float]:
    env = {**os.environ, "BODIES": ",".join(bodies), "BOUNDARY": BOUNDARY}
    threads = min(2, connections)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-s", str(LUA), f"{url}/classify"], env=env, capture_output=True, text=True, check=True).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(pct: str) -> float:
        value, u = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * unit[u]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency("50"), "p99_ms": latency("99"), "non_2xx": int(errors.group(1)) if errors else 0}


def sequential(url: str, bodies: list[str]) -> dict[str, float]:
    """p50/p99 of one request at a time over keep-alive."""
    import httpx
    import numpy as np

    payloads = [Path(b).read_bytes() for b in bodies]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(SEQUENTIAL_REQUESTS):
            started = time.perf_counter()
            client.post("/classify", content=payloads[i % len(payloads)], headers=headers).raise_for_status()
            times.append(time.perf_counter() - started)
    ms = np.array(times[100:]) * 1000  # the first 100 warm the connection
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = []
        for i, sample in enumerate(stream(holdout_samples(), 64, phone_share=0.3, seed=11)):
            path = Path(tmp) / f"{i}.bin"
            path.write_bytes(multipart(sample.png))
            bodies.append(str(path))
        for name, (target, env) in TARGETS.items():
            print(f"serving {name} ...", file=sys.stderr)
            with Server(target, env=env) as server:
                wrk(server.url, bodies, 8, 2)  # warm-up
                results[name] = {}
                for c in args.concurrency:
                    results[name][str(c)] = wrk(server.url, bodies, c, args.duration)
                    print(f"  c={c}: {results[name][str(c)]}", file=sys.stderr)
                results[name]["sequential"] = sequential(server.url, bodies)
                time.sleep(0.5)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
              "device": "cpu", "duration_s": args.duration, "results": results}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'service':<26} {'conc':>5} {'req/s':>8} {'wrk p50 ms':>11} {'non-2xx':>8}")
    for name, by_c in results.items():
        for c in args.concurrency:
            r = by_c[str(c)]
            print(f"{name:<26} {c:>5} {r['requests_per_s']:>8.0f} {r['p50_ms']:>11.2f} {r['non_2xx']:>8}")
    print(f"\n{'service':<26} {'sequential p50 ms':>18} {'p99 ms':>8}")
    for name, by_c in results.items():
        print(f"{name:<26} {by_c['sequential']['p50_ms']:>18.2f} {by_c['sequential']['p99_ms']:>8.2f}")
    a, b, c_ = (results[n] for n in TARGETS)
    for c in args.concurrency:
        rps = lambda r: r[str(c)]["requests_per_s"]  # noqa: E731
        print(f"concurrency {c}: (c)/(a) {rps(c_) / rps(a):.2f}x, (c)/(b) {rps(c_) / rps(b):.2f}x")
    print(f"p99 added by everything on, (c) - (b): {c_['sequential']['p99_ms'] - b['sequential']['p99_ms']:+.2f} ms; "
          f"p50 {c_['sequential']['p50_ms'] - b['sequential']['p50_ms']:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
