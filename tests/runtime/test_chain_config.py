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
    ([{"type": "suppress_labels", "labels": ["0"], "floor": 2}], "less than or equal to 1"),
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
