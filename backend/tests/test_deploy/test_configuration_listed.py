"""Every setting the app reads is documented in .env.example, template.json and the README."""

from __future__ import annotations

from app.core.config import Settings, load_settings
from tests.test_deploy.artifacts import (
    NOT_APP_SETTINGS,
    env_example_entries,
    readme_configuration_names,
    setting_names,
)


def test_settings_read_their_own_names() -> None:
    # Variables are matched by field name; an alias would make the lists below lie.
    for name, field in Settings.model_fields.items():
        assert field.alias is None, name
        assert field.validation_alias is None, name
    assert Settings.model_config.get("env_prefix", "") == ""


def test_env_example_lists_every_setting_and_nothing_unread() -> None:
    listed = set(env_example_entries())
    assert setting_names() - listed == set(), "settings missing from .env.example"
    assert listed - setting_names() <= set(NOT_APP_SETTINGS), "listed but never read"


def test_env_example_values_load() -> None:
    active = {
        name: value
        for name, value in env_example_entries().items()
        if value is not None and name in setting_names()
    }
    active["APP_RUNTIME_PASSWORD"] = active["APP_RUNTIME_PASSWORD"] or "filled-in-by-the-user"
    settings = load_settings(**active)
    assert settings.ENVIRONMENT.value == "development"


def test_readme_configuration_table_lists_every_setting_and_nothing_else() -> None:
    assert readme_configuration_names() == setting_names()


def test_outside_readers_really_read_their_variables() -> None:
    for name, reader in NOT_APP_SETTINGS.items():
        assert name not in setting_names(), f"{name} is a setting now: drop it from the allowlist"
        assert reader.reason
        assert name in reader.read_in.read_text(), f"{reader.read_in} does not mention {name}"
