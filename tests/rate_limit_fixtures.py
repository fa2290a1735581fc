"""A task with a rate limit short enough for make test (seconds, not minutes): loaded by the
rate-limit window tests (tests/test_rate_limit_windows.py) into the app and its workers."""

from __future__ import annotations

from backend.tasks import task


@task("limited_add", rate_limit="5/2s", rate_key="provider")
def limited_add(a: int, b: int, provider: str = "upstream") -> int:
    """Add two numbers, at most 5 starts in any 2 seconds per ``provider``."""
    return a + b
