"""JSON answers for every error: the service's exceptions, Flask's HTTP errors, a store that
is down and anything unexpected, as ``{"error": {"code", "message", "details"}}``; never an
HTML page.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from backend.core.errors import JobServiceError
from backend.store.errors import StoreError, StoreUnavailable, ValueRefused, is_unavailable

log = logging.getLogger("backend.core.errors")


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

    def _store_error(exc: Exception):
        # Any driver error lands here (Flask picks the handler by the exception's classes): the
        # ones meaning "down or busy" are a 503 the client may retry, a value the database
        # refuses is the client's (400), the others a bug.
        if isinstance(exc, ValueRefused) and not is_unavailable(exc):
            # The driver's first line names the rule ("PostgreSQL text fields cannot contain NUL
            # (0x00) bytes", "integer out of range"), never the statement or its parameters.
            reason = str(exc.orig).splitlines()[0][:200] if exc.orig is not None else "refused by the store"
            log.warning("a request's value was refused by the store: %s", reason)
            return error_response(400, "invalid_value", f"a value in the request cannot be stored: {reason}")
        if not is_unavailable(exc):
            return _unexpected(exc)
        # The driver's text names the host and port, never the password.
        log.error("job store unavailable: %s", getattr(exc, "orig", None) or exc)
        return error_response(503, "service_unavailable", "the job store is unavailable", None, {"Retry-After": "5"})

    for error_class in (StoreError, *StoreUnavailable):
        app.register_error_handler(error_class, _store_error)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the incident was logged")
