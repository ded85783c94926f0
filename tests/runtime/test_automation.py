"""Automatic actions on alerts: the policy file, the evidence gates, and the ledger that makes
each decision once, on both store engines (a real SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import GuardrailsConfig, LogConfig
from core.errors import InputError
from runtime.active_chain import GuardrailRuntime
from runtime.automation import Automation, parse
from runtime.automation_policy import Policy, load_policy
from store import alert_actions
from store.chain_store import ChainStore, FleetChainStore
from store.prediction_log import PredictionLog
from tests.log_rows import record_one
from tests.runtime.test_chain_config import CONTEXT

PHONE, SCANNER = "capture=phone", "capture=scanner"
RULE = {"name": "route_phone", "alerts": ["ClassguardKnownConfusionAboveReference"], "subgroups": [PHONE],
        "guardrails": [{"type": "route", "target": "classguard-retrained", "subgroups": ["{subgroup}"]}],
        "gates": {"min_accuracy": 0.9, "min_labelled": 20, "min_agreement": 0.9, "min_compared": 20},
        "every_seconds": 3600}


def policy(**changes) -> Policy:
    rule = {**RULE, **changes.pop("rule", {})}
    return Policy.model_validate({"enabled": True, "rules": [rule], **changes})


def notification(status="firing", fingerprint="a1b2", starts="2026-12-04T10:00:00Z", subgroup=PHONE,
                 alertname="ClassguardKnownConfusionAboveReference") -> bytes:
    alert = {"status": status, "labels": {"alertname": alertname, "subgroup": subgroup, "severity": "page"},
             "annotations": {"summary": "x"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint}
    return json.dumps({"version": "4", "groupKey": "{}:{}", "status": status, "receiver": "classguard",
                       "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
                       "alerts": [alert]}).encode()


def answer(i: int, label: str, subgroup: str) -> dict:
    return {"request_id": f"q{i}", "label": label, "confidence": 0.9, "abstained": False, "flags": [],
            "guardrails": [], "top_k": [{"label": label, "probability": 0.9}], "subgroup": {}}


def traffic(db, *, phone_right: bool = True, phone: int = 30, scanner: int = 30, agree: bool = True) -> None:
    """The baseline answers `phone` phone requests wrong and `scanner` scanner ones right; the
    retrained model shadows them all (right on phone when `phone_right`; agreeing on scanner
    when `agree`); every request gets its true label."""
    log = PredictionLog(LogConfig(path=getattr(db, "path", None) or LogConfig().path), db)
    truth = {}
    for i in range(phone + scanner):
        subgroup = PHONE if i < phone else SCANNER
        truth[f"q{i}"] = "6"
        given = "0" if subgroup == PHONE else "6"
        record_one(log, answer(i, given, subgroup), np.full(10, 0.1), "h", "classguard-baseline:v1", subgroup)
        shadow = ("6" if phone_right else "0") if subgroup == PHONE else ("6" if agree else "1")
        log.record_shadow(f"q{i}", "classguard-retrained", shadow)
    log.flush(retention=False)
    conn = db.connect()
    with conn.transaction():
        for request_id, label in truth.items():
            conn.execute("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?)", (request_id, label, time.time()))
    conn.close()


@pytest.fixture
def service(database, tmp_path):
    """`service(policy)`: an Automation over one worker's GuardrailRuntime; `.worker()` adds
    another worker (or replica) of the same store."""
    config = GuardrailsConfig(audit_log=tmp_path / "audit.jsonl")
    (tmp_path / "run").mkdir()

    def worker(name="r1") -> GuardrailRuntime:
        store = (ChainStore(tmp_path / "run", config.audit_log) if database.backend == "sqlite"
                 else FleetChainStore(database, name))
        return GuardrailRuntime(config, CONTEXT, store)

    def make(p: Policy, name="r1") -> Automation:
        return Automation(p, worker(name), database, primary="classguard-baseline", replica=name,
                          subgroups=CONTEXT.subgroups)

    make.worker, make.db = worker, database
    return make


def decided(automation: Automation, body: bytes) -> list[dict]:
    return automation.handle(parse(body))


def ledger(db) -> list[dict]:
    return db.read(alert_actions.recent)


def test_the_shipped_policy_is_off_and_compiles_against_the_demo_models():
    """config/automation.yaml: automatic actions off until enabled; its rule compiles for phone."""
    shipped = load_policy()
    assert not shipped.enabled and [r.name for r in shipped.rules] == ["route_phone_to_retrained"]
    shipped.check(CONTEXT)


@pytest.mark.parametrize("change, message", [
    ({"rule": {"name": "has space"}}, "rule name"),
    ({"rule": {"alerts": ["not-an-alert"]}}, "not an alert name"),
    ({"rule": {"guardrails": [{"type": "route"}]}}, "target"),
    ({"rules": [RULE, RULE]}, "repeat"),
])
def test_a_bad_policy_is_refused_with_the_reason(change, message):
    """Rule names, alert names, guardrail shapes and repeated rules are checked when the file loads."""
    with pytest.raises(ValueError, match=message):
        if "rules" in change:
            Policy.model_validate({"enabled": True, **change})
        else:
            policy(**change)


def test_a_rule_naming_a_model_that_is_not_loaded_stops_the_start_up():
    bad = policy(rule={"guardrails": [{"type": "route", "target": "classguard-missing", "subgroups": ["{subgroup}"]}]})
    with pytest.raises(ValueError, match="not loaded"):
        bad.check(CONTEXT)


def test_a_firing_alert_applies_the_rule_once_with_its_evidence_across_workers(service):
    """With the evidence there, the alert puts the route in front of the chain in force, on this
    worker and (at its sync) another; the ledger row holds the evidence; the same notification
    again, to either worker, is a duplicate and changes nothing."""
    traffic(service.db)
    automation, other = service(policy()), service.worker("r2")
    [first] = decided(automation, notification())
    assert first["outcome"] == "applied", first
    chain = automation.runtime.chain
    assert chain.profile == "auto.route_phone"
    route, rest = chain.specs[0], list(chain.specs[1:])
    assert (route["type"], route["target"], route["subgroups"], rest) == (
        "route", "classguard-retrained", [PHONE], [{"type": "allow_all"}])
    ev = first["evidence"]
    assert (ev["labelled"], ev["accuracy"], ev["primary_accuracy"], ev["agreement_outside"]) == (30, 1.0, 0.0, 1.0)
    other.sync()
    assert other.chain.config_hash == chain.config_hash
    again = service(policy(), "r2")
    assert [d["outcome"] for d in decided(again, notification())] == ["duplicate"]
    assert [d["outcome"] for d in decided(automation, notification())] == ["duplicate"]
    [row] = ledger(service.db)
    assert row["outcome"] == "applied" and row["evidence"] == ev and row["chain_hash"] == chain.config_hash
    assert alert_actions.in_force(service.db.connect(), chain.config_hash)[0]["rule"] == "route_phone"


@pytest.mark.parametrize("setup, reason", [
    ({"phone": 5}, "has 5 labelled answers"),
    ({"phone_right": False}, "right on 0.0%"),
    ({"agree": False}, "agrees with 0.0%"),
])
def test_a_failing_gate_leaves_the_chain_alone_and_says_why(service, setup, reason):
    """Too few labelled answers, a target no better on the subgroup, or one that disagrees
    elsewhere: `gate_failed`, recorded with its evidence; the chain stays."""
    traffic(service.db, **setup)
    automation = service(policy())
    before = automation.runtime.chain.config_hash
    [d] = decided(automation, notification())
    assert d["outcome"] == "gate_failed" and reason in d["reason"], d
    assert automation.runtime.chain.config_hash == before
    assert ledger(service.db)[0]["outcome"] == "gate_failed"


def test_in_force_rate_limited_and_a_persons_swap_wins(service):
    """A second alert for the same subgroup while the action is in force: `already_active`.
    A person's swap ends it (nothing is in force); a new alert within `every_seconds` of the
    last action is then `rate_limited`, not applied again."""
    traffic(service.db)
    automation = service(policy())
    assert decided(automation, notification())[0]["outcome"] == "applied"
    assert decided(automation, notification(fingerprint="ff01"))[0]["outcome"] == "already_active"
    automation.runtime.swap(profile="allow_all")  # on-call's own choice
    conn = service.db.connect()
    assert alert_actions.in_force(conn, automation.runtime.chain.config_hash) == []
    conn.close()
    [d] = decided(automation, notification(fingerprint="ff02"))
    assert d["outcome"] == "rate_limited" and automation.runtime.chain.profile == "allow_all"


def test_max_active_bounds_the_actions_in_force(service):
    """With max_active 1, a second rule's action while the first is in force: `limit_reached`."""
    traffic(service.db)
    second = {**RULE, "name": "abstain_scanner", "alerts": ["ClassguardConfidenceCollapse"], "subgroups": [SCANNER],
              "guardrails": [{"type": "abstain", "subgroups": ["{subgroup}"]}], "gates": {}}
    automation = service(Policy.model_validate({"enabled": True, "max_active": 1, "rules": [RULE, second]}))
    assert decided(automation, notification())[0]["outcome"] == "applied"
    [d] = decided(automation, notification(alertname="ClassguardConfidenceCollapse", subgroup=SCANNER, fingerprint="b2"))
    assert d["outcome"] == "limit_reached" and d["rule"] == "abstain_scanner"


def test_resolved_first_makes_the_late_firing_a_duplicate_and_dry_run_changes_nothing(service):
    """Out of order: a `resolved` recorded before its `firing` turns that firing into a duplicate.
    In dry-run a firing alert is decided and recorded (`dry_run`), the chain unchanged."""
    traffic(service.db)
    automation = service(policy(dry_run=True))
    assert decided(automation, notification(status="resolved"))[0]["outcome"] == "resolved"
    assert decided(automation, notification())[0]["outcome"] == "duplicate"
    before = automation.runtime.chain.config_hash
    [d] = decided(automation, notification(fingerprint="cc"))
    assert d["outcome"] == "dry_run" and automation.runtime.chain.config_hash == before
    assert [r["outcome"] for r in ledger(service.db)] == ["dry_run", "resolved"]


def test_alerts_no_rule_acts_on_are_counted_not_recorded(service):
    """Another alert, another subgroup, or automation off: answered and counted, nothing recorded."""
    service.db.connect().close()  # the store's tables, with no traffic in them
    automation = service(policy())
    counted = REGISTRY.get_sample_value("classguard_automation_decisions_total",
                                        {"rule": "none", "outcome": "no_rule"}) or 0.0
    assert decided(automation, notification(alertname="ClassguardHighLatency"))[0]["outcome"] == "no_rule"
    assert decided(automation, notification(subgroup=SCANNER))[0]["outcome"] == "no_rule"
    assert REGISTRY.get_sample_value("classguard_automation_decisions_total",
                                     {"rule": "none", "outcome": "no_rule"}) == counted + 2
    off = service(policy(enabled=False))
    assert decided(off, notification())[0]["outcome"] == "disabled"
    assert ledger(service.db) == []


@pytest.mark.parametrize("body", [
    b"", b"[]", b"{", b'{"status": "firing"}', b'{"status": "maybe", "alerts": []}',
    notification().replace(b'"a1b2"', b'"../../etc"'),
    json.dumps({"status": "firing", "alerts": [{"status": "firing", "labels": {}, "startsAt": "x",
                                                "fingerprint": "a"}] * 201}).encode(),
])
def test_a_body_that_is_not_an_alertmanager_notification_is_refused(body):
    with pytest.raises(InputError) as refused:
        parse(body)
    assert refused.value.reason == "malformed_alerts" and refused.value.status == 400


def test_a_failed_gate_is_decided_again_at_the_alerts_next_notification(service):
    """The labels a gate waits for arrive while the alert fires: the same alert's repeated
    notification is decided again and applies; each decision is a row of its own."""
    automation = service(policy())
    service.db.connect().close()
    assert decided(automation, notification())[0]["outcome"] == "gate_failed"
    traffic(service.db)
    assert decided(automation, notification())[0]["outcome"] == "applied"
    assert decided(automation, notification())[0]["outcome"] == "duplicate"
    assert [r["outcome"] for r in ledger(service.db)] == ["applied", "gate_failed"]


def routed(db, n: int, *, right: bool, abstain: bool = False, start: int = 1000) -> None:
    """`n` phone requests answered by the retrained model (routed), each labelled."""
    log = PredictionLog(LogConfig(path=getattr(db, "path", None) or LogConfig().path), db)
    for i in range(start, start + n):
        body = answer(i, "6" if right else "0", PHONE)
        if abstain:
            body = {**body, "label": None, "abstained": True}
        record_one(log, body, np.full(10, 0.1), "h", "classguard-retrained:v1", PHONE)
    log.flush(retention=False)
    conn = db.connect()
    with conn.transaction():
        for i in range(start, start + n):
            conn.execute("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?)", (f"q{i}", "6", time.time()))
    conn.close()


def test_the_watch_rolls_back_an_action_whose_model_fails_the_subgroup_and_keeps_a_good_one(service):
    """After the action: 40 labelled phone answers from the retrained model, all right, keep it in
    force; 40 more, all wrong (accuracy 50% < 85%), roll it back: the chain is the one it was put
    in front of again (same hash), the rollback is recorded with its evidence and counted, and
    another worker's watch in the same round finds nothing left to do."""
    traffic(service.db)
    automation = service(policy())
    base = automation.runtime.chain
    assert decided(automation, notification())[0]["outcome"] == "applied"
    routed(service.db, 40, right=True)
    assert automation.watch_once(force=True) == []
    routed(service.db, 40, right=False, start=2000)
    counted = REGISTRY.get_sample_value("classguard_automation_decisions_total",
                                        {"rule": "route_phone", "outcome": "rolled_back"}) or 0.0
    [rolled] = automation.watch_once(force=True)
    assert rolled["outcome"] == "rolled_back" and "right on 50.0% of 80 labelled" in rolled["reason"]
    assert automation.runtime.chain.config_hash == base.config_hash and automation.runtime.chain.profile == "allow_all"
    assert REGISTRY.get_sample_value("classguard_automation_decisions_total",
                                     {"rule": "route_phone", "outcome": "rolled_back"}) == counted + 1
    row = ledger(service.db)[0]
    assert row["outcome"] == "rolled_back" and row["evidence"]["accuracy"] == 0.5
    other = service(policy(), "r2")
    assert other.watch_once(force=True) == [] and other.runtime.chain.config_hash == base.config_hash


def test_rolling_back_an_action_undoes_those_stacked_on_it(service):
    """Two actions in force (phone routed, then scanner abstaining); phone's fails: both go, the
    chain is the start-up one, each with its own `rolled_back` row."""
    traffic(service.db)
    second = {**RULE, "name": "abstain_scanner", "alerts": ["ClassguardConfidenceCollapse"], "subgroups": [SCANNER],
              "guardrails": [{"type": "abstain", "subgroups": ["{subgroup}"]}], "gates": {}}
    automation = service(Policy.model_validate({"enabled": True, "rules": [RULE, second]}))
    base = automation.runtime.chain.config_hash
    assert decided(automation, notification())[0]["outcome"] == "applied"
    assert decided(automation, notification(alertname="ClassguardConfidenceCollapse", subgroup=SCANNER,
                                            fingerprint="b2"))[0]["outcome"] == "applied"
    routed(service.db, 60, right=True, abstain=True)  # the routed model withholds every phone answer
    done = automation.watch_once(force=True)
    assert sorted((d["rule"], d["outcome"]) for d in done) == [("abstain_scanner", "rolled_back"),
                                                                ("route_phone", "rolled_back")]
    assert "withheld 100.0%" in next(d["reason"] for d in done if d["rule"] == "route_phone")
    assert automation.runtime.chain.config_hash == base


def test_a_persons_swap_during_an_automatic_action_is_recorded_as_abandoning_it(service):
    """On-call swaps while the action is in force: the watch records it `abandoned`, once, and
    puts nothing back; the person's chain stays."""
    traffic(service.db)
    automation = service(policy())
    assert decided(automation, notification())[0]["outcome"] == "applied"
    service.worker("r2").swap(profile="abstain_when_unsure")  # through another worker
    [ended] = automation.watch_once(force=True)
    assert ended["outcome"] == "abandoned" and "abstain_when_unsure" in ended["reason"]
    assert automation.watch_once(force=True) == []
    assert automation.runtime.chain.profile == "abstain_when_unsure"


def test_a_rule_for_any_region_is_checked_with_a_region_and_fills_it_in(service):
    """A rule without `subgroups` naming `{region}` compiles at start-up against a region of the
    codebook, and an alert on `region=r07` routes that region; one on a region the codebook does
    not have is no rule's."""
    from dataclasses import replace

    regions = replace(CONTEXT, regions=frozenset({"r07", "r08"}))
    rule = {**RULE, "subgroups": None, "gates": {},
            "guardrails": [{"type": "route", "target": "classguard-retrained", "regions": ["{region}"]}]}
    p = policy(rule=rule)
    p.check(regions)
    assert p.rules[0].chain_for("region=r07")[0]["regions"] == ["r07"]
    service.db.connect().close()
    automation = Automation(p, service.worker(), service.db, primary="classguard-baseline", replica="r1",
                            subgroups=CONTEXT.subgroups, regions=regions.regions)
    automation.runtime.context = regions
    assert decided(automation, notification(subgroup="region=r07"))[0]["outcome"] == "applied"
    assert automation.runtime.chain.specs[0]["regions"] == ["r07"]
    assert decided(automation, notification(subgroup="region=r99", fingerprint="99"))[0]["outcome"] == "no_rule"


def test_label_values_no_store_or_response_can_carry_are_refused_or_written_out(service):
    """A lone surrogate in an alert's labels is not JSON that UTF-8 can carry: refused. A NUL
    (which PostgreSQL text refuses) is written out: decided (no rule), answered as UTF-8."""
    service.db.connect().close()
    automation = service(policy())
    with pytest.raises(InputError):
        parse(notification().replace(b'"capture=phone"', b'"capture=\\ud800"'))
    [d] = decided(automation, notification().replace(b'"capture=phone"', b'"capture=\\u0000phone"'))
    assert d["outcome"] == "no_rule" and d["subgroup"] == "capture=\\x00phone"
    json.dumps(d, ensure_ascii=False).encode("utf-8")
