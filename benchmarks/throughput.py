"""Requests/s, latency and CPU per request of /classify, one run: (a) the minimal BentoML
endpoint, (b) classguard with monitors, guardrails (allow_all) and the log off, (c)
classguard with everything on: monitors (region monitors included), the demo's suppression
chain, a 10% shadow, the prediction log; (d) the same as (c) with the region monitors off,
so (c)/(d) is what the regions cost; (e) the same as (c) with input capture on (`stratified`
at its default budget), so (e)/(c) is what capture costs; (c') a second copy of (c), so
(c)/(c') is the run-to-run spread of two equal services, the noise the other ratios are held
against (`--services "c,c',d" --rounds 12`: the regions' cost alone, with enough rounds).

    make bench            (or: python -m benchmarks.throughput --duration 5 --rounds 3)

All serve the same TorchScript model with one worker and no access log. They run side
by side and take turns (the order rotates every round), so drift in this shared machine's
speed hits each alike; each figure is the median over the rounds. While one is measured the
others are paused (SIGSTOP to each of their processes, workers included, SIGCONT after; `--no-pause-idle` turns it
off): an idle service's own timers (its monitors' publish, the new-region search) otherwise
take the measured one's CPU on a 2-core machine, in amounts that depend on that service. wrk (Debian's `wrk`)
sends the same real test-split PNGs (70% scanner, 30% phone, no context: classguard infers
the subgroup). Besides requests/s, the CPU time the server's processes used per answered
request is read from /proc: a steadier measure of what a feature costs than requests/s on a
machine whose load generator shares the cores. Latency percentiles come from a sequential
keep-alive client (wrk's tails on a 2-core machine measure its own descheduling).
Results: a table on stdout and artifacts/bench_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.server import Server, paused
from harness.traffic import holdout_samples, stream

BOUNDARY = "classguardbenchboundary"
LUA = Path(__file__).with_name("wrk_multipart.lua")
OUT = Path("artifacts/bench_throughput.json")
BARE = {"CLASSGUARD_MONITORS__ENABLED": "false", "CLASSGUARD_LOG__ENABLED": "false",
        "CLASSGUARD_GUARDRAILS__ACTIVE": "allow_all"}
TARGETS = {  # name: (bentoml serve target, environment)
    "(a) minimal BentoML": ("benchmarks.minimal_service:Minimal", {}),
    "(b) classguard, all off": (".", BARE),
    "(c) classguard, all on": (".", {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on",
                                      "CLASSGUARD_MONITORS__REGIONS": "true"}),
    "(d) all on, regions off": (".", {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on",
                                      "CLASSGUARD_MONITORS__REGIONS": "false"}),
    "(e) all on + capture": (".", {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on",
                                   "CLASSGUARD_MONITORS__REGIONS": "true", "CLASSGUARD_CAPTURE__POLICY": "stratified"}),
    # (c) again, a process of its own: (c)/(c') is what this machine's noise alone makes of
    # two equal services, the yardstick for (c)/(d) and (e)/(c)
    "(c') all on, again": (".", {"CLASSGUARD_GUARDRAILS__ACTIVE": "everything_on",
                                 "CLASSGUARD_MONITORS__REGIONS": "true"}),
}
SEQUENTIAL_REQUESTS = 600  # per target and round, one in flight: the latency figures


def multipart(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def cpu_seconds(server: Server) -> float:
    """User + system CPU of `bentoml serve` and every process under it, so far."""
    import psutil

    root = psutil.Process(server.process.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def wrk(server: Server, bodies: list[str], connections: int, seconds: int) -> dict[str, float]:
    env = {**os.environ, "BODIES": ",".join(bodies), "BOUNDARY": BOUNDARY}
    threads = min(2, connections)
    cpu_before = cpu_seconds(server)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-s", str(LUA), f"{server.url}/classify"], env=env, capture_output=True, text=True,
                         check=True).stdout
    cpu = cpu_seconds(server) - cpu_before
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(pct: str) -> float:
        value, u = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * unit[u]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    answered = int(re.search(r"(\d+) requests in", out).group(1))
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency("50"), "p99_ms": latency("99"), "non_2xx": int(errors.group(1)) if errors else 0,
            "cpu_us_per_request": round(cpu / max(answered, 1) * 1e6, 1)}


@contextlib.contextmanager
def alone(servers: dict[str, Server], name: str, pause: bool):
    """`servers[name]` with every other server paused (each of its processes, workers too)."""
    with paused([s for n, s in servers.items() if n != name] if pause else []):
        yield servers[name]


def sequential(url: str, payloads: list[bytes], n: int) -> list[float]:
    """Milliseconds of `n` requests sent one at a time over keep-alive (after 50 to warm up)."""
    import httpx

    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n + 50):
            started = time.perf_counter()
            client.post("/classify", content=payloads[i % len(payloads)], headers=headers).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times[50:]


RATIOS = {  # key: (numerator, denominator, what the ratio measures)
    "c_over_a": ("(c) classguard, all on", "(a) minimal BentoML", "classguard against a bare endpoint"),
    "c_over_b": ("(c) classguard, all on", "(b) classguard, all off", "everything on"),
    "c_over_d": ("(c) classguard, all on", "(d) all on, regions off", "the region monitors"),
    "c_over_c2": ("(c) classguard, all on", "(c') all on, again", "run-to-run spread, on vs on"),
    "e_over_c": ("(e) all on + capture", "(c) classguard, all on", "capture (stratified)"),
}


def ratios_at(runs: dict, results: dict, c: str) -> dict[str, float | list[float]]:
    """Each ratio of RATIOS whose two services ran: of the medians, per round, and the CPU
    per request the numerator adds."""
    out: dict[str, float | list[float]] = {}
    for key, (x, y, _) in RATIOS.items():
        if x in runs and y in runs:
            out[key] = round(results[x][c]["requests_per_s"] / results[y][c]["requests_per_s"], 3)
            out[key + "_per_round"] = [round(p["requests_per_s"] / q["requests_per_s"], 3)
                                       for p, q in zip(runs[x][c], runs[y][c])]
            out[key + "_cpu_us"] = round(results[x][c]["cpu_us_per_request"] - results[y][c]["cpu_us_per_request"], 1)
    return out


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns each service takes at each concurrency")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--services", type=lambda s: s.split(","), default=list("abcde") + ["c'"],
                        help="which services to run, by letter (e.g. c,c',d: what the regions cost, and the "
                             "noise to hold it against)")
    parser.add_argument("--pause-idle", action=argparse.BooleanOptionalAction, default=True,
                        help="pause the services not being measured (default: on)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    names = [n for n in TARGETS if n[1:n.index(")")] in args.services]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {str(c): [] for c in args.concurrency} for n in names}
    latencies: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        bodies = []
        for i, sample in enumerate(stream(holdout_samples(), 64, phone_share=0.3, seed=11)):
            path = Path(tmp) / f"{i}.bin"
            path.write_bytes(multipart(sample.png))
            bodies.append(str(path))
        payloads = [Path(b).read_bytes() for b in bodies]
        servers = {}
        for name in names:
            target, env = TARGETS[name]
            print(f"starting {name} ...", file=sys.stderr)
            servers[name] = stack.enter_context(Server(target, env=env))
            wrk(servers[name], bodies, 8, 2)  # warm-up
        for c in args.concurrency:
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    with alone(servers, name, args.pause_idle) as server:
                        run = wrk(server, bodies, c, args.duration)
                    runs[name][str(c)].append(run)
                    print(f"  c={c} round {r + 1} {name}: {run}", file=sys.stderr)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                with alone(servers, name, args.pause_idle) as server:
                    latencies[name] += sequential(server.url, payloads, SEQUENTIAL_REQUESTS)
    results = {n: {c: median_of(runs[n][c]) for c in runs[n]} for n in names}
    for n in names:
        ms = np.array(latencies[n])
        results[n]["sequential"] = {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                                    "p99_ms": round(float(np.percentile(ms, 99)), 3), "requests": len(ms)}
    ratios = {c: ratios_at(runs, results, c) for c in map(str, args.concurrency)}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
              "device": "cpu", "duration_s": args.duration, "rounds": args.rounds, "idle_paused": args.pause_idle,
              "results": results,
              "ratios": ratios, "runs": runs}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"medians of {args.rounds} interleaved rounds of {args.duration} s"
          + (", the other services paused" if args.pause_idle else ""))
    print(f"{'service':<26} {'conc':>5} {'req/s':>8} {'wrk p50 ms':>11} {'CPU us/req':>11} {'non-2xx':>8}")
    for name in names:
        for c in map(str, args.concurrency):
            r = results[name][c]
            print(f"{name:<26} {c:>5} {r['requests_per_s']:>8.0f} {r['p50_ms']:>11.2f} "
                  f"{r['cpu_us_per_request']:>11.0f} {sum(x['non_2xx'] for x in runs[name][c]):>8.0f}")
    print(f"\n{'service':<26} {'sequential p50 ms':>18} {'p99 ms':>8}")
    for name in names:
        print(f"{name:<26} {results[name]['sequential']['p50_ms']:>18.2f} {results[name]['sequential']['p99_ms']:>8.2f}")
    for c, r in ratios.items():
        print(f"concurrency {c}:")
        for key, (x, y, what) in RATIOS.items():
            if key in r:
                print(f"    {what}: {key.replace('_over_', ')/(').join('()')} {r[key]:.3f}x (rounds: "
                      f"{', '.join(f'{v:.2f}' for v in r[key + '_per_round'])}); CPU {r[key + '_cpu_us']:+.0f} us/request")
    seq = {n: results[n]["sequential"] for n in names}
    for key, (x, y, what) in RATIOS.items():
        if x in seq and y in seq:
            print(f"{what}, sequential: p50 {seq[x]['p50_ms'] - seq[y]['p50_ms']:+.2f} ms, "
                  f"p99 {seq[x]['p99_ms'] - seq[y]['p99_ms']:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
