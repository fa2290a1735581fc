"""The service's exceptions: one root, a subclass per failure, each mapped to an HTTP status.

``backend.api.error_handlers`` turns them into the contract's JSON error bodies. This module
imports no web framework: workers use it too.
"""

from __future__ import annotations


class JobServiceError(Exception):
    """Root of every error the service raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: object = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(JobServiceError):
    """Raised when a request body is malformed: not parseable, too deep, wrong shape."""

    status = 400
    code = "bad_request"


class Unauthorized(JobServiceError):
    """Raised when a request carries no valid credentials."""

    status = 401
    code = "unauthorized"


class Forbidden(JobServiceError):
    """Raised when valid credentials do not allow the request."""

    status = 403
    code = "forbidden"


class NotFound(JobServiceError):
    """Raised when a job, task or schedule does not exist or is not the caller's."""

    status = 404
    code = "not_found"


class InvalidTransition(JobServiceError):
    """Raised when a job would move backwards or out of a terminal state."""

    status = 409
    code = "invalid_transition"

    def __init__(self, job_id: str, current: str, target: str, *, reason: str | None = None):
        message = f"job {job_id} cannot move from {current} to {target}"
        if reason:
            message = f"{message}: {reason}"
        super().__init__(message, details={"job_id": job_id, "status": current, "requested": target})
        self.job_id = job_id
        self.current = current
        self.target = target


class Conflict(JobServiceError):
    """Raised when a request would take something another one holds (a schedule's name)."""

    status = 409
    code = "conflict"


class StaleAttempt(JobServiceError):
    """Raised when a worker reports for an attempt that a newer attempt has replaced."""

    status = 409
    code = "stale_attempt"

    def __init__(self, job_id: str, reported: int, current: int):
        super().__init__(
            f"job {job_id} is on attempt {current}, got a report for attempt {reported}",
            details={"job_id": job_id, "attempt": current, "reported_attempt": reported},
        )


class UnsupportedMediaType(JobServiceError):
    """Raised when a request body is not declared as JSON."""

    status = 415
    code = "unsupported_media_type"


class ValidationFailed(JobServiceError):
    """Raised when a well-formed request asks for something invalid (bad arguments, options)."""

    status = 422
    code = "validation_failed"


class IdempotencyKeyReused(ValidationFailed):
    """Raised when an idempotency key held by a live job comes again with another request
    (another task, arguments or options): as Stripe answers, the key is not silently reused."""

    code = "idempotency_key_reused"


class ServiceUnavailable(JobServiceError):
    """Raised when a dependency (Redis, the store) is down and the request cannot be taken."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, details: object = None):
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after)})
