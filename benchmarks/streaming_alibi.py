"""Alibi Detect's online detectors on benchmarks/streaming.py's streams, in an environment of their own.

    .venv-alibi/bin/python -m benchmarks.streaming_alibi STREAMS.npz OUT.json

Alibi Detect 0.13 pins numpy < 2, so it never shares the service's environment: `make
bench-streaming` builds `.venv-alibi` (alibi-detect only) and benchmarks/streaming.py hands
this module the streams as arrays and reads back each detector's alarms. Nothing of the
project is imported here but this file.

Per shift, as river's detectors are fed: `FETDriftOnline` on 0/1 indicator streams (the
phone indicator; the known-confusion flag per subgroup), `CVMDriftOnline` on each subgroup's
confidence. Each is configured by Alibi itself to the expected run time `ert` between false
alarms (its own calibration, by bootstrap), and reset after every alarm. Where a subgroup's
reference is constant (no flagged answer at all), FET cannot be configured for it, and one
detector watches the whole stream instead. For the region streams
(benchmarks/streaming_regions.py), `MMDDriftOnline` on the 64-wide embedding (torch backend,
on the CPU), one detector for the whole stream.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

WINDOWS = {"fet": [100], "cvm": [100], "mmd": [100]}  # one window each: its bootstrap configuration is the cost here
DETECTORS = {"fet": "FETDriftOnline", "cvm": "CVMDriftOnline", "mmd": "MMDDriftOnline"}


def detector(kind: str, reference: np.ndarray, ert: float, bootstraps: int):
    from alibi_detect.cd import CVMDriftOnline, FETDriftOnline, MMDDriftOnline

    if kind == "mmd":
        import torch

        # its tensors are tiny (one event, a window of 100): on this 2-core machine two threads
        # made the threshold configuration 3x and each prediction up to 10x slower than one
        torch.set_num_threads(1)
        return MMDDriftOnline(reference.astype(np.float32), ert=ert, window_size=WINDOWS["mmd"][0], backend="pytorch",
                              n_bootstraps=bootstraps, device="cpu", verbose=False)
    if kind == "fet":
        return FETDriftOnline(reference.astype(np.float64), ert=ert, window_sizes=WINDOWS["fet"],
                              n_bootstraps=bootstraps, alternative="greater", verbose=False)
    return CVMDriftOnline(reference.astype(np.float64), ert=ert, window_sizes=WINDOWS["cvm"],
                          n_bootstraps=bootstraps, verbose=False)


def run(detectors: list, values: np.ndarray, subgroups: np.ndarray) -> tuple[list[int], float]:
    """Alarm indices (event index + 1) and microseconds per event, each detector reset after an alarm."""
    for d in detectors:
        d.reset_state()
    alarms = []
    began = time.perf_counter()
    for i, (x, s) in enumerate(zip(values, subgroups)):
        d = detectors[s if len(detectors) > 1 else 0]
        # a number is a one-element instance; an embedding row is one instance as it is
        if d.predict(np.atleast_1d(x), return_test_stat=False)["data"]["is_drift"]:
            alarms.append(i + 1)
            d.reset_state()
    return alarms, 1e6 * (time.perf_counter() - began) / max(1, len(values))


def main(argv: list[str]) -> int:
    data = np.load(argv[0], allow_pickle=False)
    ert, bootstraps = float(data["ert"]), int(data["bootstraps"])
    results = {}
    for index, name in enumerate(str(s) for s in data["shifts"]):
        shift = f"s{index}"
        kind, groups = str(data[f"{shift}/kind"]), int(data[f"{shift}/groups"])
        began = time.perf_counter()
        detectors = [detector(kind, data[f"{shift}/reference/{g}"], ert, bootstraps) for g in range(groups)]
        configured = time.perf_counter() - began
        print(f"alibi {kind}: {name}: configured in {configured:.0f} s", file=sys.stderr, flush=True)
        out = {"detector": DETECTORS[kind], "configure_s": round(configured, 1),
               "per_subgroup": bool(data[f"{shift}/per_subgroup"])}
        for part in ("check", "bursty"):
            out[part], _ = run(detectors, data[f"{shift}/{part}/value"], data[f"{shift}/{part}/subgroup"])
        out["changed"], out["us"] = [], []
        for r in range(int(data[f"{shift}/repeats"])):
            alarms, us = run(detectors, data[f"{shift}/changed/{r}/value"], data[f"{shift}/changed/{r}/subgroup"])
            out["changed"].append(alarms)
            out["us"].append(us)
        results[name] = out
    with open(argv[1], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
