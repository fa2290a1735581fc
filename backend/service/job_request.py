"""JobRequest: what a client asked for, validated, before it is recorded as a job.

Its own module because both the submission commands and the idempotency check (which
compares a new request with the one a job was recorded from) read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backend.core.interruptions import DEFAULT_MAX_INTERRUPTIONS
from backend.core.long_tasks import DEFAULT_MAX_SNOOZES
from backend.tasks import TaskSpec


@dataclass(frozen=True)
class JobRequest:
    """What a client asked for, already validated (see backend.api.payloads)."""

    task: TaskSpec
    args: list
    kwargs: dict
    priority: str
    timeout: int
    max_retries: int
    max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS
    max_snoozes: int = DEFAULT_MAX_SNOOZES
    webhook_url: str | None = None
    idempotency_key: str | None = None
    depends_on: tuple[str, ...] = ()
    allow_failure: bool = False
    run_at: datetime | None = None
