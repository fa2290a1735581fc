"""Tasks for the limiter's review tests (tests/test_key_limits_review.py), loaded through TASK_MODULES."""

from __future__ import annotations

from backend.tasks import task


@task("klr_budget", rate_limit="2/20s")
def klr_budget(n: int = 0) -> int:
    """A task whose key is its own name: at most 2 starts in any 20 s."""
    return n


@task("klr_burst", rate_limit="10/1s", rate_key="provider")
def klr_burst(provider: object = "upstream") -> str:
    """A task whose key a tenant chooses (its provider argument)."""
    return str(provider)


@task("klr_later")
def klr_later(provider: object = "upstream") -> str:
    """A task without a rate limit yet (a later deploy declares one on ``provider``)."""
    return str(provider)
