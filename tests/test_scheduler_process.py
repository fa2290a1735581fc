"""The scheduler process (``python backend/scheduler.py``) as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import ROOT, TASK_MODULES


def test_a_scheduler_stopped_while_it_is_still_starting_exits_cleanly(settings):
    # Given a scheduler process that is still starting (importing, migrating the store, connecting)
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "SCHEDULER_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
    }
    process = subprocess.Popen(
        [sys.executable, "backend/scheduler.py"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.3)

    # When it is told to stop (a rolling update, `docker stop`, Ctrl+C)
    process.terminate()

    # Then it stops cleanly, as it does once running: exit 0, not killed by the signal
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
