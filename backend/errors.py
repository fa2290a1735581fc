"""The service's exceptions: one root, a subclass per failure, each mapped to an HTTP status.

``register_error_handlers`` turns every one of them, and every HTTP error Flask raises,
into the JSON error body of the contract: ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


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


class ServiceUnavailable(JobServiceError):
    """Raised when a dependency (Redis, the store) is down and the request cannot be taken."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, details: object = None):
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after)})


def error_response(status: int, code: str, message: str, details: object = None, headers=None):
    """Build the contract's JSON error answer."""
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Map the service's exceptions and Flask's HTTP errors to JSON answers; never an HTML 500."""

    @app.errorhandler(JobServiceError)
    def _service_error(exc: JobServiceError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {}
        if exc.code == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(exc.code or 500, code, exc.description or exc.name, None, headers)

    @app.errorhandler(OperationalError)
    def _store_down(exc: OperationalError):
        log.error("job store unavailable: %s", exc.orig)
        return error_response(503, "service_unavailable", "the job store is unavailable", None, {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the incident was logged")
