"""Guardrail profiles: declared in YAML, validated here once, compiled into a Chain.

    profiles:
      route_phone:
        - {type: route, target: classguard-retrained, subgroups: [capture=phone]}
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from core.keys import LOW_CONFIDENCE_FLAG, confusion_flag
from guardrails.answers import Abstain, AbstainBelow, AllowAll, ConfusionGuard, SuppressLabels
from guardrails.chain import Chain
from guardrails.routing import Route, Shadow

DEFAULT_PROFILES = Path("config/guardrails.yaml")
# Profile names are identifiers: they become a metric label and an audit-log field. A name
# holding a lone surrogate had been applied, and then every /metrics scrape answered 500.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CHAIN = 32    # guardrails in one chain
MAX_NAMES = 256   # names in one list of a guardrail (labels, subgroups, regions, pairs, flags)


def check_profile_name(name: object) -> str:
    if not isinstance(name, str) or not PROFILE_NAME.fullmatch(name):
        raise ValueError(f"a profile name is 1-64 of A-Z a-z 0-9 _ . - (got {_shown(name)})")
    return name


def _shown(value: object) -> str:
    """A client-sent value, safe to echo in an error: ASCII and short."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class ChainContext:
    """What a chain may name: the loaded models, the subgroup keys the resolver produces, the
    class names of the loaded models, the configured known-confusion pairs and the regions of
    the primary's codebook (none when regions are off or the primary has no codebook)."""

    models: frozenset[str]
    subgroups: frozenset[str]
    labels: frozenset[str]
    pairs: frozenset[str]
    regions: frozenset[str] = frozenset()

    @property
    def flags(self) -> frozenset[str]:
        return frozenset({LOW_CONFIDENCE_FLAG, *map(confusion_flag, self.pairs)})


def default_of(guardrail: type, parameter: str):
    """A guardrail parameter's default, as its constructor states it: the spec below repeats
    no default of its own."""
    return inspect.signature(guardrail).parameters[parameter].default


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    guardrail: ClassVar[type]

    @model_validator(mode="after")
    def _valid(self) -> "_Spec":
        # `subgroups: []` had been read as "no condition" and routed every request: a list that
        # names nothing is refused, and a field left out is the way to say "every request"
        empty = [name for name, value in self if isinstance(value, list) and not value]
        if empty:
            raise ValueError(f"{self.type}: {', '.join(empty)} must name at least one value; leave "
                             f"{'them' if len(empty) > 1 else 'it'} out to not restrict by {'them' if len(empty) > 1 else 'it'}")
        # Ranges and conditions are checked once, by the constructor: building the guardrail
        # is the check, so a profile and a direct call are refused with the same message
        self.build()
        return self

    def build(self):
        return self.guardrail(**self.model_dump(exclude={"type"}, exclude_none=True))


class AllowAllSpec(_Spec):
    guardrail = AllowAll
    type: Literal["allow_all"]


class SuppressLabelsSpec(_Spec):
    guardrail = SuppressLabels
    type: Literal["suppress_labels"]
    labels: list[str] = Field(min_length=1, max_length=MAX_NAMES)
    floor: float = default_of(SuppressLabels, "floor")
    subgroups: list[str] | None = Field(default_of(SuppressLabels, "subgroups"), max_length=MAX_NAMES)
    regions: list[str] | None = Field(default_of(SuppressLabels, "regions"), max_length=MAX_NAMES)


class AbstainSpec(_Spec):
    guardrail = Abstain
    type: Literal["abstain"]
    subgroups: list[str] | None = Field(default_of(Abstain, "subgroups"), max_length=MAX_NAMES)
    regions: list[str] | None = Field(default_of(Abstain, "regions"), max_length=MAX_NAMES)


class AbstainBelowSpec(_Spec):
    guardrail = AbstainBelow
    type: Literal["abstain_below"]
    threshold: float
    # {} rather than the constructor's None: the empty mapping is part of hashed, audited chains
    per_subgroup: dict[str, float] = Field(default_factory=dict, max_length=MAX_NAMES)


class ConfusionGuardSpec(_Spec):
    guardrail = ConfusionGuard
    type: Literal["confusion_guard"]
    action: str = default_of(ConfusionGuard, "action")
    floor: float = default_of(ConfusionGuard, "floor")
    pairs: list[str] | None = Field(default_of(ConfusionGuard, "pairs"), max_length=MAX_NAMES)
    subgroups: list[str] | None = Field(default_of(ConfusionGuard, "subgroups"), max_length=MAX_NAMES)
    regions: list[str] | None = Field(default_of(ConfusionGuard, "regions"), max_length=MAX_NAMES)


class RouteSpec(_Spec):
    guardrail = Route
    type: Literal["route"]
    target: str
    subgroups: list[str] | None = Field(default_of(Route, "subgroups"), max_length=MAX_NAMES)
    regions: list[str] | None = Field(default_of(Route, "regions"), max_length=MAX_NAMES)
    flags: list[str] | None = Field(default_of(Route, "flags"), max_length=MAX_NAMES)
    alerts: list[Literal["representation", "class_drift", "confidence", "known_confusion"]] | None = \
        default_of(Route, "alerts")
    canary: float | None = default_of(Route, "canary")
    timeout_ms: float = default_of(Route, "timeout_ms")


class ShadowSpec(_Spec):
    guardrail = Shadow
    type: Literal["shadow"]
    model: str
    share: float = default_of(Shadow, "share")
    subgroups: list[str] | None = Field(default_of(Shadow, "subgroups"), max_length=MAX_NAMES)
    regions: list[str] | None = Field(default_of(Shadow, "regions"), max_length=MAX_NAMES)


GuardrailSpec = Annotated[Union[AllowAllSpec, SuppressLabelsSpec, AbstainSpec, AbstainBelowSpec, ConfusionGuardSpec,
                                RouteSpec, ShadowSpec], Field(discriminator="type")]
# type name -> guardrail class, read off the specs
BUILDERS = {spec.model_fields["type"].annotation.__args__[0]: spec.guardrail
            for spec in (AllowAllSpec, SuppressLabelsSpec, AbstainSpec, AbstainBelowSpec, ConfusionGuardSpec,
                         RouteSpec, ShadowSpec)}
CHAIN = TypeAdapter(Annotated[list[GuardrailSpec], Field(min_length=1, max_length=MAX_CHAIN)])


class Profiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    active: str
    profiles: dict[str, list[GuardrailSpec]]

    @field_validator("profiles")
    @classmethod
    def _names(cls, profiles: dict) -> dict:
        for name in profiles:
            check_profile_name(name)
        return profiles

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
    return _hash(CHAIN.dump_python(specs, mode="json", exclude_none=True))


def _hash(data: list) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def compile_chain(specs: list, profile: str, context: ChainContext) -> Chain:
    """Build a Chain. Every name it uses must exist (a model, a subgroup, a class, a pair, a
    flag): a name that matches nothing would make a guardrail that silently does nothing."""
    check_profile_name(profile)
    specs = CHAIN.validate_python(specs)
    for spec in specs:
        _check_names(spec, context)
    guardrails = [spec.build() for spec in specs]
    data = CHAIN.dump_python(specs, mode="json", exclude_none=True)
    return Chain(guardrails, profile=profile, config_hash=_hash(data), specs=data)


def _check_names(spec, context: ChainContext) -> None:
    named = {
        "model": [m for m in (getattr(spec, "target", None), getattr(spec, "model", None)) if m],
        "subgroup": [*(getattr(spec, "subgroups", None) or []), *getattr(spec, "per_subgroup", {})],
        "region": getattr(spec, "regions", None) or [],
        "label": getattr(spec, "labels", None) or [],
        "pair": getattr(spec, "pairs", None) or [],
        "flag": getattr(spec, "flags", None) or [],
    }
    known = {"model": context.models, "subgroup": context.subgroups, "region": context.regions,
             "label": context.labels, "pair": context.pairs, "flag": context.flags}
    for kind, names in named.items():
        unknown = sorted({_shown(n) for n in names if n not in known[kind]})
        if unknown and kind == "region" and not context.regions:
            raise ValueError(f"{spec.type} names region(s) {', '.join(unknown[:10])}, but no regions are assigned: "
                             "set monitors.regions: true, with a primary model whose profile has a codebook")
        if unknown:
            what = "model(s) that are not loaded" if kind == "model" else f"unknown {kind}(s)"
            raise ValueError(f"{spec.type} names {what}: {', '.join(unknown[:10])}; valid: {sorted(known[kind])}")
