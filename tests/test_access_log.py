"""gunicorn's access lines follow LOG_LEVEL: one per request at INFO (the default), none at WARNING."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from backend.core.logs import writes_info
from backend.dev import processes
from backend.dev.redis_server import free_port
from tests.conftest import ROOT, TASK_MODULES, TOKEN

pytestmark = pytest.mark.one_pass(reason="the server's configuration, not the store's")


def _served_log(settings, tmp_path, level: str | None) -> str:
    port = free_port()
    env = dict(
        os.environ,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="1",
        REDIS_URL=settings["REDIS_URL"],
        DATABASE_URL=settings["DATABASE_URL"],
        INTERNAL_SERVICE_TOKEN=TOKEN,
        TASK_MODULES=TASK_MODULES,
        RECONCILE_INTERVAL="0",
        WEBHOOK_INTERVAL="0",
    )
    env.pop("LOG_LEVEL", None)
    if level is not None:
        env["LOG_LEVEL"] = level
    log_path = tmp_path / f"gunicorn-{level}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_http(f"{url}/openapi.json", process=process)
        assert requests.get(f"{url}/openapi.json?probe=access-line", timeout=10).status_code == 200
    finally:
        processes.stop(process)
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
