"""`make demo`: the 2015 incident and its two fixes, on live traffic.

The baseline serves real test-split digits from both capture processes; the client sends no
subgroup, the service infers `capture` from each image. Four steps, the guardrail chain
swapped live through the admin route between them, a per-subgroup table after each, read
from the service's /metrics (accuracy and wrong answers against the known test labels):

1. baseline only: phone accuracy collapses, the monitors fire;
2. suppress the labels the baseline confuses on phone: harmful answers stop, abstentions rise;
3. shadow the retrained model: agreement and flips show what it would change, per subgroup;
4. route phone to the retrained model: phone accuracy recovers, scanner unchanged;
5. a new scanner sensor arrives that no attribute describes (`capture` still says scanner):
   the region monitors name its region of the embedding, `classguard regions` ranks it first,
   and a route on that region sends it to a model trained with that sensor's images
   (made with the same synthetic transform: information no operator has, shown for comparison);
6. Bob's loop, the fix production can make: capture (stratified) keeps the regions' images,
   the labeller labels 400 of them, `classguard dataset export` writes them, the incident's
   architecture is retrained on them, the service restarts with it, shadows it, routes the
   regions to it; a curve shows what 50, 100, 200 and 400 labels buy.

Then the true labels arrive (POST /feedback) and an on-call walkthrough runs the real CLI on
the prediction log: the requests behind the alert, one trace, the replay of a fix over the
incident's traffic, and the feedback-based confusion matrix after the real fix.

7. the same fix without a person (harness/demo_automation.py, with Prometheus and Alertmanager
   installed): the phone alert reaches POST /admin/alerts, the evidence gate fails before the
   true labels arrive and passes after, and the route is applied automatically.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import harvest, promtext
from harness.prometheus import Prometheus, available
from harness.server import Server
from harness.traffic import NEW_SENSOR, holdout_samples, new_sensor_samples, run, stream, with_new_sensor

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
NEW_SENSOR_SHARE = 0.4  # of the scanner images in step 5
SENSOR_MODEL = "classguard-sensor"
SENSOR_CHAIN = Path("artifacts/demo-route-new-sensor.yaml")
ROUTED_REGIONS = 3  # step 5 routes the ranking's first three regions
REGIONS_REPORT = Path("artifacts/demo-regions.json")  # GET /admin/regions as step 5 read it
INCIDENT_PAGE = Path("artifacts/demo-incident.html")  # GET /admin/incident after step 5
HARVEST_CHAINS = {"shadow_harvested": Path("artifacts/demo-shadow-harvested.yaml"),
                  "route_harvested": Path("artifacts/demo-route-harvested.yaml")}
SUPPRESSED = {"0", "7", "4"}  # the labels suppress_phone_confusions withholds on phone


def swap(url: str, token: str, profile: str) -> str:
    import httpx

    r = httpx.post(f"{url}/admin/guardrails", json={"profile": profile},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return r.json()["hash"]


def admin_get(url: str, token: str, path: str) -> dict:
    import httpx

    r = httpx.get(f"{url}/admin/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return r.json()


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
    hidden = [(sample, body) for sample, _, body in results if sample.capture == NEW_SENSOR]
    if hidden:  # from the responses and the known labels: no attribute names this group
        n = len(hidden)
        answered = [(s, b) for s, b in hidden if b["label"] is not None]
        right_n = sum(b["label"] == str(s.label) for s, b in answered)
        served = sorted({b["model"].split(":")[0].removeprefix("classguard-") for _, b in hidden})
        lines.append(f"  {'  new sensor*':<16} {n:>8} {right_n / n:>15.1%} {len(answered) - right_n:>6} "
                     f"{sum(b['label'] != str(s.label) and b['label'] in SUPPRESSED for s, b in answered):>15} "
                     f"{(n - len(answered)) / n:>10.1%} {'/'.join(served):>10} {'-':>14} {'-':>17}")
    return lines


def alarms(samples: promtext.Samples) -> list[str]:
    """Alarming monitors, one entry per monitor and statistic listing where (regions by name)."""
    where = defaultdict(list)
    for (name, k), v in samples.items():
        if name == "classguard_monitor_alarm" and v:
            labels = dict(k)
            place = f"{labels['subgroup'] or 'whole mix'} {labels['pair']}".rstrip()
            where[(labels["monitor"], labels["statistic"])].append(place.removeprefix("region="))
    return [f"{m} ({s}) {', '.join(sorted(set(places)))}" for (m, s), places in sorted(where.items())]


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
           "CLASSGUARD_MONITORS__REGIONS": "true",
           "CLASSGUARD_MODELS__OTHERS": f'["classguard-retrained:latest", "{SENSOR_MODEL}:latest"]',
           "CLASSGUARD_GUARDRAILS__AUDIT_LOG": "artifacts/demo-guardrail-audit.jsonl",
           # Bob's loop: inputs kept per model x subgroup x region; the demo's "hour" is a minute
           "CLASSGUARD_CAPTURE__POLICY": "stratified", "CLASSGUARD_CAPTURE__PER_STRATUM": "300",
           "CLASSGUARD_CAPTURE__STRATUM_SECONDS": "60"}
    started_at: dict[str, float] = {}
    answered = []
    print(f"starting bentoml serve (log: {LOG}) ...", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Server(log_path=LOG, env=env))
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
            started_at[profile] = time.time()
            results = play(server.url, samples, f"{title}   [profile {profile}, config {config_hash}")
            if results is None:
                return 1
            answered += results
        results = new_sensor_step(server.url, token, samples, started_at)
        if results is None:
            return 1
        answered += results
        server = bobs_loop(server, env, token, samples, started_at)
        if server is None:
            return 1
        stack.callback(server.stop)
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
        print(f"{recorded} true labels recorded through POST /feedback; the regions of step 5, before the route, "
              "with the accuracy the labels show:")
        print(f"$ classguard regions --since <step 5> --until <route> --top {ROUTED_REGIONS} --exemplars 0")
        print(cli("regions", "--url", server.url, "--since", str(started_at["new_sensor"]), "--until",
                  str(started_at["route_new_sensor"]), "--top", str(ROUTED_REGIONS), "--exemplars", "0",
                  token=token) + "\n")
    walkthrough(first_alert, started_at)
    from harness import demo_automation

    print()
    return demo_automation.main()  # 7. the same fix, without a person


def play(url: str, samples, title: str):
    """Send one step's traffic and print its table; the results, or None when requests failed."""
    before = promtext.scrape(url)
    results, seconds = run(url, samples, concurrency=16, send_context=False)
    time.sleep(2.0)  # shadows finish, monitors publish
    after = promtext.scrape(url)
    failed = [r for r in results if r[1] != 200]
    if failed:
        print(f"{len(failed)} requests failed, first: {failed[0][1]} {failed[0][2]}", file=sys.stderr)
        return None
    print(f"{title}, {len(results) / seconds:.0f} req/s]")
    print("\n".join(step_table(results, before, after)))
    raised = alarms(after)
    print(f"  monitor alarms: {'; '.join(raised) if raised else 'none'}\n")
    return results


def new_sensor_step(url: str, token: str, samples, started_at: dict[str, float]):
    """Step 5: a share of the scanner images now come from a new sensor. The chain of step 4 stays;
    the region the ranking puts first is routed to the model trained with that sensor's images."""
    shifted = with_new_sensor(samples, new_sensor_samples(), NEW_SENSOR_SHARE, seed=8)
    n_new = sum(s.capture == NEW_SENSOR for s in shifted)
    started_at["new_sensor"] = time.time()
    results = play(url, shifted, f"5. a new scanner sensor arrives ({n_new} of {len(shifted)} images; capture still "
                                 f"says scanner)   [profile route_phone_to_retrained")
    if results is None:
        return None
    print(f"$ classguard regions --since <step 5> --top {ROUTED_REGIONS}")
    print(cli("regions", "--url", url, "--since", str(started_at["new_sensor"]), "--top", str(ROUTED_REGIONS),
              token=token) + "\n")
    report = admin_get(url, token, f"regions?since={started_at['new_sensor']}&top={ROUTED_REGIONS}")
    REGIONS_REPORT.write_text(json.dumps(report, indent=1) + "\n")
    ranked = report["regions"]
    names = [r["region"] for r in ranked]
    hidden_ids = {body["request_id"] for s, _, body in results if s.capture == NEW_SENSOR}
    placed = {body["request_id"]: region for body, region in zip((b for _, _, b in results), regions_of(results))}
    inside = {rid for rid, region in placed.items() if region in names}
    print(f"the top {len(names)} regions ({', '.join(names)}) hold {len(inside & hidden_ids)} of the "
          f"{len(hidden_ids)} new-sensor images (recall {len(inside & hidden_ids) / max(len(hidden_ids), 1):.0%}) "
          f"and {len(inside - hidden_ids)} others (precision {len(inside & hidden_ids) / max(len(inside), 1):.0%}); "
          "the demo knows which images are new, the service does not\n")
    SENSOR_CHAIN.write_text(
        "# step 4's route, and the regions the ranking put first to the model trained with the new sensor\n"
        "- {type: route, target: classguard-retrained, subgroups: [capture=phone]}\n"
        f"- {{type: route, target: {SENSOR_MODEL}, regions: [{', '.join(names)}]}}\n")
    print(f"$ classguard guardrails apply route_new_sensor --file {SENSOR_CHAIN}")
    print(cli("guardrails", "apply", "route_new_sensor", "--file", str(SENSOR_CHAIN), "--url", url, token=token) + "\n")
    time.sleep(1.0)
    started_at["route_new_sensor"] = time.time()
    again = play(url, shifted, f"5. route regions {', '.join(names)} to {SENSOR_MODEL}   [profile route_new_sensor")
    return None if again is None else results + again


def bobs_loop(server: Server, env: dict[str, str], token: str, samples, started_at: dict[str, float]):
    """Step 6: harvest the named regions' images from production, label, export, retrain, restart
    with the retrained model, shadow it, route the regions to it. The running server, or None."""
    import httpx

    shifted = with_new_sensor(samples, new_sensor_samples(), NEW_SENSOR_SHARE, seed=8)
    names = [r["region"] for r in json.loads(REGIONS_REPORT.read_text())["regions"]]
    page = httpx.get(f"{server.url}/admin/incident", params={"since": started_at["allow_all"]},
                     headers={"Authorization": f"Bearer {token}"}, timeout=60)
    INCIDENT_PAGE.write_bytes(page.content)
    print(f"$ classguard incident --since <step 1> -o {INCIDENT_PAGE}   (alarms, regions, captured inputs; "
          "open it in a browser)\n")
    # the transform-trained model is information no operator has: production runs on step 4's chain
    swap(server.url, token, "route_phone_to_retrained")
    print(f"6. Bob's loop: back on step 4's chain (no model knows the new sensor), production keeps flowing; capture "
          f"(stratified, 300 a stratum a minute) keeps the inputs of {', '.join(names)}\n")
    harvest.harvest(server.url, token, names, PHONE_SHARE, NEW_SENSOR_SHARE, lambda *a: cli(*a, token=token))
    harvest.retrain()
    port = server.port
    server.stop()
    print(f"restarting the service with {harvest.HARVESTED_MODEL} loaded ...\n", file=sys.stderr)
    env = {**env, "CLASSGUARD_MODELS__OTHERS": f'["classguard-retrained:latest", "{SENSOR_MODEL}:latest", '
                                               f'"{harvest.HARVESTED_MODEL}:latest"]'}
    server = Server(log_path=LOG.with_name("demo-serve-2.log"), env=env, port=port).__enter__()
    HARVEST_CHAINS["shadow_harvested"].write_text(
        "# step 4's route, and the harvested model watched in the shadow of every answer\n"
        "- {type: route, target: classguard-retrained, subgroups: [capture=phone]}\n"
        f"- {{type: shadow, model: {harvest.HARVESTED_MODEL}, share: 1.0}}\n")
    HARVEST_CHAINS["route_harvested"].write_text(
        "# step 4's route, and the named regions to the model retrained on their harvested images\n"
        "- {type: route, target: classguard-retrained, subgroups: [capture=phone]}\n"
        f"- {{type: route, target: {harvest.HARVESTED_MODEL}, regions: [{', '.join(names)}]}}\n")
    for profile, title in (("shadow_harvested", f"6. shadow {harvest.HARVESTED_MODEL}"),
                           ("route_harvested", f"6. route regions {', '.join(names)} to {harvest.HARVESTED_MODEL}")):
        chain = cli("guardrails", "apply", profile, "--file", str(HARVEST_CHAINS[profile]), "--url", server.url,
                    token=token)
        print(f"$ classguard guardrails apply {profile} --file {HARVEST_CHAINS[profile]}\n{chain}\n")
        time.sleep(1.0)
        started_at[profile] = time.time()
        if play(server.url, shifted, f"{title}   [profile {profile}") is None:
            server.stop()
            return None
    harvest.print_budget_curve()
    return server


def regions_of(results) -> list[str | None]:
    """The region the service logged for each answer (the log is written within a second)."""
    from store.prediction_log import connect, get

    conn = connect(DB)
    try:
        return [(get(conn, body["request_id"]) or {}).get("region") for _, _, body in results]
    finally:
        conn.close()


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


def cli(*args: str, token: str | None = None) -> str:
    import os
    import subprocess

    env = {**os.environ, "CLASSGUARD_LOG__PATH": str(DB), **({"CLASSGUARD_ADMIN_TOKEN": token} if token else {})}
    done = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, env=env)
    return (done.stdout + done.stderr).rstrip()


def walkthrough(first_alert, started_at: dict[str, float]) -> None:
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
    print("$ classguard replay suppress_phone_confusions   (over the incident's traffic)")
    print(cli("replay", "suppress_phone_confusions", "--since", incident, "--until", incident_end) + "\n")
    print("$ classguard log confusion --subgroup capture=phone   (after routing phone to the retrained model)")
    print(cli("log", "confusion", "--subgroup", "capture=phone", "--since", str(started_at["route_phone_to_retrained"]),
              "--until", str(started_at["new_sensor"])))
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
