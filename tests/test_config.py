from __future__ import annotations

import pytest

from backend.config import load, parse_api_keys


def test_api_keys_parse_names_keys_and_admins():
    assert parse_api_keys("alice:k1, ops:k2:admin") == {"k1": ("alice", False), "k2": ("ops", True)}
    assert parse_api_keys(None) == {}


@pytest.mark.parametrize("spec", ["alice", "alice:k1:root", ":k1"])
def test_bad_api_keys_are_refused(spec):
    with pytest.raises(ValueError):
        parse_api_keys(spec)


def test_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("RQ_RESULT_TTL", "60")
    assert load()["RQ_RESULT_TTL"] == 60
    assert load({"RQ_RESULT_TTL": 5})["RQ_RESULT_TTL"] == 5
