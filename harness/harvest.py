"""Bob's loop, the demo's fifth step continued: keep the new sensor's images from production,
label some, export, retrain, and measure what the labels bought.

Capture is on (`stratified`): every model x subgroup x region keeps up to `per_stratum`
inputs a period, so the new sensor's regions are kept as fully as the common ones. Production
traffic (the training split's digits, never the test split the accuracy is measured on) flows;
the labeller (the demo, which knows the truth) labels captured inputs of the regions the
ranking named, oldest first, within a labelling budget, through POST /feedback; `classguard
dataset export` writes them as a training set; `training.train --models harvested --extra`
retrains the incident's architecture on the representative data plus the export.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from harness.traffic import NEW_SENSOR, production_samples, run, stream, with_new_sensor

HARVEST_SIZE = 3_000  # production requests while capture runs
LABEL_BUDGET = 400  # labels the labeller may spend
BUDGETS = (50, 100, 200, 400)  # the curve: new-sensor accuracy per labelling budget
HARVEST_DIR = Path("artifacts/harvest")
HARVESTED_MODEL = "classguard-harvested"


def admin(url: str, token: str, method: str, path: str, **kwargs):
    import httpx

    r = httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs)
    r.raise_for_status()
    return r.json()


def harvest(url: str, token: str, regions: list[str], phone_share: float, new_sensor_share: float,
            cli: Callable[..., str], *, traffic_to: str | list[str] | None = None,
            export_from: tuple[str, ...] = ()) -> dict:
    """Production traffic with capture on, labels for the named regions' captured inputs within
    the budget, the export; what happened, in numbers. `url` answers the admin and feedback
    calls; `traffic_to` (default `url`) takes the traffic, round-robin over a list of replicas;
    `export_from`: the export command's source arguments (`--url URL` or `--db URL`)."""
    both, sensor = production_samples()
    samples = with_new_sensor(stream(both, HARVEST_SIZE, phone_share, seed=21), sensor, new_sensor_share, seed=22)
    started = time.time()
    results, seconds = run(traffic_to or url, samples, concurrency=16, send_context=False)
    ended = time.time()
    failed = [r for r in results if r[1] != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} harvest requests failed, first: {failed[0][1]} {failed[0][2]}")
    time.sleep(1.5)  # the log (and its captured inputs) is written every 0.5 s
    truth = {body["request_id"]: sample for sample, _, body in results}
    window = {"since": started, "until": ended}
    captured = []
    for region in regions:
        after = None
        while True:
            page = admin(url, token, "GET", "/admin/inputs",
                         params={**window, "region": region, "limit": 1000, **({"after": after} if after else {})})
            captured += page["inputs"]
            after = page["next_after"]
            if after is None:
                break
    captured.sort(key=lambda r: (r["ts"], r["request_id"]))
    chosen = captured[:LABEL_BUDGET]
    items = [{"request_id": r["request_id"], "label": str(truth[r["request_id"]].label)} for r in chosen]
    recorded = admin(url, token, "POST", "/feedback", json={"items": items})["recorded"] if items else 0
    everything = admin(url, token, "GET", "/admin/inputs", params={**window, "limit": 1, "totals": 1})["totals"]
    n_new = sum(s.capture == NEW_SENSOR for s in samples)
    new_kept = sum(truth[r["request_id"]].capture == NEW_SENSOR for r in captured)
    new_labelled = sum(truth[r["request_id"]].capture == NEW_SENSOR for r in chosen)
    print(f"production: {len(samples)} requests ({n_new} from the new sensor) at {len(samples) / seconds:.0f} req/s; "
          f"capture kept {everything['captured']} inputs, {len(captured)} in regions {', '.join(regions)} "
          f"({new_kept} of them new-sensor images)")
    others = len(chosen) - new_labelled
    print(f"the labeller labelled the oldest {len(chosen)} captured inputs of those regions (budget {LABEL_BUDGET}) "
          f"through POST /feedback: {recorded} recorded; {new_labelled} were new-sensor images"
          + (f", {others} other images of those regions" if others else "") + "\n")
    region_args = [a for region in regions for a in ("--region", region)]
    print(f"$ classguard dataset export {' '.join(region_args)} --since <production> --until <end> --labelled "
          f"-o {HARVEST_DIR} {' '.join(export_from)}".rstrip())
    for stale in sorted(HARVEST_DIR.glob("**/*"), reverse=True) if HARVEST_DIR.exists() else []:
        stale.unlink() if stale.is_file() else stale.rmdir()
    print(cli("dataset", "export", *region_args, "--since", str(started), "--until", str(ended), "--labelled",
              "-o", str(HARVEST_DIR), *export_from) + "\n")
    return {"requests": len(samples), "captured": everything["captured"], "in_regions": len(captured),
            "new_sensor_kept": new_kept, "labelled": len(chosen), "new_sensor_labelled": new_labelled}


def retrain() -> None:
    """The incident's architecture on the representative data plus the export, stored as
    classguard-harvested (progress on stderr)."""
    print(f"$ python -m training.train --models harvested --force --extra {HARVEST_DIR}")
    done = subprocess.run([sys.executable, "-m", "training.train", "--models", "harvested", "--force", "--extra",
                           str(HARVEST_DIR), "--report", "artifacts/harvest-training.json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"retraining failed: {done.stderr.strip().splitlines()[-1:]}")
    print(done.stdout.rstrip() + "\n")


def budget_curve() -> list[tuple[int, dict]]:
    """New-sensor (and scanner, phone) test accuracy of the architecture retrained with the first
    `b` labelled inputs of the export, for each budget: what each label bought. Offline, on the
    test split's new-sensor images (the ones step 5 sent), never harvested."""
    from training.digits import Split
    from training.extra import read_export
    from training.train import CLASS_NAMES, fit_with_extra, new_sensor_accuracy

    labelled = read_export(HARVEST_DIR, CLASS_NAMES)
    curve = []
    for budget in BUDGETS:
        if budget > len(labelled):
            break
        first = Split(labelled.images[:budget], labelled.labels[:budget], labelled.captures[:budget])
        curve.append((budget, new_sensor_accuracy(fit_with_extra(first))))
    return curve


def print_budget_curve() -> None:
    print("new-sensor accuracy on the test split's new-sensor images, by labelling budget (offline, the "
          "architecture retrained with the first N labels of the export):")
    for budget, accuracy in budget_curve():
        print(f"  {budget:>4} labels: new sensor {accuracy['new_sensor']:.1%}, scanner {accuracy['scanner']:.1%}, "
              f"phone {accuracy['phone']:.1%}")
    print()
