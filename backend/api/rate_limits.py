"""Rate limits with flask-limiter, counted in Redis so they hold across API processes.

Per API key (the client address when keys are off) and per endpoint class: submissions,
batches and everything else. Workers' internal calls are never limited.

Every route that starts an execution (a submission, a retry, a schedule's creation or run, a
requeue) carries ``submit_limit``: they share one "submit" budget per key, so a tenant cannot
start more work per minute through a retry or a schedule than through ``POST /tasks/<name>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from backend.api.auth import bearer_token
from backend.api.context import api_keys, services, settings


def client_key() -> str:
    """Who a request counts against: its API key's owner, or its address."""
    token = bearer_token()
    keys = api_keys()
    if token is not None and token in keys:
        return f"key:{keys[token][0]}"
    return f"addr:{get_remote_address()}"


limiter = Limiter(key_func=client_key, headers_enabled=True, swallow_errors=True)


def submit_limit(view: Callable) -> Callable:
    """Count ``view`` against ``RATE_LIMIT_SUBMIT``, in the one budget that every route starting
    an execution shares (a shared limit: one counter per key, whichever of them is called)."""
    limited = limiter.shared_limit(lambda: settings().rate_limit_submit, scope="submit")(view)

    @functools.wraps(view)
    def route(*args, **kwargs):
        # With rate limits off, flask-limiter still resolves and evaluates the route's limits on
        # every call (~3% of a submission's CPU, issue 17): skipped, by this app's own setting.
        if not settings().rate_limit_enabled:
            return view(*args, **kwargs)
        return limited(*args, **kwargs)

    return route


def init_app(app: Flask) -> None:
    """Configure flask-limiter from the app's settings (it reads its own from app.config).

    The counters go through the app's own Redis connection pool (``connect``): a Sentinel
    URL, the TLS settings and the drop-on-READONLY rule hold for them too, and limits never
    opens Redis by itself (the URI only picks its Redis storage; the pool says where)."""
    own = settings(app)
    app.config["RATELIMIT_ENABLED"] = own.rate_limit_enabled
    app.config["RATELIMIT_STORAGE_URI"] = "redis://"
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {"connection_pool": services(app).redis.connection_pool}
    app.config["RATELIMIT_DEFAULT"] = own.rate_limit_default
    app.config["RATELIMIT_KEY_PREFIX"] = "jobservice:ratelimit"
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    limiter.init_app(app)
