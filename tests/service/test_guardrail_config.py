"""Guardrail profiles: the shipped YAML compiles, bad chains fail with messages naming the problem,
and the config hash is stable."""

import pytest
from pydantic import ValidationError

from service.guardrail_config import Profiles, compile_chain, config_hash, load_profiles

MODELS = {"classguard-baseline", "classguard-retrained"}
SUBGROUPS = {"capture=phone", "capture=scanner", "capture=other"}


def test_every_shipped_profile_compiles():
    """config/guardrails.yaml: each profile compiles against the demo's models and subgroups."""
    profiles = load_profiles()
    assert profiles.active in profiles.profiles
    for name, specs in profiles.profiles.items():
        chain = compile_chain(specs, name, models=MODELS, subgroups=SUBGROUPS)
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
    ([], "at least one guardrail"),
])
def test_invalid_chains_are_refused_with_a_reason(chain, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        compile_chain(chain, "x", models=MODELS, subgroups=SUBGROUPS)


def test_active_profile_must_exist():
    with pytest.raises(ValidationError, match="not among"):
        Profiles.model_validate({"active": "nope", "profiles": {"a": [{"type": "allow_all"}]}})


def test_hash_ignores_spelling_but_not_meaning():
    """Defaults written out or left implicit hash the same; a different floor hashes differently."""
    from service.guardrail_config import CHAIN

    short = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"]}])
    spelled = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"], "floor": 0.5}])
    other = CHAIN.validate_python([{"type": "suppress_labels", "labels": ["0"], "floor": 0.6}])
    assert config_hash(short) == config_hash(spelled) != config_hash(other)
