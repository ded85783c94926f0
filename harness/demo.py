"""`make demo`: serve the baseline model, stream real test-split digits from both capture
processes through it, and print what the live service reports per subgroup.

The client sends no subgroup: the service infers `capture` from each image (the realistic
case), and the table shows how often that inference agreed with the true capture.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import promtext
from harness.server import Server
from harness.traffic import run, stream, holdout_samples

STREAM_SIZE = 1_500
PHONE_SHARE = 0.3
LOG = Path("artifacts/demo-serve.log")


def main() -> int:
    LOG.parent.mkdir(exist_ok=True)
    samples = stream(holdout_samples(), STREAM_SIZE, PHONE_SHARE, seed=7)
    print(f"starting bentoml serve (log: {LOG}) ...", file=sys.stderr)
    with Server(log_path=LOG, env={"CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}) as server:
        print(f"sending {len(samples)} test-split images ({PHONE_SHARE:.0%} phone) to {server.url}/classify ...",
              file=sys.stderr)
        results, seconds = run(server.url, samples, concurrency=16, send_context=False)
        time.sleep(2.5)  # let the monitors publish the last events
        samples_after = promtext.scrape(server.url)
    failed = [r for r in results if r[1] != 200]
    if failed:
        print(f"{len(failed)} requests failed, first: {failed[0][1]} {failed[0][2]}", file=sys.stderr)
        return 1
    correct, agree, count = defaultdict(int), defaultdict(int), defaultdict(int)
    model = results[0][2]["model"]
    for sample, _, body in results:
        key = ",".join(f"{k}={v}" for k, v in body["subgroup"].items())
        count[key] += 1
        correct[key] += body["label"] == str(sample.label)
        agree[key] += body["subgroup"].get("capture") == sample.capture
    name = model.split(":")[0]
    print(f"\nmodel {model}: {len(results)} requests in {seconds:.1f} s ({len(results) / seconds:.0f} req/s)\n")
    print(f"{'subgroup':<18} {'requests':>9} {'share':>6} {'train share':>12} {'accuracy':>9} {'mean conf':>10} "
          f"{'known confusions':>17} {'capture inferred right':>23}")
    for key in sorted(count):
        served = promtext.total(samples_after, "classguard_predictions_total", model=name, subgroup=key)
        conf_sum = promtext.total(samples_after, "classguard_prediction_confidence_sum", model=name, subgroup=key)
        conf_n = promtext.total(samples_after, "classguard_prediction_confidence_count", model=name, subgroup=key)
        train_share = promtext.total(samples_after, "classguard_monitor_reference", monitor="representation",
                                     statistic="share", subgroup=key)
        confusions = promtext.total(samples_after, "classguard_known_confusion_detections_total", model=name, subgroup=key)
        print(f"{key:<18} {served:>9.0f} {served / len(results):>6.1%} {train_share:>12.1%} "
              f"{correct[key] / count[key]:>9.1%} {conf_sum / max(conf_n, 1):>10.3f} {confusions:>17.0f} "
              f"{agree[key] / count[key]:>23.1%}")
    print("\naccuracy: responses vs the test labels; every other column: the live service's /metrics.")
    raised = sorted({(dict(k)["monitor"], dict(k)["statistic"], dict(k)["subgroup"], dict(k)["pair"])
                     for (n, k), v in samples_after.items() if n == "classguard_monitor_alarm" and v})
    print("monitor alarms raised:" if raised else "monitor alarms raised: none")
    for monitor, statistic, subgroup, pair in raised:
        print(f"  {monitor} ({statistic}) {subgroup or 'whole mix'} {pair}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
