"""The job context: how a running task learns its job id, reports progress, emits output, logs,
saves checkpoints and snoozes.

The worker runtime (``backend/runner``) gives each run a ``JobContext`` wired to the API and to
Redis; outside a worker (a task called as a plain function, a test) the same calls are checked
and then dropped, and ``checkpoint_state`` is None, so a task runs the same either way.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from backend.core.long_tasks import LOG_LEVELS, MAX_CHECKPOINT_BYTES, MAX_OUTPUT_BYTES, MAX_SNOOZE_SECONDS
from backend.core.size_caps import describe, text_size


class JobCancelled(Exception):
    """Raised in a task, at its next progress report or checkpoint, once its job was cancelled or
    this attempt replaced.

    This is how a ``--simple`` worker, which cannot kill a running task, still stops it.
    """


class CheckpointUnavailable(RuntimeError):
    """The API did not answer a checkpoint's save or read in time: the attempt fails (and is
    retried like any failure) rather than going on from a state it could not read or save."""


class Snooze(Exception):  # noqa: N818 (a request to the worker, not an error)
    """Raise to run the job again after ``seconds``, without counting a failure.

    ``retry_count`` stays as it is; the attempt's history shows the snooze and its reason. A job
    that snoozes more than its ``max_snoozes`` times ends FAILED.
    """

    #: The shortest snooze ``from_retry_after`` asks for (a Retry-After of 0 or a past date).
    MIN_RETRY_AFTER = 1.0

    def __init__(self, seconds: float, reason: str = ""):
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"Snooze seconds must be a number, got {seconds!r}")
        if not isinstance(reason, str):
            raise TypeError(f"the snooze reason must be a string, got {reason!r}")
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_SNOOZE_SECONDS):
            raise ValueError(f"Snooze seconds must be above 0 and at most {MAX_SNOOZE_SECONDS}, got {seconds!r}")
        super().__init__(seconds, reason)
        self.seconds = float(seconds)
        self.reason = reason

    def __str__(self) -> str:
        return f"snooze {self.seconds:g} s" + (f": {self.reason}" if self.reason else "")

    @classmethod
    def from_retry_after(cls, value: str | float | None, reason: str = "rate limited", default: float = 60.0) -> Snooze:
        """A snooze as long as an HTTP ``Retry-After`` says: delay-seconds or an HTTP date.

        A missing or unreadable value snoozes ``default`` seconds; a value of 0 or a date already
        past snoozes MIN_RETRY_AFTER seconds; a longer one is cut to MAX_SNOOZE_SECONDS.
        """
        seconds = _retry_after_seconds(value)
        if seconds is None:
            seconds = default
        return cls(min(max(seconds, cls.MIN_RETRY_AFTER), MAX_SNOOZE_SECONDS), reason)


def _retry_after_seconds(value: str | float | None) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    if text.isdigit():  # RFC 9110: delay-seconds = 1*DIGIT
        return float(text[:12])
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


class TaskIO(Protocol):
    """What the worker runtime gives a context (``backend/runner/task_io.py``)."""

    def emit(self, data_json: str) -> None: ...
    def log(self, level: str, message: str, at: float) -> None: ...
    def load_checkpoint(self) -> object: ...
    def save_checkpoint(self, state: object) -> None: ...


_UNREAD = object()


@dataclass
class JobContext:
    """The job a task is running for. Outside a worker, ``job_id`` is None and what it reports
    is checked, then dropped."""

    job_id: str | None = None
    attempt: int = 0
    _report: Callable[[int, str | None], bool] | None = field(default=None, repr=False)
    _io: TaskIO | None = field(default=None, repr=False)
    _checkpoint_state: object = field(default=_UNREAD, repr=False)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report how far the task is (0-100) with an optional message.

        A message longer than ``MAX_PROGRESS_MESSAGE`` characters is shortened before it is
        reported (its beginning is kept). Open event streams of the job get a ``progress`` event.

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

    def emit(self, data: object) -> None:
        """Send ``data`` (JSON) to every open event stream of the job as an ``output`` event.

        Best effort (partial results, an LLM's tokens): not stored beyond the stream's bounded
        history, and lost while Redis is unreachable.

        Raises:
            TypeError, ValueError: ``data`` is not JSON (NaN included).
            ValueError: it is over MAX_OUTPUT_BYTES as compact JSON.
        """
        text = _compact_json(data, "the emitted data")
        _check_size(text, "the emitted data", "MAX_OUTPUT_BYTES", MAX_OUTPUT_BYTES)
        if self._io is not None:
            self._io.emit(text)

    def log(self, message: str, level: str = "INFO") -> None:
        """Add one line to the job's log (as a ``logging`` record of the task would be).

        Lines below the task's ``log_level`` are left out; a line over MAX_LOG_LINE_BYTES keeps
        its beginning.

        Raises:
            TypeError: ``message`` is not a string.
            ValueError: ``level`` is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL.
        """
        if not isinstance(message, str):
            raise TypeError(f"a log message must be a string, got {message!r}")
        name = level.upper() if isinstance(level, str) else level
        if name not in LOG_LEVELS:
            raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        if self._io is not None:
            self._io.log(name, message, time.time())

    def checkpoint(self, state: object) -> None:
        """Save ``state`` (JSON) in the store, synchronously: the next attempt of this job (after a
        crash, a kill, a timeout or a retry) finds it in ``checkpoint_state``.

        Raises:
            TypeError, ValueError: ``state`` is not JSON, or over MAX_CHECKPOINT_BYTES.
            JobCancelled: the job was cancelled or ended, or this attempt replaced.
            CheckpointUnavailable: the API did not answer in time.
        """
        _check_size(_compact_json(state, "the checkpoint state"), "the checkpoint state", "MAX_CHECKPOINT_BYTES",
                    MAX_CHECKPOINT_BYTES)  # fmt: skip
        if self._io is None:
            return
        # Read the earlier attempt's state first: after this save it could no longer be told apart.
        _ = self.checkpoint_state
        self._io.save_checkpoint(state)

    @property
    def checkpoint_state(self) -> object:
        """The state an EARLIER attempt of this job saved with ``checkpoint()``; None if none.

        Read from the API once per attempt, on first use: a task that never asks pays nothing.

        Raises:
            JobCancelled: the job was cancelled or ended, or this attempt replaced.
            CheckpointUnavailable: the API did not answer in time.
        """
        if self._io is None:
            return None
        if self._checkpoint_state is _UNREAD:
            self._checkpoint_state = self._io.load_checkpoint()
        return self._checkpoint_state


def _check_size(text: str, what: str, setting: str, cap: int) -> None:
    size = text_size(text)
    if size > cap:
        raise ValueError(f"{what} is {describe(size)}, over {setting} of {describe(cap)}")


def _compact_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


_current: ContextVar[JobContext | None] = ContextVar("current_job", default=None)


def current_job() -> JobContext:
    """The job the calling task runs for (a detached context when called outside a worker)."""
    return _current.get() or JobContext()


def activate(context: JobContext | None):
    """Make ``context`` the current job; returns the token to reset it with."""
    return _current.set(context)


def deactivate(token) -> None:
    _current.reset(token)
