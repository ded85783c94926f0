"""`make demo`: the 2015 incident and its two fixes, on live traffic.

The baseline serves real test-split digits from both capture processes; the client sends no
subgroup, the service infers `capture` from each image. Four steps, the guardrail chain
swapped live through the admin route between them, a per-subgroup table after each, read
from the service's /metrics (accuracy and wrong answers against the known test labels):

1. baseline only: phone accuracy collapses, the monitors fire;
2. suppress the labels the baseline confuses on phone: harmful answers stop, abstentions rise;
3. shadow the retrained model: agreement and flips show what it would change, per subgroup;
4. route phone to the retrained model: phone accuracy recovers, scanner unchanged.

Then the true labels arrive (POST /feedback) and an on-call walkthrough runs the real CLI on
the prediction log: the requests behind the alert, one trace, the replay of a fix over the
incident's traffic, and the feedback-based confusion matrix after the real fix.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import promtext
from harness.prometheus import Prometheus, available
from harness.server import Server
from harness.traffic import run, stream, holdout_samples

STREAM_SIZE = 1_000
PHONE_SHARE = 0.3
LOG = Path("artifacts/demo-serve.log")
DB = Path("artifacts/demo-predictions.sqlite")
STEPS = [
    ("allow_all", "1. baseline only"),
    ("suppress_phone_confusions", "2. suppress the confused labels on phone (the 2015 fix)"),
    ("shadow_retrained", "3. shadow the retrained model"),
    ("route_phone_to_retrained", "4. route phone to the retrained model (the real fix)"),
]
SUBGROUPS = ("capture=phone", "capture=scanner")
SUPPRESSED = {"0", "7", "4"}  # the labels suppress_phone_confusions withholds on phone


def swap(url: str, token: str, profile: str) -> str:
    import httpx

    r = httpx.post(f"{url}/admin/guardrails", json={"profile": profile},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return r.json()["hash"]


def delta(after: promtext.Samples, before: promtext.Samples, name: str, **match: str) -> float:
    return promtext.total(after, name, **match) - promtext.total(before, name, **match)


def step_table(results, before, after) -> list[str]:
    right, wrong, harmful = defaultdict(int), defaultdict(int), defaultdict(int)
    models = defaultdict(set)
    for sample, _, body in results:
        key = ",".join(f"{k}={v}" for k, v in body["subgroup"].items())
        models[key].add(body["model"].split(":")[0].removeprefix("classguard-"))
        if body["label"] is not None:
            right[key] += body["label"] == str(sample.label)
            wrong[key] += body["label"] != str(sample.label)
            harmful[key] += body["label"] != str(sample.label) and body["label"] in SUPPRESSED
    lines = [f"  {'subgroup':<16} {'requests':>8} {'answered right':>15} {'wrong':>6} {'wrong as 0/7/4':>15} {'abstained':>10} "
             f"{'served by':>10} {'shadow agrees':>14} {'known confusions':>17}"]
    for key in SUBGROUPS:
        n = delta(after, before, "classguard_predictions_total", subgroup=key)
        abstained = delta(after, before, "classguard_predictions_total", subgroup=key, predicted_class="abstained")
        compared = delta(after, before, "classguard_shadow_comparisons_total", subgroup=key)
        agree = delta(after, before, "classguard_shadow_comparisons_total", subgroup=key, outcome="agree")
        confusions = delta(after, before, "classguard_known_confusion_detections_total", subgroup=key)
        shadow = f"{agree / compared:.1%}" if compared else "-"
        lines.append(f"  {key:<16} {n:>8.0f} {right[key] / max(n, 1):>15.1%} {wrong[key]:>6} {harmful[key]:>15} "
                     f"{abstained / max(n, 1):>10.1%} "
                     f"{'/'.join(sorted(models[key])):>10} {shadow:>14} {confusions:>17.0f}")
    return lines


def alarms(samples: promtext.Samples) -> list[str]:
    raised = sorted({(dict(k)["monitor"], dict(k)["statistic"], dict(k)["subgroup"] or "whole mix", dict(k)["pair"])
                     for (name, k), v in samples.items() if name == "classguard_monitor_alarm" and v})
    return [f"{m} ({s}) {g} {p}".rstrip() for m, s, g, p in raised]


class AlertWatch:
    """Polls a real Prometheus in the background; remembers when each alert first became
    pending and firing, counted from the demo's start."""

    def __init__(self, prom: Prometheus, started: float) -> None:
        import threading

        self.prom, self.started, self.seen = prom, started, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for a in self.prom.alerts():
                    key = (a["labels"]["alertname"], a["labels"].get("subgroup", ""), a["state"])
                    self.seen.setdefault(key, time.monotonic() - self.started)
            except Exception:
                pass
            self._stop.wait(0.5)

    def report(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return [f"  {seconds:6.1f} s  {name} {subgroup} {state}".rstrip()
                for (name, subgroup, state), seconds in sorted(self.seen.items(), key=lambda kv: kv[1])]


def main() -> int:
    LOG.parent.mkdir(exist_ok=True)
    token = secrets.token_urlsafe(16)
    samples = stream(holdout_samples(), STREAM_SIZE, PHONE_SHARE, seed=7)
    for stale in DB.parent.glob(DB.name + "*"):
        stale.unlink()  # the walkthrough is about this run's traffic
    env = {"CLASSGUARD_ADMIN_TOKEN": token, "CLASSGUARD_FEEDBACK_TOKEN": token,
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1", "CLASSGUARD_LOG__PATH": str(DB),
           "CLASSGUARD_GUARDRAILS__AUDIT_LOG": "artifacts/demo-guardrail-audit.jsonl"}
    started_at: dict[str, float] = {}
    answered = []
    print(f"starting bentoml serve (log: {LOG}) ...", file=sys.stderr)
    with Server(log_path=LOG, env=env) as server, contextlib.ExitStack() as stack:
        print(f"each step: {len(samples)} test-split images ({PHONE_SHARE:.0%} phone, no subgroup sent) "
              f"to {server.url}/classify\n")
        watch = None
        if available():
            prom = stack.enter_context(Prometheus(server.url))
            prom.wait_for_samples()
            watch = AlertWatch(prom, time.monotonic())
            print(f"Prometheus {prom.url} scrapes the service every second with classguard's alert rules\n")
        for profile, title in STEPS:
            config_hash = swap(server.url, token, profile)
            time.sleep(1.0)  # every worker picks up the chain within guardrails.sync_seconds
            before = promtext.scrape(server.url)
            started_at[profile] = time.time()
            results, seconds = run(server.url, samples, concurrency=16, send_context=False)
            answered += results
            time.sleep(2.0)  # shadows finish, monitors publish
            after = promtext.scrape(server.url)
            failed = [r for r in results if r[1] != 200]
            if failed:
                print(f"{len(failed)} requests failed, first: {failed[0][1]} {failed[0][2]}", file=sys.stderr)
                return 1
            print(f"{title}   [profile {profile}, config {config_hash}, {len(results) / seconds:.0f} req/s]")
            print("\n".join(step_table(results, before, after)))
            raised = alarms(after)
            print(f"  monitor alarms: {'; '.join(raised) if raised else 'none'}\n")
        first_alert = None
        if watch is not None:
            first_alert = next(iter(sorted(watch.seen.items(), key=lambda kv: kv[1])), None)
            lines = watch.report()
            print("Prometheus alerts, seconds after the first step began (rules wait `for:` before firing):")
            print("\n".join(lines) if lines else "  none")
            print()
        else:
            print("(Prometheus is not installed: apt-get install prometheus, and the demo shows its alerts too)\n")
        recorded = send_feedback(server.url, token, answered)
        time.sleep(1.0)
    print("answered right / wrong: responses vs the test labels; every other column: the live /metrics.\n")
    walkthrough(first_alert, started_at, recorded)
    return 0


def send_feedback(url: str, token: str, answered) -> int:
    """The true labels arrive: POST /feedback for every answered request, 1,000 at a time."""
    import httpx

    items = [{"request_id": body["request_id"], "label": str(sample.label)} for sample, _, body in answered]
    recorded = 0
    for start in range(0, len(items), 1000):
        r = httpx.post(f"{url}/feedback", json={"items": items[start:start + 1000]},
                       headers={"Authorization": f"Bearer {token}"}, timeout=60)
        recorded += r.json()["recorded"]
    return recorded


def cli(*args: str) -> str:
    import os
    import subprocess

    env = {**os.environ, "CLASSGUARD_LOG__PATH": str(DB)}
    done = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, env=env)
    return (done.stdout + done.stderr).rstrip()


def walkthrough(first_alert, started_at: dict[str, float], recorded: int) -> None:
    """On call, from the real CLI, on this run's prediction log."""
    print("=== on-call walkthrough (the real CLI on the prediction log) ===\n")
    if first_alert:
        (name, subgroup, state), seconds = first_alert
        print(f"the page: {name} for {subgroup} ({state} {seconds:.1f} s into the incident)\n")
    incident = str(started_at["allow_all"])
    incident_end = str(started_at["suppress_phone_confusions"])
    print("$ classguard log list --subgroup capture=phone --flag 'known_confusion:6->0' --limit 5")
    listing = cli("log", "list", "--subgroup", "capture=phone", "--flag", "known_confusion:6->0",
                  "--since", incident, "--until", incident_end, "--limit", "5")
    print(listing + "\n")
    request_id = listing.split()[1] if listing else None
    if request_id:
        print(f"$ classguard log show {request_id}")
        print(cli("log", "show", request_id) + "\n")
    print(f"{recorded} true labels recorded through POST /feedback.\n")
    print("$ classguard replay suppress_phone_confusions   (over the incident's traffic)")
    print(cli("replay", "suppress_phone_confusions", "--since", incident, "--until", incident_end) + "\n")
    print("$ classguard log confusion --subgroup capture=phone   (after routing phone to the retrained model)")
    print(cli("log", "confusion", "--subgroup", "capture=phone", "--since", str(started_at["route_phone_to_retrained"])))
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
