"""The API under gunicorn with the shipped configuration (backend/gunicorn_conf.py), for the tests
that need the real server: its processes, its threads, its limits, its log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.dev import processes
from backend.dev.redis_server import free_port
from tests.conftest import ROOT, TASK_MODULES, TOKEN


@contextmanager
def served_api(
    settings: dict,
    log_path: Path,
    *,
    config: str = "backend/gunicorn_conf.py",
    bind: str = "GUNICORN_BIND",
    **overrides: str | None,
) -> Iterator[str]:
    """Serve the app on the test's Redis and store on a free port; yield its URL, stop it after.

    ``config`` is the shipped gunicorn configuration to serve it with (the API's, or the streams
    process's ``backend/gunicorn_streams.py``), which reads its address from the variable ``bind``.
    The reconciler and webhook threads are off, rate limits off and ``LOG_LEVEL`` WARNING unless
    ``overrides`` say otherwise (a None value unsets a variable); gunicorn's output goes to
    ``log_path``. ``GUNICORN_WORKERS`` and ``GUNICORN_THREADS`` are the shipped ones (2 x 4) unless
    given."""
    port = free_port()
    env = dict(
        os.environ,
        **{bind: f"127.0.0.1:{port}"},
        REDIS_URL=settings["REDIS_URL"],
        DATABASE_URL=settings["DATABASE_URL"],
        INTERNAL_SERVICE_TOKEN=TOKEN,
        TASK_MODULES=TASK_MODULES,
        RECONCILE_INTERVAL="0",
        WEBHOOK_INTERVAL="0",
        RATE_LIMIT_ENABLED="0",
        LOG_LEVEL="WARNING",
    )
    for name in ("API_KEYS", "GUNICORN_WORKERS", "GUNICORN_THREADS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", config, "backend.app:create_app()"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_http(f"{url}/openapi.json", process=process)
        yield url
    finally:
        processes.stop(process)
