"""Automatic actions: which alert may change the guardrail chain without a person, into what,
and on which evidence. Declared in YAML (`guardrails.automation_path`, config/automation.yaml),
validated here once at start-up, templates compiled against the loaded models like every chain.

    enabled: true
    rules:
      - name: route_phone
        alerts: [ClassguardKnownConfusionAboveReference]
        subgroups: [capture=phone]
        guardrails:
          - {type: route, target: classguard-retrained, subgroups: ["{subgroup}"]}
        gates: {min_accuracy: 0.9, min_labelled: 30, min_agreement: 0.9, min_compared: 100}

A rule's guardrails are put in front of the chain in force, with `{subgroup}` replaced by the
alert's `subgroup` label (`capture=phone`) and `{region}` by a region alert's region (`r07` of
`region=r07`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.chain_config import CHAIN, MAX_CHAIN, ChainContext, compile_chain

DEFAULT_POLICY = Path("config/automation.yaml")
RULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")  # a metric label value and part of a profile name
ALERT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # Prometheus's alert names
MAX_RULES = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gates(_Strict):
    """What must hold when the alert arrives, read from the prediction log over `window_seconds`."""

    model: str | None = Field(None, description="whose evidence: default the first route's target in `guardrails`")
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="the model's realized accuracy on the "
                                       "subgroup (its shadow or routed answers whose true labels arrived)")
    min_labelled: int = Field(30, ge=1, description="labelled answers `min_accuracy` needs; fewer: the gate fails")
    min_agreement: float | None = Field(None, ge=0.0, le=1.0, description="its shadow answers' agreement with the "
                                        "answers given outside the subgroup")
    min_compared: int = Field(100, ge=1, description="shadow answers outside the subgroup `min_agreement` needs")
    window_seconds: float = Field(3600.0, gt=0.0, le=30 * 86400.0, description="how far back the evidence reaches")


class Rollback(_Strict):
    """When an action in force is undone, read from what the subgroup got since it was applied
    (`watch_seconds` apart): each limit is checked once its count is reached."""

    min_accuracy: float | None = Field(0.85, ge=0.0, le=1.0, description="realized accuracy of the routed "
                                       "model's answers on the subgroup, once `min_labelled` true labels arrived")
    min_labelled: int = Field(30, ge=1)
    max_abstention: float | None = Field(0.5, ge=0.0, le=1.0, description="share of its answers on the subgroup "
                                         "withheld (abstained), once `min_answers`")
    max_fallback: float | None = Field(0.05, ge=0.0, le=1.0, description="share of the subgroup's requests the "
                                       "route failed on (timeout, error: the primary answered), once `min_answers`")
    min_answers: int = Field(50, ge=1)


class Rule(_Strict):
    name: str
    alerts: list[str] = Field(min_length=1, max_length=32, description="alert names (`alertname`) it acts on")
    subgroups: list[str] | None = Field(None, max_length=256, description="the alerts' `subgroup` label values it "
                                        "acts for; unset: any subgroup or region the service knows")
    guardrails: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_CHAIN, description="put in front of the "
                                             "chain in force; `{subgroup}`/`{region}` filled from the alert")
    gates: Gates = Gates()
    rollback: Rollback = Rollback()
    every_seconds: float = Field(3600.0, ge=1.0, description="at most one action of this rule per this many "
                                 "seconds (the store's clock), across the fleet")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not RULE_NAME.fullmatch(name):
            raise ValueError(f"a rule name is 1-40 of A-Z a-z 0-9 _ - (got {name!r})")
        return name

    @field_validator("alerts")
    @classmethod
    def _alerts(cls, alerts: list[str]) -> list[str]:
        for name in alerts:
            if not ALERT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an alert name")
        return alerts

    @field_validator("guardrails")
    @classmethod
    def _specs(cls, specs: list[dict]) -> list[dict]:
        CHAIN.validate_python(fill(specs, "capture=x"))  # the shape, before the names are known
        return specs

    def evidence_model(self) -> str | None:
        """The model whose evidence the gates read."""
        if self.gates.model:
            return self.gates.model
        return next((s.get("target") for s in self.guardrails if s.get("type") == "route"), None)

    def chain_for(self, subgroup: str) -> list[dict[str, Any]]:
        return fill(self.guardrails, subgroup)


class Policy(_Strict):
    enabled: bool = Field(False, description="off: POST /admin/alerts answers, decides nothing, records nothing")
    dry_run: bool = Field(False, description="decide and record what would be done; never change the chain")
    max_active: int = Field(2, ge=1, le=8, description="automatic actions in force at once (the fleet's chain)")
    watch_seconds: float = Field(30.0, ge=1.0, le=3600.0, description="how often the actions in force are checked "
                                 "against their rollback limits (by one worker of the fleet each time)")
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)

    @model_validator(mode="after")
    def _unique(self) -> "Policy":
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return self

    def check(self, context: ChainContext) -> None:
        """Compile every rule's chain for every subgroup it names (or one the service knows),
        so a rule routing to a model that is not loaded stops the start-up with the reason."""
        for rule in self.rules:
            model = rule.evidence_model()
            if (rule.gates.min_accuracy is not None or rule.gates.min_agreement is not None) and model is None:
                raise ValueError(f"rule {rule.name!r} has gates but no model to read them for: "
                                 "set gates.model or route somewhere")
            if model is not None and model not in context.models:
                raise ValueError(f"rule {rule.name!r}: model {model!r} is not loaded; loaded: {sorted(context.models)}")
            for subgroup in rule.subgroups or _samples(rule, context):
                try:
                    compile_chain(rule.chain_for(subgroup), f"auto.{rule.name}", context)
                except ValueError as exc:
                    raise ValueError(f"rule {rule.name!r} for {subgroup!r}: {exc}") from None

    def rules_for(self, alertname: str) -> list[Rule]:
        return [r for r in self.rules if alertname in r.alerts]


def _samples(rule: Rule, context: ChainContext) -> list[str]:
    """A subgroup to compile a rule without `subgroups:` for: a region where it names `{region}`."""
    if "{region}" in repr(rule.guardrails) and context.regions:
        return [f"region={sorted(context.regions)[0]}"]
    return sorted(context.subgroups)[:1]


def fill(specs: list[dict[str, Any]], subgroup: str) -> list[dict[str, Any]]:
    """The specs with `{subgroup}` (and `{region}`) replaced in every string and list of strings."""
    region = subgroup.removeprefix("region=")

    def one(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{subgroup}", subgroup).replace("{region}", region)
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return [{k: one(v) for k, v in spec.items()} for spec in specs]


def load_policy(path: Path = DEFAULT_POLICY) -> Policy:
    """The policy file; a missing file is the default policy (off)."""
    if not Path(path).exists():
        return Policy()
    return Policy.model_validate(yaml.safe_load(Path(path).read_text()) or {})
