"""Tasks for the size-cap tests: each makes a large value itself, so that its arguments stay
small. Top-level, so that real workers import them (TASK_MODULES)."""

from __future__ import annotations

import time

from backend.tasks import current_job, task


@task("big_result")
def big_result(size: int) -> str:
    """Return a string that is ``size`` bytes as JSON (quotes included)."""
    return "x" * (size - 2)


@task("long_failure")
def long_failure(size: int) -> None:
    """Raise an error whose message is about ``size`` characters, ending in THE END."""
    raise RuntimeError("y" * size + " THE END")


@task("long_progress")
def long_progress(size: int) -> str:
    """Report progress with a ``size``-character message, then give it time to be sent."""
    current_job().progress(50, "m" * size)
    time.sleep(0.6)
    return "done"
