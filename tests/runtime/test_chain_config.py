"""Guardrail profiles: the shipped YAML compiles, bad chains fail with messages naming the problem,
and the config hash is stable."""

import pytest
from pydantic import ValidationError

from runtime.chain_config import ChainContext, Profiles, compile_chain, config_hash, load_profiles

CONTEXT = ChainContext(models=frozenset({"classguard-baseline", "classguard-retrained"}),
                       subgroups=frozenset({"capture=phone", "capture=scanner", "capture=other"}),
                       labels=frozenset("0123456789"), pairs=frozenset({"6->0", "2->7", "6->4"}))


def test_every_shipped_profile_compiles():
    """config/guardrails.yaml: each profile compiles against the demo's models and subgroups."""
    profiles = load_profiles()
    assert profiles.active in profiles.profiles
    for name, specs in profiles.profiles.items():
        chain = compile_chain(specs, name, CONTEXT)
        assert chain.profile == name and len(chain.config_hash) == 16


@pytest.mark.parametrize("chain, message", [
    ([{"type": "no_such_guardrail"}], "does not match any of the expected tags"),
    ([{"type": "suppress_labels", "labels": ["0"], "floor": 2}], r"floor must be within \[0, 1\], got 2"),
    ([{"type": "suppress_labels", "labels": []}], "at least 1 item"),
    ([{"type": "route", "target": "missing-model"}], "not loaded"),
    ([{"type": "shadow", "model": "missing-model"}], "not loaded"),
    ([{"type": "route", "target": "classguard-retrained", "subgroups": ["capture=fax"]}], "unknown subgroup"),
    ([{"type": "route", "target": "classguard-retrained", "alerts": ["vibes"]}], "representation"),
    ([{"type": "abstain_below", "threshold": 0.5, "colour": "red"}], "Extra inputs"),
    ([], "at least 1 item"),
    # names that match nothing would make guardrails that silently do nothing
    ([{"type": "abstain_below", "threshold": 0.5, "per_subgroup": {"capture=Phone": 0.7}}],
     r"unknown subgroup.*'capture=Phone'.*.*valid: \['capture=other', 'capture=phone'"),
    ([{"type": "suppress_labels", "labels": ["zero"]}], r"unknown label.*'zero'.*valid: \['0', '1'"),
    ([{"type": "confusion_guard", "pairs": ["6-0"]}], r"unknown pair.*'6-0'.*valid: \['2->7', '6->0', '6->4'\]"),
    ([{"type": "route", "target": "classguard-retrained", "flags": ["lowconfidence"]}],
     r"unknown flag.*'lowconfidence'.*'known_confusion:6->0'.*'low_confidence'"),
    # bounded: a chain, and every list in it
    ([{"type": "allow_all"}] * 33, "at most 32 items"),
    ([{"type": "suppress_labels", "labels": ["0"] * 200_000}], "at most 256 items"),
])
def test_invalid_chains_are_refused_with_a_reason(chain, message):
    """Each invalid chain is refused with a message naming the problem (and the valid names)."""
    with pytest.raises((ValueError, ValidationError), match=message):
        compile_chain(chain, "x", CONTEXT)


MINIMAL = {"allow_all": {}, "suppress_labels": {"labels": ["0"]}, "abstain": {"subgroups": ["capture=phone"]},
           "abstain_below": {"threshold": 0.5}, "confusion_guard": {}, "route": {"target": "classguard-retrained"},
           "shadow": {"model": "classguard-retrained"}}


def _list_fields():
    from runtime.chain_config import GuardrailSpec
    from typing import get_args

    specs = get_args(get_args(GuardrailSpec)[0])
    for spec in specs:
        kind = get_args(spec.model_fields["type"].annotation)[0]
        for name, field in spec.model_fields.items():
            if "list[" in str(field.annotation):
                yield kind, name


@pytest.mark.parametrize("kind, field", list(_list_fields()))
def test_an_empty_list_is_refused_in_every_guardrail(kind, field):
    """Every list a guardrail takes (subgroups, regions, flags, alerts, labels, pairs) refuses
    [] with a reason: an empty condition had meant "every request" (a route of every request)."""
    compile_chain([{"type": kind, **MINIMAL[kind]}], "x", CONTEXT)  # the minimal spec itself is valid
    with pytest.raises((ValueError, ValidationError), match=f"{field} must name at least one value|at least 1 item"):
        compile_chain([{"type": kind, **MINIMAL[kind], field: []}], "x", CONTEXT)


def test_every_guardrail_type_is_checked_for_empty_lists():
    """The empty-list test above covers every guardrail type there is and the condition lists
    the issue named (a new type or list field cannot slip past it)."""
    from runtime.chain_config import BUILDERS

    assert set(MINIMAL) == set(BUILDERS)
    fields = set(_list_fields())
    assert {("route", "regions"), ("route", "subgroups"), ("route", "flags"), ("route", "alerts"),
            ("abstain", "regions"), ("shadow", "subgroups"), ("confusion_guard", "pairs")} <= fields


@pytest.mark.parametrize("name", ["\ud800", "", "a" * 65, "has space", "x/../y", "caf\u00e9"])
def test_profile_names_are_identifiers(name):
    """A profile name outside 1-64 of A-Z a-z 0-9 _ . - is refused, in a chain and in the profiles file."""
    with pytest.raises(ValueError, match="profile name"):
        compile_chain([{"type": "allow_all"}], name, CONTEXT)
    with pytest.raises(ValidationError, match="profile name"):
        Profiles.model_validate({"active": "a", "profiles": {"a": [{"type": "allow_all"}], name: [{"type": "allow_all"}]}})


def test_active_profile_must_exist():
    with pytest.raises(ValidationError, match="not among"):
        Profiles.model_validate({"active": "nope", "profiles": {"a": [{"type": "allow_all"}]}})


def test_hash_ignores_spelling_but_not_meaning():
    """Defaults written out or left implicit hash the same; a different floor hashes differently."""
    from runtime.chain_config import CHAIN

    short = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"]}])
    spelled = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"], "floor": 0.5}])
    other = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"], "floor": 0.6}])
    assert config_hash(short) == config_hash(spelled) != config_hash(other)


REGIONS = ChainContext(models=CONTEXT.models, subgroups=CONTEXT.subgroups, labels=CONTEXT.labels, pairs=CONTEXT.pairs,
                       regions=frozenset({"r00", "r01", "novel"}))


@pytest.mark.parametrize("chain, context, message", [
    ([{"type": "route", "target": "classguard-retrained", "regions": ["r00"]}], CONTEXT,
     "no regions are assigned: set monitors.regions: true"),
    ([{"type": "abstain", "regions": ["r7"]}], REGIONS, r"unknown region.*'r7'.*valid: \['novel', 'r00', 'r01'\]"),
    ([{"type": "abstain"}], REGIONS, "abstain needs subgroups or regions"),
])
def test_region_conditions_name_only_the_primarys_regions(chain, context, message):
    """A region condition compiles only against the primary's codebook, and `abstain` needs a condition."""
    with pytest.raises((ValueError, ValidationError), match=message):
        compile_chain(chain, "p", context)


def test_region_conditions_compile_into_every_guardrail_that_takes_them():
    """Route, shadow, abstain, suppress_labels and confusion_guard accept `regions`; a route on a region is
    judged after the primary answered, and the chain's hash ignores absent conditions."""
    chain = compile_chain([{"type": "route", "target": "classguard-retrained", "regions": ["r01"]},
                           {"type": "shadow", "model": "classguard-retrained", "regions": ["r00"]},
                           {"type": "abstain", "regions": ["novel"]},
                           {"type": "suppress_labels", "labels": ["0"], "regions": ["r00"]},
                           {"type": "confusion_guard", "regions": ["r01"]}], "p", REGIONS)
    assert chain.guardrails[0].after_primary and chain.guardrails[2].regions == {"novel"}
    plain = [{"type": "route", "target": "classguard-retrained"}]
    assert (compile_chain(plain, "p", REGIONS).config_hash
            == compile_chain([{**plain[0], "regions": None}], "p", REGIONS).config_hash)


def test_spec_defaults_are_the_constructors_defaults():
    """Every parameter a guardrail's spec may leave out defaults to what the guardrail's own
    constructor states (one place holds each default), for every guardrail type."""
    import inspect

    from runtime.chain_config import BUILDERS, CHAIN

    for kind, guardrail in BUILDERS.items():
        spec = CHAIN.validate_python([{"type": kind, **MINIMAL[kind]}])[0]
        assert set(spec.model_fields) - {"type"} == set(inspect.signature(guardrail).parameters), kind
        for name, parameter in inspect.signature(guardrail).parameters.items():
            if parameter.default is inspect.Parameter.empty or name in MINIMAL[kind]:
                continue
            # per_subgroup: the spec's {} is the constructor's None (the mapping is hashed as {})
            expected = {} if (kind, name) == ("abstain_below", "per_subgroup") else parameter.default
            assert getattr(spec, name) == expected, (kind, name)


@pytest.mark.parametrize("spec, message", [
    ({"type": "confusion_guard", "floor": -0.1}, r"floor must be within \[0, 1\]"),
    ({"type": "confusion_guard", "action": "shout"}, "action must be 'abstain' or 'suppress'"),
    ({"type": "abstain_below", "threshold": 1.5}, r"thresholds must be within \[0, 1\]"),
    ({"type": "abstain_below", "threshold": 0.5, "per_subgroup": {"capture=phone": -1}}, "thresholds must be"),
    ({"type": "route", "target": "classguard-retrained", "canary": 2}, r"canary must be a share within \[0, 1\]"),
    ({"type": "route", "target": "classguard-retrained", "timeout_ms": 0}, r"timeout_ms must be within \(0, 60000\]"),
    ({"type": "route", "target": "classguard-retrained", "timeout_ms": 60_001}, "timeout_ms must be within"),
    ({"type": "shadow", "model": "classguard-retrained", "share": 1.01}, r"share must be within \[0, 1\]"),
])
def test_a_profile_is_refused_with_the_constructors_message(spec, message):
    """Ranges are checked once, in the guardrail's constructor: a profile out of range is refused
    with the message a direct call gets."""
    from runtime.chain_config import BUILDERS

    with pytest.raises(ValidationError, match=message):
        compile_chain([spec], "x", CONTEXT)
    with pytest.raises(ValueError, match=message):
        BUILDERS[spec["type"]](**{k: v for k, v in spec.items() if k != "type"})
