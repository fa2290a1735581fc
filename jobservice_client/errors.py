"""The client's exceptions: one per kind of JSON error the API answers, and a job's bad ending.

The API answers every error as ``{"error": {"code", "message", "details"}}``; ``from_response``
turns that into the subclass for its status, so callers catch ``NotFound`` rather than compare
status codes. A job that ended FAILED or CANCELLED is not an HTTP error: ``Job.raise_for_status``
raises ``JobFailed`` / ``JobCancelled`` for callers who want one.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC


class JobServiceError(Exception):
    """An error answer of the API (or none at all: ``status`` None when it was unreachable).

    Attributes: ``status`` (HTTP status or None), ``code`` (the API's error code, e.g.
    ``not_found``), ``message``, ``details`` and ``body`` (the decoded JSON answer, or its text).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: object = None,
        body: object = None,
    ):
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.body = body


class BadRequest(JobServiceError):
    """400, 413, 415 or 422: the request itself is wrong (bad arguments, options, body)."""


class Unauthorized(JobServiceError):
    """401: no API key, or an unknown one."""


class Forbidden(JobServiceError):
    """403: the key may not do this (an admin route, another owner's filter)."""


class NotFound(JobServiceError):
    """404: no such job or task, or another owner's."""


class Conflict(JobServiceError):
    """409: the job cannot move there (cancel a completed job), or a name is taken."""


class RateLimited(JobServiceError):
    """429: too many requests; ``retry_after`` is the server's wait in seconds (or None)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields):
        super().__init__(message, **fields)
        self.retry_after = retry_after


class Unavailable(JobServiceError):
    """503 (Redis or the store down), or the service unreachable (``status`` None)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields):
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ServerError(JobServiceError):
    """500 and any other status the API does not answer on purpose."""


class JobError(Exception):
    """A job that ended without completing; ``job`` is the ``Job`` as it ended."""

    def __init__(self, job, message: str):
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job ended FAILED; its ``error`` says why."""


class JobCancelled(JobError):
    """The job ended CANCELLED."""


class WaitTimeout(TimeoutError):
    """``Job.wait(timeout=...)`` ran out before the job ended; the job goes on running."""

    def __init__(self, job, timeout: float):
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


_BY_STATUS: dict[int, type[JobServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    429: RateLimited,
    503: Unavailable,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delay-seconds or an HTTP date); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def from_response(response) -> JobServiceError:
    """The exception for an error answer (a ``requests.Response`` with status >= 400)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = response.text[:2000]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message, details = error.get("code"), str(error.get("message") or ""), error.get("details")
    elif isinstance(error, str):  # an error shaped {"error": "..."}: its text is the message
        code, message, details = None, error, None
    else:
        code, message, details = None, f"HTTP {status} {response.reason or ''}".strip(), None
    fields = {"status": status, "code": code, "details": details, "body": body}
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else JobServiceError)
    if cls in (RateLimited, Unavailable):
        return cls(message, retry_after=parse_retry_after(response.headers.get("Retry-After")), **fields)
    return cls(message, **fields)
