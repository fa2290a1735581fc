"""The job context: how a running task learns its job id and reports progress."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


class JobCancelled(Exception):
    """Raised in a task, at its next progress report, once its job was cancelled or replaced.

    This is how a ``--simple`` worker, which cannot kill a running task, still stops it.
    """


@dataclass
class JobContext:
    """The job a task is running for. Outside a worker, ``job_id`` is None and progress is dropped."""

    job_id: str | None = None
    attempt: int = 0
    _report: Callable[[int, str | None], bool] | None = field(default=None, repr=False)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report how far the task is (0-100) with an optional message.

        A message longer than ``MAX_PROGRESS_MESSAGE`` characters is shortened before it is
        reported (its beginning is kept).

        Raises:
            TypeError: ``percent`` is not a number, or ``message`` not a string.
            ValueError: ``percent`` is outside 0-100.
            JobCancelled: the job was cancelled (or this attempt replaced): the task should stop.
        """
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise TypeError(f"progress must be a number, got {percent!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"the progress message must be a string, got {message!r}")
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be within 0-100, got {percent!r}")
        if self._report is not None and self._report(int(percent), message) is False:
            raise JobCancelled(f"job {self.job_id} attempt {self.attempt} was cancelled or replaced")


_current: ContextVar[JobContext | None] = ContextVar("current_job", default=None)


def current_job() -> JobContext:
    """The job the calling task runs for (a detached context when called outside a worker)."""
    return _current.get() or JobContext()


def activate(context: JobContext | None):
    """Make ``context`` the current job; returns the token to reset it with."""
    return _current.set(context)


def deactivate(token) -> None:
    _current.reset(token)
