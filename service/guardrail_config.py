"""Guardrail profiles: declared in YAML, validated here once, compiled into a Chain.

    profiles:
      route_phone:
        - {type: route, target: classguard-retrained, subgroups: [capture=phone]}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from guardrails.answers import AbstainBelow, AllowAll, ConfusionGuard, SuppressLabels
from guardrails.chain import Chain
from guardrails.routing import Route, Shadow

DEFAULT_PROFILES = Path("config/guardrails.yaml")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowAllSpec(_Spec):
    type: Literal["allow_all"]


class SuppressLabelsSpec(_Spec):
    type: Literal["suppress_labels"]
    labels: list[str] = Field(min_length=1)
    floor: float = Field(0.5, ge=0.0, le=1.0)
    subgroups: list[str] | None = None


class AbstainBelowSpec(_Spec):
    type: Literal["abstain_below"]
    threshold: float = Field(ge=0.0, le=1.0)
    per_subgroup: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)


class ConfusionGuardSpec(_Spec):
    type: Literal["confusion_guard"]
    action: Literal["abstain", "suppress"] = "abstain"
    floor: float = Field(0.5, ge=0.0, le=1.0)
    pairs: list[str] | None = None
    subgroups: list[str] | None = None


class RouteSpec(_Spec):
    type: Literal["route"]
    target: str
    subgroups: list[str] | None = None
    flags: list[str] | None = None
    alerts: list[Literal["representation", "class_drift", "confidence", "known_confusion"]] | None = None
    canary: float | None = Field(None, ge=0.0, le=1.0)
    timeout_ms: float = Field(1000.0, gt=0.0, le=60_000.0)


class ShadowSpec(_Spec):
    type: Literal["shadow"]
    model: str
    share: float = Field(1.0, ge=0.0, le=1.0)
    subgroups: list[str] | None = None


GuardrailSpec = Annotated[Union[AllowAllSpec, SuppressLabelsSpec, AbstainBelowSpec, ConfusionGuardSpec, RouteSpec,
                                ShadowSpec], Field(discriminator="type")]
CHAIN = TypeAdapter(list[GuardrailSpec])
BUILDERS = {"allow_all": AllowAll, "suppress_labels": SuppressLabels, "abstain_below": AbstainBelow,
            "confusion_guard": ConfusionGuard, "route": Route, "shadow": Shadow}


class Profiles(_Spec):
    active: str
    profiles: dict[str, list[GuardrailSpec]]

    @model_validator(mode="after")
    def _active_exists(self) -> "Profiles":
        if self.active not in self.profiles:
            raise ValueError(f"active profile {self.active!r} is not among {sorted(self.profiles)}")
        return self

    def chain(self, name: str) -> list:
        """The named profile's guardrail specs; an unknown name is a ValueError naming the known ones."""
        if name not in self.profiles:
            raise ValueError(f"unknown profile {name!r}; profiles: {sorted(self.profiles)}")
        return self.profiles[name]


def load_profiles(path: Path = DEFAULT_PROFILES) -> Profiles:
    return Profiles.model_validate(yaml.safe_load(path.read_text()))


def config_hash(specs: list) -> str:
    """Hash of the chain's normalised JSON: equal chains, equal hash, whatever the YAML looked like."""
    data = CHAIN.dump_python(specs, mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def compile_chain(specs: list, profile: str, *, models: set[str], subgroups: set[str]) -> Chain:
    """Build a Chain; unknown models or subgroups are configuration errors, not 500s later."""
    specs = CHAIN.validate_python(specs)
    if not specs:
        raise ValueError("a chain needs at least one guardrail (use allow_all for none)")
    for spec in specs:
        named = [m for m in (getattr(spec, "target", None), getattr(spec, "model", None)) if m]
        missing = [m for m in named if m not in models]
        if missing:
            raise ValueError(f"{spec.type} names model {missing[0]!r}, which is not loaded; loaded: {sorted(models)}")
        unknown = sorted(set(getattr(spec, "subgroups", None) or []) - subgroups)
        if unknown:
            raise ValueError(f"{spec.type} names unknown subgroup(s) {unknown}; known: {sorted(subgroups)}")
    guardrails = [BUILDERS[s.type](**s.model_dump(exclude={"type"}, exclude_none=True)) for s in specs]
    return Chain(guardrails, profile=profile, config_hash=config_hash(specs))
