"""`make demo-fleet`: the incident of `make demo`, told fleet-wide.

Three replicas (separate `bentoml serve` processes, each with its own BENTOML_HOME, metrics
folder and monitor state) share nothing but a throwaway PostgreSQL (fleet mode:
CLASSGUARD_FLEET__DATABASE_URL). A round-robin client sends the same four steps as
`make demo`, each guardrail swap posted through one replica (a different one each step) and
watched until every replica serves it. The per-subgroup table sums the three replicas'
/metrics; each replica publishes the whole fleet's monitor windows. A real Prometheus scrapes
the three replicas as three targets with classguard's rules: one alert for the fleet, not one
per replica. The true labels are posted through replicas that did not serve the answers; the
on-call walkthrough runs the real CLI against PostgreSQL (`--db URL`).

Then Bob's loop, fleet-wide: a new scanner sensor arrives, the regions name it; production
traffic flows round-robin with capture on; the labels go through one replica, the export
through another (`--url`); the retrained model is rolled out (the replicas restart with it),
shadowed and routed to, through a third.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from harness import harvest, promtext
from harness.demo import NEW_SENSOR_SHARE, PHONE_SHARE, ROUTED_REGIONS, STEPS, STREAM_SIZE, alarms, step_table, swap
from harness.prometheus import Prometheus, available

REPLICAS = 3
LOGS = Path("artifacts/demo-fleet")
WINDOW = {"monitor": "representation", "subgroup": ""}  # the whole mix's window, all subgroups
FIRE_BY_S = 100.0  # wait (at most this long after the first step began) for the first alert to fire


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def name(i: int) -> str:
    return f"replica-{i}"


def scrape_all(urls: list[str]) -> list[promtext.Samples]:
    return [promtext.scrape(url) for url in urls]


def summed(each: list[promtext.Samples]) -> promtext.Samples:
    """The fleet's samples: every replica's value of a series added up (right for counters)."""
    total: dict = defaultdict(float)
    for samples in each:
        for key, value in samples.items():
            total[key] += value
    return dict(total)


def served_hash(url: str) -> set[str]:
    return promtext.label_values(promtext.scrape(url), "classguard_guardrail_config_info", "hash")


def wait_serving(urls: list[str], config_hash: str, started: float, timeout: float = 10.0) -> dict[int, float]:
    """Seconds from the swap's POST until each replica's /metrics shows `config_hash` as its only
    chain: each replica polled on its own thread, so one slow scrape delays no other's time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(url: str) -> float | None:
        while time.monotonic() < started + timeout:
            if served_hash(url) == {config_hash}:
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    with ThreadPoolExecutor(len(urls)) as pool:
        seconds = list(pool.map(one, urls))
    return {i: s for i, s in enumerate(seconds) if s is not None}


def window_counts(urls: list[str], expected: float, timeout: float = 10.0) -> list[float]:
    """Each replica's published window count, once all equal `expected` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [promtext.total(promtext.scrape(url), "classguard_monitor_window_samples", **WINDOW) for url in urls]
        if all(c == expected for c in counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.25)


def post_feedback(urls: list[str], token: str, results) -> Counter:
    """The true labels of one step, posted at once: the labels of the answers replica r served
    go through replica r+1, so no label reaches the replica that wrote its answer."""
    import httpx

    by_replica: dict[int, list[dict]] = defaultdict(list)
    for i, (sample, _, body) in enumerate(results):  # traffic.run sent sample i to url i mod n
        by_replica[i % len(urls)].append({"request_id": body["request_id"], "label": str(sample.label)})
    outcomes: Counter = Counter()
    for served_by, items in sorted(by_replica.items()):
        through = urls[(served_by + 1) % len(urls)]
        for start in range(0, len(items), 1000):
            r = httpx.post(f"{through}/feedback", json={"items": items[start:start + 1000]},
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
            if r.status_code not in (200, 202):
                raise RuntimeError(f"POST {through}/feedback answered {r.status_code}: {r.text[:300]}")
            outcomes.update(item["result"] for item in r.json()["results"])
    return outcomes


def rows(database_url: str, sql: str, *args):
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, args).fetchall()


class FleetAlertWatch:
    """Polls a real Prometheus in the background; remembers, for each alert (its whole label set)
    and state, when it was first seen, counted from the first step's start."""

    def __init__(self, prom: Prometheus, started: float) -> None:
        self.prom, self.started = prom, started
        self.seen: dict[tuple[frozenset, str], float] = {}
        self.most_at_once: dict[str, int] = defaultdict(int)  # alert objects of one name at one time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                alerts = self.prom.alerts()
                now = time.monotonic() - self.started
                per_name = Counter(a["labels"]["alertname"] for a in alerts)
                for alertname, n in per_name.items():
                    self.most_at_once[alertname] = max(self.most_at_once[alertname], n)
                for a in alerts:
                    self.seen.setdefault((frozenset(a["labels"].items()), a["state"]), now)
            self._stop.wait(0.5)

    def firing(self) -> list[tuple[frozenset, float]]:
        return sorted(((labels, t) for (labels, state), t in list(self.seen.items()) if state == "firing"),
                      key=lambda kv: kv[1])

    def first(self) -> tuple[frozenset, str, float] | None:
        """The first alert to fire, else the first to become pending."""
        firing = self.firing()
        if firing:
            return firing[0][0], "firing", firing[0][1]
        pending = sorted(self.seen.items(), key=lambda kv: kv[1])
        return (pending[0][0][0], pending[0][0][1], pending[0][1]) if pending else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> list[str]:
        alerts: dict[frozenset, dict[str, float]] = defaultdict(dict)
        for (labels, state), seconds in self.seen.items():
            alerts[labels][state] = seconds
        lines = []
        for labels, states in sorted(alerts.items(), key=lambda kv: min(kv[1].values())):
            shown = dict(labels)
            alertname = shown.pop("alertname")
            when = ", ".join(f"{state} at {seconds:.1f} s" for state, seconds in
                             sorted(states.items(), key=lambda kv: kv[1]))
            label_text = ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items()))
            lines.append(f"  {alertname} {{{label_text}}}\n      {when}")
        return lines


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)
    return (done.stdout + done.stderr).rstrip()


def main() -> int:
    from harness.postgres import Postgres, server_bindir

    if server_bindir() is None:
        print("make demo-fleet needs PostgreSQL's server binaries (initdb, pg_ctl), found neither under "
              "/usr/lib/postgresql/*/bin nor on PATH: apt-get install postgresql", file=sys.stderr)
        return 1
    from harness.fleet import Fleet
    from harness.traffic import holdout_samples, run, stream

    begun = time.monotonic()
    LOGS.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    samples = stream(holdout_samples(), STREAM_SIZE, PHONE_SHARE, seed=7)
    env = {"CLASSGUARD_ADMIN_TOKEN": token, "CLASSGUARD_FEEDBACK_TOKEN": token,
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1", "CLASSGUARD_MONITORS__REGIONS": "true",
           # Bob's loop: inputs kept per model x subgroup x region; the demo's "hour" is a minute
           "CLASSGUARD_CAPTURE__POLICY": "stratified", "CLASSGUARD_CAPTURE__PER_STRATUM": "300",
           "CLASSGUARD_CAPTURE__STRATUM_SECONDS": "60"}
    progress("starting PostgreSQL ...")
    with Postgres.start() as pg:
        print(f"PostgreSQL (throwaway, the only thing the replicas share): {pg.url}")
        progress(f"starting {REPLICAS} bentoml serve replicas side by side (logs: {LOGS}/replica-N.log) ...")
        with Fleet(REPLICAS, pg.url, env=env, log_dir=LOGS) as fleet, contextlib.ExitStack() as stack:
            urls = fleet.urls
            for i, url in enumerate(urls):
                print(f"  {name(i)}  {url}   (own BENTOML_HOME and metrics; log {LOGS}/{name(i)}.log)")
            prom = None
            if available():
                progress("starting Prometheus ...")
                prom = stack.enter_context(Prometheus(urls))
                prom.wait_for_samples()
                up = {r["metric"]["instance"]: r["value"][1] for r in prom.query('up{job="classguard"}')}
                print(f"Prometheus {prom.url} scrapes all {len(up)} replicas every second, each its own target "
                      f"(job classguard: {', '.join(f'{name(i)} up={up.get(t)}' for i, t in enumerate(prom.targets))})"
                      f" with classguard's rules")
            else:
                print("Prometheus is not installed (apt-get install prometheus): this run shows no alerts")
            print(f"\neach step: {len(samples)} test-split images ({PHONE_SHARE:.0%} phone, no subgroup sent), "
                  f"round-robin over the {REPLICAS} replicas\n")
            outcome = steps(fleet, pg.url, token, samples, prom, run)
            if outcome is None:
                return 1
            started_at, answered, feedback, watch = outcome
            joined = finish_feedback(urls, pg.url, answered, feedback)
            first = None
            if prom is not None:
                first = alerts_section(prom, watch, urls)
            else:
                print("(Prometheus is not installed: apt-get install prometheus, and the demo shows its alerts "
                      "too)\n")
            print("table: answered right / wrong from the responses vs the test labels; every other column: the "
                  "three replicas' /metrics summed.\n")
            walkthrough(pg.url, urls, token, first, started_at, answered, joined)
            names = harvest_step(urls, token, samples, run)
        if names is None:
            return 1
        if not roll_out_and_route(pg.url, env, token, samples, names, run):
            return 1
    progress(f"done in {time.monotonic() - begun:.0f} s")
    return 0


def steps(fleet, database_url: str, token: str, samples, prom, run):
    urls = fleet.urls
    started_at: dict[str, float] = {}
    answered: list[tuple[int, tuple]] = []  # (replica that served it, result)
    feedback: Counter = Counter()
    watch = None
    sent = 0
    for n, (profile, title) in enumerate(STEPS):
        through = n % len(urls)
        progress(f"step {title}: swap through {name(through)}, traffic, feedback ...")
        serving_before = set().union(*(served_hash(url) for url in urls))
        posted = time.monotonic()
        config_hash = swap(urls[through], token, profile)
        serving = wait_serving(urls, config_hash, posted)
        if watch is None and prom is not None:
            watch = FleetAlertWatch(prom, time.monotonic())
        before = summed(scrape_all(urls))
        started_at[profile] = time.time()
        results, seconds = run(urls, samples, concurrency=16, send_context=False)
        failed = [r for r in results if r[1] != 200]
        if failed:
            print(f"{len(failed)} requests failed, first: {failed[0][1]} {failed[0][2]}", file=sys.stderr)
            return None
        # the labels arrive at once, each through a replica that did not serve its answer: those
        # whose answer the serving replica has not written yet (it writes every 0.5 s) are held
        outcomes = post_feedback(urls, token, results)
        feedback += outcomes
        answered += [(i % len(urls), r) for i, r in enumerate(results)]
        sent += len(results)
        time.sleep(2.0)  # shadows finish, monitors publish
        each = scrape_all(urls)
        after = summed(each)
        print(f"{title}   [profile {profile}, config {config_hash}, {len(results) / seconds:.0f} req/s]")
        waited = ", ".join(f"{name(i)} {serving[i]:.2f} s" if i in serving else f"{name(i)} NOT within 10 s"
                           for i in range(len(urls)))
        same = " (the chain they started with)" if serving_before == {config_hash} else ""
        print(f"  swap posted through {name(through)}; every replica serving {config_hash}{same} within: {waited}"
              f" (POST to the first /metrics scrape that shows it)")
        per_replica = Counter(i % len(urls) for i in range(len(results)))
        print(f"  traffic: {len(results)} requests round-robin, "
              f"{' / '.join(f'{per_replica[i]} to {name(i)}' for i in range(len(urls)))}")
        print("\n".join(step_table(results, before, after)))
        counts = window_counts(urls, sent)
        same = "each" if all(c == sent for c in counts) else "NOT each"
        print(f"  classguard_monitor_window_samples{{monitor=\"representation\",subgroup=\"\"}}: "
              f"{', '.join(f'{name(i)} {c:.0f}' for i, c in enumerate(counts))} - {same} the whole fleet's "
              f"{sent} events so far, though each replica served a third")
        raised = [alarms(samples_of) for samples_of in each]
        if all(r == raised[0] for r in raised):
            print(f"  monitor alarms, the same on every replica: {'; '.join(raised[0]) if raised[0] else 'none'}")
        else:
            for i, r in enumerate(raised):
                print(f"  monitor alarms on {name(i)}: {'; '.join(r) if r else 'none'}")
        print(f"  feedback: {len(results)} true labels posted, each through the replica after the one that served "
              f"it: {outcomes['recorded']} recorded, {outcomes['held']} held (answer not written yet)"
              + "".join(f", {n} {k}" for k, n in outcomes.items() if k not in ("recorded", "held")) + "\n")
    return started_at, answered, feedback, watch


def finish_feedback(urls: list[str], database_url: str, answered, feedback: Counter) -> int:
    """Wait until every held label is joined; the count comes from PostgreSQL."""
    progress("waiting for the held labels to be joined ...")
    deadline = time.monotonic() + 20
    while True:
        joined = rows(database_url, "SELECT COUNT(*) FROM feedback")[0][0]
        held = rows(database_url, "SELECT COUNT(*) FROM held_feedback")[0][0]
        if (joined >= len(answered) and not held) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    fleet = summed(scrape_all(urls))
    print(f"feedback: {len(answered)} labels posted, {feedback['recorded']} recorded at once, {feedback['held']} held; "
          f"held and joined later by the fleet: {promtext.total(fleet, 'classguard_feedback_held_total', outcome='joined'):.0f}"
          f" (classguard_feedback_held_total, summed); still held: {held}")
    print(f"  PostgreSQL: SELECT COUNT(*) FROM feedback -> {joined} labels joined with their answers "
          f"(of {len(answered)}); counted once each over the replicas' classguard_feedback_total: "
          f"{promtext.total(fleet, 'classguard_feedback_total'):.0f}\n")
    return joined


def alerts_section(prom: Prometheus, watch: FleetAlertWatch, urls: list[str]):
    remaining = FIRE_BY_S - (time.monotonic() - watch.started)
    if not watch.firing() and remaining > 0 and watch.seen:
        progress(f"waiting up to {remaining:.0f} s for the first alert to outlast its `for:` and fire ...")
        deadline = time.monotonic() + remaining
        while not watch.firing() and time.monotonic() < deadline:
            time.sleep(0.5)
    time.sleep(1.0)
    watch.stop()
    print(f"Prometheus alerts over the {len(urls)} replicas, seconds after the first step began "
          f"(rules wait `for:` before firing):")
    lines = watch.report()
    print("\n".join(lines) if lines else "  none")
    instances = sum(1 for (labels, _) in watch.seen if "instance" in dict(labels))
    most = max(watch.most_at_once.values(), default=0)
    print(f"  -> {len({dict(labels)['alertname'] for labels, _ in watch.seen})} alert names, at most {most} alert(s) "
          f"of one name at once, {instances} with an instance label: one alert for the fleet, not one per replica")
    alarming = prom.query('count by (subgroup) (classguard_monitor_alarm{monitor="representation", '
                          'statistic="cusum"} == 1)')
    for r in alarming:
        print(f"  count by (subgroup) (classguard_monitor_alarm{{monitor=\"representation\",statistic=\"cusum\"}} "
              f"== 1) -> {r['metric'].get('subgroup')}: {r['value'][1]} replicas alarm, one alert above")
    replicas = prom.query("count(classguard_guardrail_config_info)")
    hashes = prom.query("count(count by (hash) (classguard_guardrail_config_info))")
    most_hashes = prom.query("max_over_time(count(count by (hash) (classguard_guardrail_config_info))[5m:1s])")
    drift = [a for a in prom.alerts() if a["labels"]["alertname"] == "ClassguardGuardrailConfigDrift"]
    ever_drift = sorted(state for (labels, state) in watch.seen
                        if dict(labels)["alertname"] == "ClassguardGuardrailConfigDrift")
    value = lambda result: result[0]["value"][1] if result else "no data"  # noqa: E731
    print(f"  count(classguard_guardrail_config_info) -> {value(replicas)} replicas export a chain; "
          f"count(count by (hash) (...)) -> {value(hashes)} hash now, at most {value(most_hashes)} at once "
          f"over the run (sampled each second)")
    if ever_drift:
        seen = f"{' then '.join(ever_drift)} during the run: a scrape in the middle of a swap saw two hashes"
        seen += ", but it never outlasted `for: 1m`" if "firing" not in ever_drift else ""
    else:
        seen = "never pending or firing during the run"
    print(f"  ClassguardGuardrailConfigDrift: {drift[0]['state'] if drift else 'quiet'} now; {seen}\n")
    return watch.first()


def walkthrough(database_url: str, urls: list[str], token: str, first, started_at: dict[str, float],
                answered, joined: int) -> None:
    """On call, from the real CLI, on the fleet's PostgreSQL."""
    import httpx

    progress("on-call walkthrough: running the CLI ...")
    print("=== on-call walkthrough (the real CLI on the fleet's PostgreSQL) ===\n")
    print(f"DB={database_url}\n")
    if first:
        labels, state, seconds = first
        labels = dict(labels)
        what = " ".join(filter(None, (labels.get("subgroup"), labels.get("pair"), labels.get("model"))))
        print(f"the page: {labels['alertname']} for {what or 'the fleet'} ({state} {seconds:.1f} s into the "
              f"incident), one alert for the whole fleet\n")
    incident, incident_end = str(started_at["allow_all"]), str(started_at["suppress_phone_confusions"])
    print("$ classguard log list --subgroup capture=phone --flag 'known_confusion:6->0' --limit 5 --db $DB")
    listing = cli("log", "list", "--subgroup", "capture=phone", "--flag", "known_confusion:6->0", "--since", incident,
                  "--until", incident_end, "--limit", "5", "--db", database_url)
    print(listing + "\n")
    served_by = {body["request_id"]: replica for replica, (_, _, body) in answered}
    listed = [line.split()[1] for line in listing.splitlines() if len(line.split()) > 1]
    pick = next((rid for rid in listed if served_by.get(rid) == 0), None)
    if pick:
        print(f"the client saw {name(0)} answer {pick}, listed above:")
    else:  # none of the five came from replica 0: another incident answer it served
        pick = next(body["request_id"] for replica, (_, _, body) in answered
                    if replica == 0 and "known_confusion:6->0" in body["flags"])
        print(f"one that {name(0)} answered:")
    print(f"$ classguard log show {pick} --db $DB")
    print(cli("log", "show", pick, "--db", database_url) + "\n")
    elsewhere = httpx.get(f"{urls[1]}/admin/predictions/{pick}", headers={"Authorization": f"Bearer {token}"},
                          timeout=10)
    found = elsewhere.json().get("replica") if elsewhere.status_code == 200 else elsewhere.text[:200]
    print(f"$ curl -H 'Authorization: Bearer ...' {urls[1]}/admin/predictions/{pick}   (through {name(1)})")
    print(f"  {elsewhere.status_code}, \"replica\": {json.dumps(found)}\n")
    print("$ classguard guardrails history --limit 8 --db $DB")
    print(cli("guardrails", "history", "--limit", "8", "--db", database_url))
    history = rows(database_url, "SELECT id, replica, previous_id, profile FROM guardrail_chain ORDER BY id")
    linked = all(later[2] == earlier[0] for earlier, later in zip(history, history[1:]))
    print(f"  -> {len(history)} rows in guardrail_chain, written by "
          f"{', '.join(sorted({r[1] for r in history}))}; "
          f"{'each names the row it replaced (previous_id): one history for the fleet' if linked else 'NOT linked'}\n")
    print(f"{joined} true labels joined with their answers (feedback table).\n")
    print("$ classguard replay suppress_phone_confusions --since <step 1> --until <step 2> --db $DB   "
          "(the incident's traffic, all replicas)")
    print(cli("replay", "suppress_phone_confusions", "--since", incident, "--until", incident_end,
              "--db", database_url) + "\n")
    print("$ classguard log confusion --subgroup capture=phone --since <step 4> --db $DB   "
          "(after routing phone to the retrained model)")
    print(cli("log", "confusion", "--subgroup", "capture=phone", "--since", str(started_at["route_phone_to_retrained"]),
              "--db", database_url))
    print()


def admin_cli(*args: str, token: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "CLASSGUARD_ADMIN_TOKEN": token}, timeout=300)
    return (done.stdout + done.stderr).rstrip()


def sensor_stream(samples):
    from harness.traffic import new_sensor_samples, with_new_sensor

    return with_new_sensor(samples, new_sensor_samples(), NEW_SENSOR_SHARE, seed=8)


def play_round_robin(urls: list[str], samples, run, title: str) -> bool:
    """Send `samples` round-robin over the replicas and print the step's table (the replicas'
    /metrics summed); False when requests failed."""
    before = summed(scrape_all(urls))
    results, seconds = run(urls, samples, concurrency=16, send_context=False)
    if any(r[1] != 200 for r in results):
        print(f"{title}: requests failed", file=sys.stderr)
        return False
    time.sleep(2.0)  # monitors publish
    print(f"{title}   [{len(results) / seconds:.0f} req/s]")
    print("\n".join(step_table(results, before, summed(scrape_all(urls)))) + "\n")
    return True


def harvest_step(urls: list[str], token: str, samples, run) -> list[str] | None:
    """A new sensor arrives (the regions name it); production flows round-robin with capture on;
    labels through replica-1, the export through replica-2; the retraining. The regions named."""
    progress("Bob's loop: a new sensor, the regions, the harvest ...")
    started = time.time()
    print("=== Bob's loop, fleet-wide ===\n")
    if not play_round_robin(urls, sensor_stream(samples), run,
                            f"5. a new scanner sensor arrives, round-robin over the {len(urls)} replicas"):
        return None
    print(f"$ classguard regions --since <step 5> --top {ROUTED_REGIONS} --url {urls[0]}")
    ranking = admin_cli("regions", "--url", urls[0], "--since", str(started), "--top", str(ROUTED_REGIONS),
                        "--format", "json", token=token)
    try:
        names = [r["region"] for r in json.loads(ranking)["regions"]]
    except (ValueError, KeyError):
        print(ranking, file=sys.stderr)
        return None
    print(f"  ranked first: {', '.join(names)}\n")
    print(f"6. production keeps flowing round-robin; capture (stratified, 300 a stratum a minute on each worker) "
          f"keeps the inputs of {', '.join(names)}; labels through {name(1)}, the export through {name(2)}\n")
    harvest.harvest(urls[1], token, names, PHONE_SHARE, NEW_SENSOR_SHARE, lambda *a: admin_cli(*a, token=token),
                    traffic_to=urls, export_from=("--url", urls[2]))
    harvest.retrain()
    return names


def roll_out_and_route(database_url: str, env: dict[str, str], token: str, samples, names: list[str], run) -> bool:
    """The replicas restart with classguard-harvested loaded (a rollout); the route through replica-0."""
    from harness.fleet import Fleet

    progress(f"rolling out {harvest.HARVESTED_MODEL}: the replicas restart with it ...")
    env = {**env, "CLASSGUARD_MODELS__OTHERS": f'["classguard-retrained:latest", "{harvest.HARVESTED_MODEL}:latest"]'}
    (LOGS / "rolled-out").mkdir(parents=True, exist_ok=True)
    chain = LOGS / "route-harvested.yaml"
    chain.write_text("- {type: route, target: classguard-retrained, subgroups: [capture=phone]}\n"
                     f"- {{type: route, target: {harvest.HARVESTED_MODEL}, regions: [{', '.join(names)}]}}\n")
    with Fleet(REPLICAS, database_url, env=env, log_dir=LOGS / "rolled-out") as fleet:
        urls = fleet.urls
        print(f"the {REPLICAS} replicas restarted with {harvest.HARVESTED_MODEL} (the captured inputs, labels and "
              "log stay in PostgreSQL)")
        print(f"$ classguard guardrails apply route_harvested --file {chain} --url {urls[0]}")
        print(admin_cli("guardrails", "apply", "route_harvested", "--file", str(chain), "--url", urls[0],
                        token=token) + "\n")
        time.sleep(1.5)
        if not play_round_robin(urls, sensor_stream(samples), run,
                                f"6. route regions {', '.join(names)} to {harvest.HARVESTED_MODEL}, round-robin"):
            return False
    harvest.print_budget_curve()
    return True


if __name__ == "__main__":
    raise SystemExit(main())
