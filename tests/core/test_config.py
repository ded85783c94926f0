"""Configuration is validated once, with clear errors, and environment variables override YAML."""

import pytest
from pydantic import ValidationError

from core.config import Settings


def test_shipped_yaml_loads(monkeypatch):
    """config/classguard.yaml is valid and declares the demo's capture attribute."""
    monkeypatch.delenv("CLASSGUARD_CONFIG", raising=False)
    settings = Settings()
    assert settings.subgroups.attributes["capture"].values == ["scanner", "phone"]
    assert settings.models.tags() == ["classguard-baseline:latest", "classguard-retrained:latest"]


def test_environment_overrides_yaml(monkeypatch):
    """CLASSGUARD_<SECTION>__<KEY> wins over the YAML file."""
    monkeypatch.setenv("CLASSGUARD_LIMITS__MAX_UPLOAD_BYTES", "5000")
    monkeypatch.setenv("CLASSGUARD_MODELS__OTHERS", "[]")
    settings = Settings()
    assert settings.limits.max_upload_bytes == 5000
    assert settings.models.tags() == ["classguard-baseline:latest"]


@pytest.mark.parametrize("bad, message", [
    ({"limits": {"max_upload_bytes": 10}}, "greater than or equal"),
    ({"device": "tpu"}, "auto"),
    ({"subgroups": {"attributes": {"capture": {"values": ["other"]}}}}, "not be 'other'"),
    ({"subgroups": {"attributes": {"Bad-Name": {"values": ["a"]}}}}, "attribute names"),
    ({"subgroups": {"attributes": {f"a{i}": {"values": ["x", "y", "z"]} for i in range(4)}}}, "label budget"),
    ({"unknown_key": 1}, "Extra inputs"),
])
def test_invalid_settings_are_refused(bad, message):
    """Each invalid setting fails at start-up with a message that names the problem."""
    with pytest.raises(ValidationError, match=message):
        Settings(**bad)


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    """Pointing CLASSGUARD_CONFIG at a missing file fails instead of silently using defaults."""
    monkeypatch.setenv("CLASSGUARD_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


@pytest.mark.parametrize("field", ["admin_token", "feedback_token"])
@pytest.mark.parametrize("token", ["", "   ", "short-token", "has a space in it here", " padded-token-0123456 "])
def test_weak_tokens_are_refused_at_start_up(field, token):
    """An empty, blank, short or whitespace-holding token stops start-up with the reason: it would open a route."""
    with pytest.raises(ValidationError, match=f"CLASSGUARD_{field.upper()} must be at least 16 characters"):
        Settings(**{field: token})


def test_an_empty_bearer_never_matches():
    """`Authorization: Bearer` with nothing after it is refused even against a token that is set."""
    from pydantic import SecretStr
    from starlette.requests import Request

    from core.errors import InputError
    from service.http_input import require_bearer

    request = Request({"type": "http", "headers": [(b"authorization", b"Bearer ")]})
    with pytest.raises(InputError, match="Bearer"):
        require_bearer(request, SecretStr("a-strong-token-0123456789"), off_reason="admin_disabled", variable="X")


@pytest.mark.parametrize("url, message", [
    ("postgresql+psycopg://cg:hunter2-secret@db/classguard", "must be a postgresql:// URL"),
    ("postgresql://cg:hunter2%zz-secret@db/classguard", "not a valid PostgreSQL URL"),
])
def test_a_refused_database_url_is_never_echoed(monkeypatch, url, message):
    """A wrong fleet.database_url stops start-up with the reason, and neither the message nor the
    error's text repeats the URL (its password would land in a log); refused tokens neither."""
    monkeypatch.setenv("CLASSGUARD_FLEET__DATABASE_URL", url)
    with pytest.raises(ValidationError, match=message) as refused:
        Settings()
    assert "hunter2" not in str(refused.value)
    monkeypatch.delenv("CLASSGUARD_FLEET__DATABASE_URL")
    with pytest.raises(ValidationError) as weak:
        Settings(admin_token="hunter2 weak")
    assert "hunter2" not in str(weak.value)


def test_fleet_mode_is_one_setting(monkeypatch):
    """CLASSGUARD_FLEET__DATABASE_URL alone switches fleet mode on; unset, one host (SQLite)."""
    assert not Settings().fleet.enabled
    monkeypatch.setenv("CLASSGUARD_FLEET__DATABASE_URL", "postgresql://cg:pw@db.internal:5432/classguard")
    settings = Settings()
    assert settings.fleet.enabled and "pw" not in repr(settings.fleet)


# Stated although equal to the code's default, each for a reason
STATED_DEFAULTS = {
    ("models", "primary"): "the file names the models this deployment serves",
    ("models", "others"): "the file names the models this deployment serves",
    ("monitors", "regions"): "the file says the incident's embedding regions are watched",
}


def _stated_keys(data: dict, path: tuple = ()):
    """(section, key) paths of the YAML, down to a Settings field (a dict-typed field such as
    subgroups.attributes is one key)."""
    for name, value in data.items():
        if isinstance(value, dict) and (*path, name) in _SECTIONS:
            yield from _stated_keys(value, (*path, name))
        else:
            yield (*path, name)


_SECTIONS = {(name,) for name, field in Settings.model_fields.items() if hasattr(field.annotation, "model_fields")}


def _at(settings, path: tuple):
    from pydantic_core import to_jsonable_python

    for name in path:
        settings = getattr(settings, name)
    return to_jsonable_python(settings)


def _defaults(monkeypatch, tmp_path) -> Settings:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("CLASSGUARD_CONFIG", str(empty))
    return Settings()


def test_shipped_yaml_states_no_default(monkeypatch, tmp_path):
    """config/classguard.yaml sets only values that differ from the code's defaults (or are
    on the named list above): a default is stated once, in core/config.py."""
    import yaml

    from core.config import DEFAULT_CONFIG

    monkeypatch.delenv("CLASSGUARD_CONFIG", raising=False)
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    shipped, defaults = Settings(), _defaults(monkeypatch, tmp_path)
    repeated = [".".join(p) for p in _stated_keys(data) if p not in STATED_DEFAULTS
                and _at(shipped, p) == _at(defaults, p)]
    assert not repeated, f"config/classguard.yaml repeats the code's default for {repeated}"
    assert set(STATED_DEFAULTS) <= set(_stated_keys(data)), "an allow-listed key is no longer stated"


def test_shipped_yaml_gives_the_recorded_settings(monkeypatch):
    """Loading config/classguard.yaml gives the effective settings recorded in
    shipped_settings.json (taken when the file still stated every default): trimming it changed
    nothing, and a changed code default shows up here."""
    import json
    from pathlib import Path

    monkeypatch.delenv("CLASSGUARD_CONFIG", raising=False)
    expected = json.loads((Path(__file__).parent / "shipped_settings.json").read_text())
    assert Settings().model_dump(mode="json") == expected


def test_every_setting_is_described():
    """Every setting (sections aside), and every field of a map's or list's entries, has a
    description: they are the docs' configuration reference."""
    import typing

    def undescribed(model, prefix=""):
        for name, field in model.model_fields.items():
            if hasattr(field.annotation, "model_fields"):
                yield from undescribed(field.annotation, f"{prefix}{name}.")
                continue
            if not field.description:
                yield prefix + name
            for item in typing.get_args(field.annotation)[-1:]:
                if hasattr(item, "model_fields"):  # dict[str, Model] or list[Model]
                    yield from undescribed(item, f"{prefix}{name}[].")

    assert not list(undescribed(Settings))
