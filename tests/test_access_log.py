"""gunicorn's access lines follow LOG_LEVEL: one per request at INFO (the default), none at WARNING."""

from __future__ import annotations

import pytest
import requests

from backend.core.logs import writes_info
from tests.gunicorn_api import served_api

pytestmark = pytest.mark.one_pass(reason="the server's configuration, not the store's")


def _served_log(settings, tmp_path, level: str | None) -> str:
    """gunicorn's output while it served one request, started at LOG_LEVEL ``level`` (None: unset)."""
    log_path = tmp_path / f"gunicorn-{level}.log"
    with served_api(settings, log_path, GUNICORN_WORKERS="1", LOG_LEVEL=level) as url:
        assert requests.get(f"{url}/openapi.json?probe=access-line", timeout=10).status_code == 200
    return log_path.read_text(errors="replace")


@pytest.mark.parametrize("level", [None, "INFO", "debug"])
def test_an_api_logging_info_writes_an_access_line_per_request(settings, tmp_path, level):
    assert '"GET /openapi.json?probe=access-line HTTP/1.1" 200' in _served_log(settings, tmp_path, level)


@pytest.mark.parametrize("level", ["WARNING", "error"])
def test_an_api_logging_warnings_only_writes_no_access_line(settings, tmp_path, level):
    assert "probe=access-line" not in _served_log(settings, tmp_path, level)


def test_which_levels_write_info():
    assert [writes_info(x) for x in ("INFO", "info", "DEBUG", "20", "10", "", "nonsense")] == [True] * 7
    assert [writes_info(x) for x in ("WARNING", "warn", "ERROR", "CRITICAL", "30")] == [False] * 5
