"""The settings parser (backend/core/settings.py): pure, no Redis, no store, no Flask."""

from __future__ import annotations

import dataclasses

import pytest

from backend.core.settings import DEFAULTS, SettingError, Settings


def test_defaults_hold_without_environment():
    # Given an empty environment, When the settings are loaded
    settings = Settings.load(environ={})
    # Then each field holds its default, typed
    assert settings == Settings()
    assert settings.rq_result_ttl == 86400 and isinstance(settings.rq_result_ttl, int)
    assert settings.retry_backoff_base == 120.0 and isinstance(settings.retry_backoff_base, float)
    assert settings.webhook_allow_loopback is False and settings.rate_limit_enabled is True
    assert settings.redis_url is None


def test_the_environment_overrides_defaults_and_is_parsed_by_type():
    environ = {
        "RQ_RESULT_TTL": "60",
        "RETRY_JITTER": "0.5",
        "WEBHOOK_ALLOW_LOOPBACK": "1",
        "RATE_LIMIT_ENABLED": "0",
        "REDIS_URL": "redis://localhost:6379/0",
        "LOG_LEVEL": "",  # empty means unset, as before
    }
    settings = Settings.load(environ=environ)
    assert settings.rq_result_ttl == 60
    assert settings.retry_jitter == 0.5
    assert settings.webhook_allow_loopback is True and settings.rate_limit_enabled is False
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RQ_RESULT_TTL", "a day", "RQ_RESULT_TTL must be an integer, got 'a day'"),
        ("RETRY_JITTER", "lots", "RETRY_JITTER must be a number, got 'lots'"),
        ("RATE_LIMIT_ENABLED", "maybe", "RATE_LIMIT_ENABLED must be a flag (1/0, true/false), got 'maybe'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting_and_the_value(name, value, message):
    with pytest.raises(SettingError) as caught:
        Settings.load(environ={name: value})
    assert str(caught.value) == message
    assert caught.value.name == name


@pytest.mark.parametrize(
    ("raw", "on"),
    [("1", True), ("2", True), ("-1", True), (" 7 ", True), ("0", False), ("00", False)]
    + [("true", True), ("Yes", True), ("on", True), ("false", False), ("NO", False), ("off", False)],
)
def test_a_flag_is_any_integer_nonzero_meaning_on_or_a_word(raw, on):
    # Given a flag spelled as the settings always took it (bool(int(x))) or as a word
    # When it is read from the environment, Then nonzero integers and the yes-words turn it on
    assert Settings.load(environ={"RATE_LIMIT_ENABLED": raw}).rate_limit_enabled is on


@pytest.mark.parametrize(("value", "on"), [(2, True), (1, True), (0, False), (True, True), (False, False)])
def test_a_flag_override_is_any_integer_or_a_bool(value, on):
    assert Settings.load({"WEBHOOK_ALLOW_LOOPBACK": value}, environ={}).webhook_allow_loopback is on


@pytest.mark.parametrize("raw", ["1.0", "maybe", "y"])
def test_a_flag_that_is_no_integer_nor_word_is_refused(raw):
    with pytest.raises(SettingError, match="RATE_LIMIT_ENABLED must be a flag"):
        Settings.load(environ={"RATE_LIMIT_ENABLED": raw})


def test_overrides_come_last_by_capital_names_and_are_parsed_too():
    settings = Settings.load(
        {"RQ_RESULT_TTL": 5, "RETRY_JITTER": 0, "WEBHOOK_ALLOW_LOOPBACK": 1}, environ={"RQ_RESULT_TTL": "60"}
    )
    assert settings.rq_result_ttl == 5
    assert settings.retry_jitter == 0.0 and isinstance(settings.retry_jitter, float)
    assert settings.webhook_allow_loopback is True
    # None clears an optional setting the environment set
    assert Settings.load({"API_KEYS": None}, environ={"API_KEYS": "alice:k1"}).api_keys is None


def test_an_override_of_no_setting_or_of_the_wrong_type_is_refused():
    with pytest.raises(SettingError, match="RQ_RESULT_TLL is not a setting"):
        Settings.load({"RQ_RESULT_TLL": 5}, environ={})
    with pytest.raises(SettingError, match=r"MAX_ARGS_BYTES must be an integer, got 1\.5"):
        Settings.load({"MAX_ARGS_BYTES": 1.5}, environ={})
    with pytest.raises(SettingError, match="DATABASE_URL must be a string, got None"):
        Settings.load({"DATABASE_URL": None}, environ={})


def test_settings_are_frozen_and_replace_makes_a_parsed_copy():
    settings = Settings.load(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rq_result_ttl = 1  # type: ignore[misc]
    changed = settings.replace(MAX_ARGS_BYTES="100")
    assert changed.max_args_bytes == 100 and settings.max_args_bytes == 64 * 1024


def test_as_config_and_defaults_name_every_setting_in_capitals():
    names = {field.name.upper() for field in dataclasses.fields(Settings)}
    assert set(Settings().as_config()) == names == set(DEFAULTS)
    assert DEFAULTS["RQ_RESULT_TTL"] == 86400
