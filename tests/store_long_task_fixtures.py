"""Tasks of the store-side long-task tests (snooze from a 429, logs past the cap), run by real workers.

Not in conftest's TASK_MODULES: the tests that run them add this module to their API's and
workers' TASK_MODULES themselves (``tests/test_snooze.py``, ``tests/test_job_logs.py``).
"""

from __future__ import annotations

import logging

import requests

from backend.tasks import Snooze, task

log = logging.getLogger("tests.store_long_tasks")


@task("call_rate_limited")
def call_rate_limited(url: str) -> int:
    """GET ``url``; a 429 snoozes as long as its Retry-After says (the provider's own word)."""
    response = requests.get(url, timeout=10)
    if response.status_code == 429:
        raise Snooze.from_retry_after(response.headers.get("Retry-After"), reason="rate limited")
    return response.status_code


@task("log_many")
def log_many(count: int) -> int:
    """Log ``count`` INFO lines through ``logging``."""
    for number in range(count):
        log.info("line %d", number)
    return count
