"""Latency added by each guardrail profile, against the chain `allow_all`, in one run.

    python -m benchmarks.guardrail_latency        (make bench-guardrails)

One `bentoml serve` (one worker); the chain is swapped through the admin route between
measurements, and profiles take turns in rounds so machine noise spreads over all of them.
A sequential client (one request in flight, keep-alive) sends the same real test-split PNGs
(30% phone, no context) and times each request. Results: stdout and
artifacts/bench_guardrail_latency.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from harness.server import Server
from harness.traffic import holdout_samples, stream

OUT = Path("artifacts/bench_guardrail_latency.json")
PROFILES = ["allow_all", "abstain_when_unsure", "suppress_phone_confusions", "shadow_retrained",
            "route_phone_to_retrained"]


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="per profile and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(16)
    samples = stream(holdout_samples(), args.requests, phone_share=0.3, seed=3)
    latencies: dict[str, list[float]] = {p: [] for p in PROFILES}
    env = {"CLASSGUARD_ADMIN_TOKEN": token, "CLASSGUARD_GUARDRAILS__AUDIT_LOG": "artifacts/bench-guardrail-audit.jsonl"}
    with Server(env=env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {token}"}
        for round_ in range(args.rounds):
            for profile in PROFILES:
                client.post("/admin/guardrails", json={"profile": profile}, headers=auth).raise_for_status()
                time.sleep(0.6)
                for s in samples[:50]:  # warm-up after the swap
                    client.post("/classify", files={"image": ("d.png", s.png)})
                for s in samples:
                    started = time.perf_counter()
                    r = client.post("/classify", files={"image": ("d.png", s.png)})
                    latencies[profile].append(time.perf_counter() - started)
                    if r.status_code != 200:
                        raise RuntimeError(f"{profile}: {r.status_code} {r.text}")
                print(f"round {round_ + 1}/{args.rounds}: {profile} done", file=sys.stderr)
    base = np.array(latencies["allow_all"]) * 1000
    results = {}
    print(f"{'profile':<28} {'p50 ms':>8} {'p99 ms':>8} {'p50 added':>10} {'p99 added':>10}")
    for profile, values in latencies.items():
        ms = np.array(values) * 1000
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        results[profile] = {"n": len(ms), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                            "p50_added_ms": round(p50 - float(np.percentile(base, 50)), 3),
                            "p99_added_ms": round(p99 - float(np.percentile(base, 99)), 3)}
        r = results[profile]
        print(f"{profile:<28} {p50:>8.2f} {p99:>8.2f} {r['p50_added_ms']:>10.2f} {r['p99_added_ms']:>10.2f}")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"client": "sequential, keep-alive", "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
