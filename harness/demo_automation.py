"""The incident's fix without a person: a real Prometheus evaluates classguard's rules, a real
Alertmanager posts the phone alert to POST /admin/alerts, and classguard routes phone to the
retrained model once the evidence holds. First with no true labels yet (the gate fails, the
chain stays), then with them (the route is applied).

    python -m harness.demo_automation      (make demo runs it last, when Prometheus and
                                           Alertmanager are installed: apt-get install
                                           prometheus prometheus-alertmanager)

Timing is shortened so the demo takes seconds: every alert's `for:` is held 5 s (the shipped
rules wait 1-2 minutes) and the automation route's group_wait and repeat are 1 s and 2 s (10 s
and 5 minutes shipped). The policy is config/automation.yaml's rule, turned on.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from harness import alertmanager, prometheus
from harness.server import Server
from harness.traffic import holdout_samples, run, stream

POLICY = Path("config/automation.yaml")
HOLD = "5s"
TIMEOUT_S = 120.0


def decisions(url: str, token: str) -> list[dict]:
    r = httpx.get(f"{url}/admin/alerts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    return r.json()["decisions"]


def wait_for(url: str, token: str, outcome: str) -> dict | None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = [d for d in decisions(url, token) if d["outcome"] == outcome]
        if found:
            return found[0]
        time.sleep(0.5)
    return None


def shown(evidence: dict) -> str:
    return (f"{evidence['model']} right on {evidence['accuracy']:.1%} of {evidence['labelled']} labelled "
            f"{evidence['subgroup']} answers (the primary {evidence['primary_accuracy']:.1%}); agreeing with "
            f"{evidence['agreement_outside']:.1%} of {evidence['compared_outside']} answers elsewhere")


def main() -> int:
    if not (prometheus.available() and alertmanager.available()):
        print("(Prometheus and Alertmanager are not installed: apt-get install prometheus prometheus-alertmanager, "
              "and the demo shows the automatic route too)")
        return 0
    from harness.demo import send_feedback

    admin, alerts = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="classguard-automation-") as tmp:
        policy = Path(tmp) / "automation.yaml"
        policy.write_text(yaml.safe_dump({**yaml.safe_load(POLICY.read_text()), "enabled": True}))
        env = {"CLASSGUARD_ADMIN_TOKEN": admin, "CLASSGUARD_FEEDBACK_TOKEN": admin, "CLASSGUARD_ALERTS_TOKEN": alerts,
               "CLASSGUARD_GUARDRAILS__AUTOMATION_PATH": str(policy), "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1",
               # the retrained model shadows every answer: the evidence the rule's gate reads
               "CLASSGUARD_GUARDRAILS__ACTIVE": "shadow_retrained"}
        with Server(env=env, log_path=Path(tmp) / "serve.log") as server, \
                alertmanager.Alertmanager(server.url, alerts, wait="1s", repeat="2s") as am, \
                prometheus.Prometheus(server.url, hold=HOLD, alertmanager=am.url) as prom:
            prom.wait_for_samples()
            print(f"7. Without a person: Prometheus {prom.url} (alerts held {HOLD}) -> Alertmanager {am.url} "
                  f"-> POST {server.url}/admin/alerts; chain shadow_retrained; rule route_phone_to_retrained "
                  f"({POLICY}, enabled)")
            started = time.monotonic()
            answered, _ = run(server.url, stream(holdout_samples(), 800, phone_share=0.5, seed=21), concurrency=16)
            print(f"   {len(answered)} requests, half phone; no true labels yet")
            failed = wait_for(server.url, admin, "gate_failed")
            if failed is None:
                print("   no decision within the timeout", file=sys.stderr)
                return 1
            print(f"   {time.monotonic() - started:5.1f} s  {failed['alertname']}{{subgroup={failed['subgroup']}}}: "
                  f"gate_failed, the chain stays: {failed['reason']}")
            recorded = send_feedback(server.url, admin, [a for a in answered if a[1] == 200])
            print(f"   {time.monotonic() - started:5.1f} s  {recorded} true labels arrive (POST /feedback)")
            applied = wait_for(server.url, admin, "applied")
            if applied is None:
                print("   no automatic route within the timeout", file=sys.stderr)
                return 1
            took = time.monotonic() - started
            print(f"   {took:5.1f} s  applied at Alertmanager's next notification: {applied['reason']}")
            print(f"   evidence: {shown(applied['evidence'])}")
            phone = next(s for s in holdout_samples() if s.capture == "phone")
            [(_, _, body)] = run(server.url, [phone])[0]
            print(f"   a phone request now: answered by {body['model']}")
            print(f"\nfirst phone request to the automatic route: {took:.1f} s (with the shipped timing add the "
                  "alert's `for:`, 1-2 minutes, and Alertmanager's group_wait, 10 s)")
            print("the decision as the ledger holds it (GET /admin/alerts):")
            print(json.dumps({k: applied[k] for k in ("rule", "alertname", "subgroup", "outcome", "evidence",
                                                      "chain_hash", "base_profile")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
