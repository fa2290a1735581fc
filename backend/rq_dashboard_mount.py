"""RQ Dashboard, mounted in the API at /rq for admins only."""

from __future__ import annotations

import rq_dashboard
import rq_dashboard.web
from flask import Flask
from rq.serializers import JSONSerializer

from backend.api.auth import require_admin
from backend.rate_limits import limiter

URL_PREFIX = "/rq"


def mount(app: Flask, redis_url: str) -> None:
    # Our jobs are JSON-serialized; the dashboard must read them the same way.
    rq_dashboard.web.config.serializer = JSONSerializer
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", redis_url)
    rq_dashboard.web.setup_rq_connection(app)
    blueprint = rq_dashboard.blueprint
    if require_admin not in blueprint.before_request_funcs.get(None, []):
        # Registered first so that nobody reaches the dashboard without an admin key.
        blueprint.before_request_funcs.setdefault(None, []).insert(0, require_admin)
    app.register_blueprint(blueprint, url_prefix=URL_PREFIX)
    # The dashboard polls several endpoints every few seconds: admins only, not limited.
    limiter.exempt(blueprint)
