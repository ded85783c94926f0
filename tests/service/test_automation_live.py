"""Automatic actions with the real stack: a live `bentoml serve`, a real Prometheus evaluating
the shipped rules, a real Alertmanager with the shipped routes posting to POST /admin/alerts.
The incident's phone traffic raises the alert; before the true labels arrive the evidence gate
fails and the chain stays; once they arrive, Alertmanager's next notification routes phone to
the retrained model, without a person; labels saying the route is bad roll it back; another
alert, delivered out of order by a partitioned Alertmanager pair, is decided once."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone

import httpx
import pytest
import yaml

from harness import promtext
from harness.alertmanager import Alertmanager
from harness.demo import send_feedback
from harness.prometheus import Prometheus
from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from tests.dashboards.conftest import need
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ALERTS_TOKEN, ADMIN_TOKEN, FEEDBACK_TOKEN = "alerts-" + "a" * 32, "admin-" + "b" * 32, "feedback-" + "c" * 32
POLICY = {"enabled": True, "watch_seconds": 1, "rules": [{
    "name": "route_phone_to_retrained",
    "alerts": ["ClassguardSubgroupOverRepresented", "ClassguardKnownConfusionAboveReference",
               "ClassguardConfidenceCollapse"],
    "subgroups": ["capture=phone"],
    "guardrails": [{"type": "route", "target": "classguard-retrained", "subgroups": ["{subgroup}"]}],
    "gates": {"min_accuracy": 0.9, "min_labelled": 30, "min_agreement": 0.9, "min_compared": 50},
}]}


def admin(url: str, path: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def decisions(url: str) -> list[dict]:
    return admin(url, "/admin/alerts").json()["decisions"]


def rejected(server, reason: str) -> float:
    return promtext.total(promtext.scrape(server.url), "classguard_rejected_requests_total",
                          endpoint="alerts", reason=reason)


def test_the_phone_alert_routes_phone_to_the_retrained_model_once_the_evidence_holds(model_home, tmp_path):
    need("prometheus")
    need("prometheus-alertmanager")
    policy = tmp_path / "automation.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ALERTS_TOKEN": ALERTS_TOKEN,
           "CLASSGUARD_ADMIN_TOKEN": ADMIN_TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
           "CLASSGUARD_GUARDRAILS__AUTOMATION_PATH": str(policy),
           "CLASSGUARD_GUARDRAILS__ACTIVE": "shadow_retrained",  # the retrained model's evidence accrues
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}
    with Server(env=env, log_path=tmp_path / "serve.log") as server:
        # the receiver refuses what is not Alertmanager with its token: counted, never a 500
        before = rejected(server, "unauthorized"), rejected(server, "malformed_alerts")
        for token in (None, ADMIN_TOKEN, ALERTS_TOKEN + "x"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.post(f"{server.url}/admin/alerts", content=b"{}", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = httpx.post(f"{server.url}/admin/alerts", content=b'{"alerts": "x"}', timeout=10,
                       headers={"Authorization": f"Bearer {ALERTS_TOKEN}"})
        assert r.status_code == 400 and r.json()["error"] == "malformed_alerts"
        assert (rejected(server, "unauthorized"), rejected(server, "malformed_alerts")) == (before[0] + 3,
                                                                                           before[1] + 1)

        started = time.monotonic()  # the first phone request
        answered, _ = run(server.url, stream(holdout_samples(), 500, phone_share=0.5, seed=3), concurrency=16)
        with Alertmanager(server.url, ALERTS_TOKEN, wait="1s", repeat="2s") as am, \
                Alertmanager(server.url, ALERTS_TOKEN, wait="1s", repeat="1s") as stale, \
                Prometheus(server.url, hold="2s", alertmanager=am.url) as prom:
            prom.wait_for_samples()
            # no true labels yet: the retrained model's accuracy on phone is unknown, the gate fails
            failed = wait_until(lambda: [d for d in decisions(server.url) if d["outcome"] == "gate_failed"], timeout=60,
                                interval=0.5, message="a gate_failed decision")
            assert "labelled answers on capture=phone" in failed[0]["reason"]
            assert admin(server.url, "/admin/guardrails").json()["profile"] == "shadow_retrained"
            # the labels arrive; Alertmanager's next notification of the same alert is decided again
            send_feedback(server.url, FEEDBACK_TOKEN, [a for a in answered if a[1] == 200])
            applied = wait_until(lambda: [d for d in decisions(server.url) if d["outcome"] == "applied"], timeout=60,
                                 interval=0.5, message="an applied decision")
            took = time.monotonic() - started
            print(f"first phone request to the automatic route: {took:.1f} s")
            [row] = applied
            ev = row["evidence"]
            assert row["rule"] == "route_phone_to_retrained" and row["subgroup"] == "capture=phone"
            assert ev["labelled"] >= 30 and ev["accuracy"] >= 0.9 and ev["agreement_outside"] >= 0.9
            assert ev["primary_accuracy"] < ev["accuracy"]  # the baseline fails phone, as in 2015
            chain = admin(server.url, "/admin/guardrails").json()
            assert chain["profile"] == "auto.route_phone_to_retrained" and chain["hash"] == row["chain_hash"]
            # exactly one action, however many notifications Alertmanager sent
            assert [d["outcome"] for d in decisions(server.url)].count("applied") == 1
            phones = [s for s in holdout_samples() if s.capture == "phone"][:60]
            routed, _ = run(server.url, phones)
            assert {body["model"].split(":")[0] for _, _, body in routed} == {"classguard-retrained"}

            # a bad route: the true labels say the routed model is wrong on every phone answer
            # since (labels no test digit has; the watch reads them like any others)
            wrong = [(replace(sample, label=(int(body["label"]) + 1) % 10), status, body)
                     for sample, status, body in routed if body["label"] is not None]
            send_feedback(server.url, FEEDBACK_TOKEN, wrong)
            rolled = wait_until(lambda: [d for d in decisions(server.url) if d["outcome"] == "rolled_back"],
                                timeout=30, interval=0.5, message="the action rolled back")
            assert "classguard-retrained was right on 0.0%" in rolled[0]["reason"]
            assert admin(server.url, "/admin/guardrails").json()["profile"] == "shadow_retrained"
            wait_until(lambda: {a["labels"]["alertname"] for a in prom.alerts()} >= {
                "ClassguardAutomaticAction", "ClassguardAutomaticActionRolledBack"}, timeout=30, interval=0.5,
                message="Prometheus's alerts on the action and on its rollback")

            # another alert the rule acts on, out of order as a partitioned Alertmanager pair delivers
            # it: both notify it firing (the rule acted within the hour: rate_limited, which a repeat
            # decides again), one learns it resolved, the other keeps repeating it firing. The
            # resolution is recorded, the stale repeats are duplicates, nothing is decided after.
            labels = {"alertname": "ClassguardConfidenceCollapse", "subgroup": "capture=phone", "severity": "page"}

            def about_collapse():
                return [d["outcome"] for d in decisions(server.url) if d["alertname"] == labels["alertname"]]

            since = datetime.now(timezone.utc)
            for manager in (am, stale):
                manager.post(labels, since)
            wait_until(lambda: "rate_limited" in about_collapse(), timeout=30, interval=0.5, message="rate_limited")
            am.post(labels, since, resolved=True)
            wait_until(lambda: "resolved" in about_collapse(), timeout=30, interval=0.5, message="resolved")
            time.sleep(1.0)  # a stale repeat already past its check when the resolution was written lands now
            settled, duplicates = about_collapse(), duplicates_counted(server.url)
            wait_until(lambda: duplicates_counted(server.url) >= duplicates + 3, timeout=30, interval=0.5,
                       message="the stale Alertmanager's repeats, refused as duplicates")
            assert about_collapse() == settled and settled.count("resolved") == 1
            assert admin(server.url, "/admin/guardrails").json()["profile"] == "shadow_retrained"


def test_a_fleet_acts_once_on_every_replica_and_a_persons_swap_wins(model_home, postgres, tmp_path):
    """Three replicas sharing only PostgreSQL. One notification posted to each of them twice at the
    same moment: one `applied`, five `duplicate`, every replica serving the new chain. On-call then
    swaps by hand through another replica: the watch records the action `abandoned` and puts
    nothing back. Then the real stack: Prometheus scrapes all three, Alertmanager posts every
    notification to every replica; the phone alert is applied once, fleet-wide."""
    import asyncio

    from harness.fleet import Fleet, new_database

    policy = tmp_path / "automation.yaml"
    quick = {**POLICY, "watch_seconds": 1, "rules": [{**POLICY["rules"][0], "every_seconds": 1}]}
    policy.write_text(yaml.safe_dump(quick))
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ALERTS_TOKEN": ALERTS_TOKEN,
           "CLASSGUARD_ADMIN_TOKEN": ADMIN_TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
           "CLASSGUARD_GUARDRAILS__AUTOMATION_PATH": str(policy), "CLASSGUARD_GUARDRAILS__ACTIVE": "shadow_retrained",
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}
    with Fleet(3, new_database(postgres.url, "automation_live"), env=env, log_dir=tmp_path) as fleet:
        answered, _ = run(fleet.urls, stream(holdout_samples(), 500, phone_share=0.5, seed=4), concurrency=12)
        time.sleep(1.0)  # the shadows' answers reach the store at the replicas' next flush
        send_feedback(fleet.urls[0], FEEDBACK_TOKEN, [a for a in answered if a[1] == 200])
        body = {"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "startsAt": "2026-12-04T12:00:00Z", "fingerprint": "5e1f00d",
            "labels": {"alertname": "ClassguardKnownConfusionAboveReference", "subgroup": "capture=phone"}}]}

        async def post_everywhere():
            async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ALERTS_TOKEN}"}) as c:
                return await asyncio.gather(*(c.post(f"{url}/admin/alerts", json=body) for url in fleet.urls * 2))

        answers = asyncio.run(post_everywhere())
        outcomes = sorted(r.json()["decisions"][0]["outcome"] for r in answers)
        assert outcomes == ["applied"] + ["duplicate"] * 5, [r.json() for r in answers]

        def profiles():
            return {admin(url, "/admin/guardrails").json()["profile"] for url in fleet.urls}

        wait_until(lambda: profiles() == {"auto.route_phone_to_retrained"}, timeout=10, interval=0.2,
                   message="the automatic chain on every replica")
        r = httpx.post(f"{fleet.urls[2]}/admin/guardrails", json={"profile": "shadow_retrained"}, timeout=30,
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text
        abandoned = wait_until(lambda: [d for d in decisions(fleet.urls[0])
                                        if d["outcome"] == "abandoned"], timeout=15, interval=0.5,
                               message="the action recorded as abandoned")
        assert len(abandoned) == 1 and "shadow_retrained" in abandoned[0]["reason"]
        wait_until(lambda: profiles() == {"shadow_retrained"}, timeout=10, interval=0.2, message="the person's chain")

        with Alertmanager(fleet.urls, ALERTS_TOKEN, wait="1s", repeat="2s") as am, \
                Prometheus(fleet.urls, hold="2s", alertmanager=am.url) as prom:
            prom.wait_for_samples()
            run(fleet.urls, stream(holdout_samples(), 400, phone_share=0.6, seed=5), concurrency=12)
            wait_until(lambda: [d for d in decisions(fleet.urls[1])
                                if d["outcome"] == "applied" and d["alertname"] != body["alerts"][0]["labels"]["alertname"]],
                       timeout=60, interval=0.5, message="the real alert applied")
            time.sleep(3)  # Alertmanager's repeats reach all three replicas meanwhile
        applied = [d for d in decisions(fleet.urls[0]) if d["outcome"] == "applied"]
        assert len(applied) == 2  # the posted alert's, and the real one's: once each, fleet-wide
        wait_until(lambda: profiles() == {"auto.route_phone_to_retrained"}, timeout=10, interval=0.2,
                   message="the real alert's chain on every replica")


def duplicates_counted(url: str) -> float:
    return promtext.total(promtext.scrape(url), "classguard_automation_decisions_total",
                          rule="route_phone_to_retrained", outcome="duplicate")
