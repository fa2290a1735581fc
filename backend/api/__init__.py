"""The HTTP API as blueprints; ``register`` mounts them on an app."""

from __future__ import annotations

from flask import Flask

from backend.api import batches, events, internal, jobs, key_limits, monitoring, queues, schedules, tasks
from backend.api.rate_limits import limiter


def register(app: Flask) -> None:
    for module in (tasks, jobs, events, batches, schedules, internal, monitoring, queues, key_limits):
        app.register_blueprint(module.bp)
    app.register_blueprint(monitoring.metrics_bp)
    # Workers' reports are never rate limited.
    limiter.exempt(internal.bp)
