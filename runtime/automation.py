"""Automatic actions: an alert Alertmanager posts (POST /admin/alerts) becomes a guardrail
change without a person, when the policy (runtime/automation_policy.py) has a rule for it and
the rule's evidence holds. The same swap path as a person's: the new chain is validated,
shared with every worker and replica, audited.

Each alert x matching rule is one decision, recorded in the store's ledger
(store/alert_actions.py) with its outcome, reason and evidence:

    applied        the rule's guardrails were put in front of the chain in force
    dry_run        they would have been (policy `dry_run: true`); nothing changed
    gate_failed    the evidence did not hold (too few labelled answers, accuracy or agreement too low)
    rate_limited   the rule acted less than `every_seconds` ago
    limit_reached  `max_active` automatic actions are in force already
    already_active the rule's action for this subgroup is in force already
    invalid        the chain it would make does not compile (a subgroup the models do not know)
    resolved       Alertmanager says the alert resolved; what was applied stays (a person, or a
                   later rollback, takes it out: a mitigation is not undone because it worked)

and, from the watch every `watch_seconds` (one worker of the fleet each time):

    rolled_back    what the subgroup got since the action fell below its rollback limits (the
                   routed model's realized accuracy, abstentions, failed routes): the chain goes
                   back to the one the action was put in front of, with any action stacked on it
    abandoned      the chain in force no longer carries the action: a person swapped (a
                   person's swap always wins; nothing is put back)

Idempotent: a notification Alertmanager repeats, or posts to another replica, names the same
alert (fingerprint and start) and finds its decision recorded: `duplicate`, counted, not
recorded again. A `resolved` that overtook its `firing` is recorded first, and the late
`firing` is then a duplicate. Only a decision that may change while the alert fires
(`gate_failed`, `rate_limited`, `limit_reached`) is made again at the alert's next
notification (Alertmanager's `repeat_interval` of the automation route): the true labels a gate
waits for may have arrived since. Decisions are made holding the chain's lock (the fleet's), so
two replicas never both act, and rate limits and the actions in force are read from what the
whole fleet recorded, by the store's clock.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import metrics
from core.errors import InputError
from runtime.automation_policy import Policy, Rule
from store import alert_actions, evidence
from store.clock import store_now
from store.database import StoreUnavailable
from store.prediction_log import claim

log = logging.getLogger("classguard.automation")

OUTCOMES = ("applied", "dry_run", "gate_failed", "rate_limited", "limit_reached", "already_active", "invalid",
            "resolved", "duplicate", "no_rule", "disabled", "rolled_back", "abandoned")
ABANDONED_LOOKBACK_SECONDS = 7 * 86400  # applied actions the watch looks at for ones a person ended
# outcomes that may change while the alert fires (labels arrive, an hour passes, an action
# ends): Alertmanager's repeated notification of the same alert is decided again
RETRIED = frozenset({"gate_failed", "rate_limited", "limit_reached"})
MAX_ALERTS = 200  # alerts in one notification
LABEL_TEXT = 256  # characters of a label value kept


class _Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(max_length=64)
    startsAt: str = Field(pattern=r"^[0-9T:.+Z-]{1,64}$")  # RFC 3339, as Alertmanager writes it
    fingerprint: str = Field(pattern=r"^[0-9A-Za-z]{1,64}$")


class Notification(BaseModel):
    """Alertmanager's webhook body (version 4); what classguard does not read is ignored."""

    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    alerts: list[_Alert] = Field(max_length=MAX_ALERTS)


def _text(value: str) -> str:
    """A label value as it is echoed, logged and stored: cut, and any lone surrogate written out
    (UTF-8 cannot carry one: a response or a PostgreSQL row holding it would fail)."""
    return value[:LABEL_TEXT].encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def parse(raw: bytes) -> Notification:
    try:
        return Notification.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError("malformed_alerts", f"not an Alertmanager webhook body: {where}: {first['msg']}") from None


class Automation:
    def __init__(self, policy: Policy, runtime: Any, db: Any, *, primary: str, replica: str,
                 subgroups: frozenset[str] = frozenset(), regions: frozenset[str] = frozenset()) -> None:
        self.policy, self.runtime, self.db = policy, runtime, db
        self.primary, self.replica = primary, replica
        # the subgroup label values a rule without `subgroups:` acts for: what the service knows
        self.known = frozenset(subgroups) | frozenset(f"region={r}" for r in regions)

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """Decide on every alert of a notification (blocking: run it off the event loop). A store
        that fails mid-way raises StoreUnavailable: Alertmanager sends the notification again,
        and what was decided already is then a duplicate."""
        errors = self.db.errors if self.db is not None else ()
        try:
            return self._handle(notification)
        except errors as exc:
            raise StoreUnavailable(f"the store failed ({type(exc).__name__})") from None

    def _handle(self, notification: Notification) -> list[dict[str, Any]]:
        decisions = []
        for alert in notification.alerts:
            name, subgroup = _text(alert.labels.get("alertname", "")), _text(alert.labels.get("subgroup", ""))
            rules = [r for r in self.policy.rules_for(name) if self._acts_for(r, subgroup)]
            if not rules:
                decisions.append(self._count({"alertname": name, "subgroup": subgroup, "rule": None,
                                              "outcome": "no_rule", "reason": "no rule acts on this alert"}))
                continue
            for rule in rules:
                if not self.policy.enabled:
                    decision = {"outcome": "disabled", "reason": "automatic actions are off (enabled: false)"}
                elif alert.status == "resolved":
                    decision = self._resolved(rule, alert, subgroup)
                else:
                    decision = self._firing(rule, alert, subgroup)
                decisions.append(self._count({"alertname": name, "subgroup": subgroup, "rule": rule.name,
                                              **decision}))
        return decisions

    def _acts_for(self, rule: Rule, subgroup: str) -> bool:
        return subgroup in rule.subgroups if rule.subgroups is not None else subgroup in self.known

    @staticmethod
    def _count(decision: dict[str, Any]) -> dict[str, Any]:
        metrics.AUTOMATION_DECISIONS.labels(decision["rule"] or "none", decision["outcome"]).inc()
        if decision["outcome"] not in ("duplicate", "no_rule", "disabled"):
            log.warning("automatic action %s: %s", decision["outcome"], decision["reason"],
                        extra={"rule": decision["rule"], "alertname": decision["alertname"],
                               "subgroup": decision["subgroup"]})
        return decision

    @staticmethod
    def _key(rule: Rule, alert: _Alert, status: str) -> str:
        return f"{rule.name}|{alert.fingerprint}|{alert.startsAt}|{status}"

    def _row(self, conn: Any, rule: Rule, alert: _Alert, subgroup: str, outcome: str, reason: str,
             found: dict[str, Any], chain_hash: str | None = None, base_hash: str | None = None) -> dict[str, Any]:
        now = store_now(conn)
        key = self._key(rule, alert, alert.status)
        if outcome in RETRIED:  # recorded, but the alert's next notification is decided again
            key = f"{key}|{outcome}|{int(now)}"
        return {"ts": now, "key": key, "rule": rule.name,
                "alertname": _text(alert.labels.get("alertname", "")), "subgroup": subgroup,
                "status": alert.status, "outcome": outcome, "reason": reason, "evidence": found,
                "chain_hash": chain_hash, "base_hash": base_hash, "replica": self.replica}

    def _resolved(self, rule: Rule, alert: _Alert, subgroup: str) -> dict[str, Any]:
        conn = self.db.connect()
        try:
            with conn.transaction():
                row = self._row(conn, rule, alert, subgroup, "resolved",
                                "the alert resolved; an action it caused stays until a person swaps the chain", {})
                recorded = alert_actions.record(conn, row)
        finally:
            conn.close()
        if not recorded:
            return {"outcome": "duplicate", "reason": "this notification was decided on already"}
        return {"outcome": row["outcome"], "reason": row["reason"]}

    def _firing(self, rule: Rule, alert: _Alert, subgroup: str) -> dict[str, Any]:
        decision, new = self._decide_locked(rule, alert, subgroup)
        if new is not None:  # shared (in a fleet: committed): installed here too
            self.runtime.adopt(new)
        return decision

    def _decide_locked(self, rule: Rule, alert: _Alert, subgroup: str) -> tuple[dict[str, Any], Any]:
        """The decision, and the chain it shared (None when it changed nothing). The ledger row
        is written inside the chain's lock, after the chain: a replica deciding next must find
        both. Its commit is the ledger's own (the store may be SQLite beside a file chain): a
        chain whose commit acknowledgement is lost leaves an `applied` row naming a chain that
        may not be active, which no later decision counts as in force."""
        # the fleet's chain lock: one decision at a time, each on the chain really in force
        with self.runtime.store.locked():
            self.runtime.sync()
            conn = self.db.connect()
            try:
                if alert_actions.seen(conn, self._key(rule, alert, "firing"), self._key(rule, alert, "resolved")):
                    return {"outcome": "duplicate", "reason": "this notification was decided on already"}, None
                chain = self.runtime.chain
                outcome, reason, found = self._check(conn, rule, subgroup, chain.config_hash)
                new = None
                if outcome is None:
                    try:
                        new = self.runtime.compile(rule.chain_for(subgroup) + list(chain.specs), f"auto.{rule.name}")
                    except ValueError as exc:
                        outcome, reason = "invalid", f"the chain it would make is invalid: {exc}"
                if outcome is None and self.policy.dry_run:
                    outcome, reason = "dry_run", f"would put {rule.name}'s guardrails for {subgroup} in front of " \
                                                 f"{chain.profile} (dry_run: true)"
                row = self._row(conn, rule, alert, subgroup, outcome or "applied", reason or
                                f"{rule.name}'s guardrails for {subgroup} put in front of {chain.profile}", found,
                                new.config_hash if new is not None and outcome is None else None, chain.config_hash)
                row["base_profile"] = chain.profile
                if new is not None:  # the block it puts in front, as compiled: what a rollback takes out
                    row["guardrails"] = list(new.specs[:len(new.specs) - len(chain.specs)])
                if outcome is None:  # the chain first: a ledger row never claims a chain that is not shared
                    self.runtime.share_locked(new, "alert", audit={
                        "rule": rule.name, "alert": {"alertname": row["alertname"], "subgroup": subgroup,
                                                     "fingerprint": alert.fingerprint, "startsAt": alert.startsAt},
                        "evidence": found})
                with conn.transaction():
                    alert_actions.record(conn, row)
                return ({"outcome": row["outcome"], "reason": row["reason"], "evidence": found,
                         "hash": row["chain_hash"]}, new if outcome is None else None)
            finally:
                conn.close()

    def _check(self, conn: Any, rule: Rule, subgroup: str, chain_hash: str) -> tuple[str | None, str | None, dict]:
        """(outcome, reason, evidence) of a rule that may not act now; (None, None, evidence) when it may."""
        active = alert_actions.in_force(conn, chain_hash)
        if any(a["rule"] == rule.name and a["subgroup"] == subgroup for a in active):
            return "already_active", f"{rule.name} is in force for {subgroup} already", {}
        if len(active) >= self.policy.max_active:
            return "limit_reached", f"{len(active)} automatic actions are in force (max_active {self.policy.max_active})", {}
        now = store_now(conn)
        last = alert_actions.last_applied(conn, rule.name)
        if last is not None and now - last < rule.every_seconds:
            return ("rate_limited", f"{rule.name} acted {now - last:.0f} s ago; at most once every "
                    f"{rule.every_seconds:.0f} s", {})
        gates, model = rule.gates, rule.evidence_model()
        if model is None:
            return None, None, {}
        found = evidence.gather(conn, model=model, primary=self.primary, subgroup=subgroup,
                                since=now - gates.window_seconds)
        if gates.min_accuracy is not None:
            if found["labelled"] < gates.min_labelled:
                return ("gate_failed", f"{model} has {found['labelled']} labelled answers on {subgroup}; the gate "
                        f"needs {gates.min_labelled}", found)
            if found["accuracy"] < gates.min_accuracy:
                return ("gate_failed", f"{model} is right on {found['accuracy']:.1%} of {subgroup}'s labelled "
                        f"answers; the gate needs {gates.min_accuracy:.1%}", found)
        if gates.min_agreement is not None:
            if found["compared_outside"] < gates.min_compared:
                return ("gate_failed", f"{model} shadowed {found['compared_outside']} answers outside {subgroup}; "
                        f"the gate needs {gates.min_compared}", found)
            if found["agreement_outside"] < gates.min_agreement:
                return ("gate_failed", f"{model} agrees with {found['agreement_outside']:.1%} of the answers outside "
                        f"{subgroup}; the gate needs {gates.min_agreement:.1%}", found)
        return None, None, found

    # -- the watch -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever, while automatic actions are on: the watch, every `watch_seconds`."""
        import asyncio

        from store.database import off_loop

        if not self.policy.enabled or self.db is None:
            return
        while True:
            await asyncio.sleep(self.policy.watch_seconds)
            try:
                await off_loop(self.watch_once)
            except Exception:  # the store away, say: the next round tries again
                log.warning("automatic actions' watch failed; trying again in %.0f s", self.policy.watch_seconds,
                            exc_info=True)

    def watch_once(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Roll back the oldest action in force whose subgroup fares below its rollback limits
        (and every action stacked on it), and record as abandoned the actions a person's swap
        ended. Done by one worker of the fleet per `watch_seconds` (`force`: now, tests)."""
        conn = self.db.connect()
        try:
            now = store_now(conn)
            with conn.transaction():
                if not claim(conn, "automation_watch", now, self.policy.watch_seconds) and not force:
                    return []
            self.runtime.sync()
            done = self._abandoned(conn, now)
            active = alert_actions.in_force(conn, self.runtime.chain.config_hash)
            for action in reversed(active):  # the oldest first: undoing it undoes those stacked on it
                reason, found = self._failing(conn, action)
                if reason is not None:
                    done += self._roll_back(action, reason, found)
                    break
            return done
        finally:
            conn.close()

    def _failing(self, conn: Any, action: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        rule = next((r for r in self.policy.rules if r.name == action["rule"]), None)
        model = rule.evidence_model() if rule is not None else None
        if rule is None or model is None:
            return None, {}
        limits, subgroup = rule.rollback, action["subgroup"]
        found = evidence.since_action(conn, model=model, subgroup=subgroup, since=action["ts"])
        if limits.min_accuracy is not None and found["labelled"] >= limits.min_labelled \
                and found["accuracy"] < limits.min_accuracy:
            return (f"{model} was right on {found['accuracy']:.1%} of {found['labelled']} labelled {subgroup} answers "
                    f"since the action; the limit is {limits.min_accuracy:.1%}"), found
        if limits.max_abstention is not None and found["answers"] >= limits.min_answers \
                and found["abstention"] > limits.max_abstention:
            return (f"{model} withheld {found['abstention']:.1%} of {found['answers']} {subgroup} answers since the "
                    f"action; the limit is {limits.max_abstention:.1%}"), found
        if limits.max_fallback is not None and found["requests"] >= limits.min_answers \
                and found["fallback"] > limits.max_fallback:
            return (f"the route failed on {found['fallback']:.1%} of {found['requests']} {subgroup} requests since "
                    f"the action (the primary answered); the limit is {limits.max_fallback:.1%}"), found
        return None, found

    def _roll_back(self, action: dict[str, Any], reason: str, found: dict[str, Any]) -> list[dict[str, Any]]:
        """The chain back to the one `action` was put in front of, under the chain's lock."""
        rows, new = [], None
        with self.runtime.store.locked():
            self.runtime.sync()
            conn = self.db.connect()
            try:
                active = alert_actions.in_force(conn, self.runtime.chain.config_hash)
                ids = [a["id"] for a in active]
                if action["id"] not in ids:
                    return []  # another worker did it, or a person swapped meanwhile
                undone = active[:ids.index(action["id"]) + 1]  # newest first, down to `action`
                width = sum(len(a["guardrails"] or []) for a in undone)
                chain = self.runtime.chain
                new = self.runtime.compile(list(chain.specs[width:]), action["base_profile"])
                self.runtime.share_locked(new, "rollback", audit={"rule": action["rule"], "reason": reason,
                                                                  "evidence": found, "undone": ids[:len(undone)]})
                now = store_now(conn)
                for a in undone:
                    first = a["id"] == action["id"]
                    why = reason if first else f"stacked on {action['rule']}'s action, which was rolled back"
                    rows.append({"ts": now, "key": f"{a['rule']}|rolled_back|{a['id']}", "rule": a["rule"],
                                 "alertname": a["alertname"], "subgroup": a["subgroup"], "status": "watch",
                                 "outcome": "rolled_back", "reason": why, "evidence": found if first else {},
                                 "chain_hash": new.config_hash, "base_hash": a["chain_hash"],
                                 "base_profile": chain.profile, "guardrails": None, "replica": self.replica})
                with conn.transaction():
                    for row in rows:
                        alert_actions.record(conn, row)
            finally:
                conn.close()
        self.runtime.adopt(new)
        return [self._count({k: row[k] for k in ("rule", "alertname", "subgroup", "outcome", "reason")})
                for row in rows]

    def _abandoned(self, conn: Any, now: float) -> list[dict[str, Any]]:
        """Applied actions the chain in force no longer carries, not rolled back: a person swapped."""
        active = {a["id"] for a in alert_actions.in_force(conn, self.runtime.chain.config_hash)}
        done = []
        for a in alert_actions.applied_since(conn, now - ABANDONED_LOOKBACK_SECONDS):
            ended = (f"{a['rule']}|rolled_back|{a['id']}", f"{a['rule']}|abandoned|{a['id']}")
            if a["id"] in active or alert_actions.seen(conn, *ended):
                continue
            row = {"ts": now, "key": ended[1], "rule": a["rule"], "alertname": a["alertname"],
                   "subgroup": a["subgroup"], "status": "watch", "outcome": "abandoned",
                   "reason": f"the chain in force ({self.runtime.chain.profile}) no longer carries it: a swap replaced it",
                   "evidence": {}, "chain_hash": None, "base_hash": a["chain_hash"], "base_profile": None,
                   "guardrails": None, "replica": self.replica}
            with conn.transaction():
                if alert_actions.record(conn, row):
                    done.append(self._count({k: row[k] for k in ("rule", "alertname", "subgroup", "outcome",
                                                                   "reason")}))
        return done

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        def read(conn: Any) -> list[dict[str, Any]]:
            return alert_actions.recent(conn, limit)

        return self.db.read(read)
