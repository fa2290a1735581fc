"""Monitoring routes (admin only)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from backend import leases
from backend.api.auth import require_admin

bp = Blueprint("monitoring", __name__, url_prefix="/monitoring")
bp.before_request(require_admin)


@bp.get("/health")
def health():
    """200 when Redis, the store and at least one worker are up; else 503 naming what is down."""
    checks: dict[str, dict] = {}
    redis = current_app.extensions["redis"]
    try:
        redis.ping()
        checks["redis"] = {"ok": True}
        workers = sorted(leases.all_alive(redis))
        checks["workers"] = {"ok": bool(workers), "alive": len(workers), "names": workers}
        if not workers:
            checks["workers"]["error"] = "no live worker"
    except RedisError as exc:
        checks["redis"] = {"ok": False, "error": f"Redis unreachable: {exc}"}
        checks["workers"] = {"ok": False, "error": "unknown while Redis is down"}
    try:
        with current_app.extensions["engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["store"] = {"ok": True}
    except SQLAlchemyError as exc:
        checks["store"] = {"ok": False, "error": f"job store unavailable: {exc.__class__.__name__}"}
    healthy = all(check["ok"] for check in checks.values())
    failing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ok" if healthy else "unhealthy", "failing": failing, "checks": checks}
    response = jsonify(body)
    response.status_code = 200 if healthy else 503
    if not healthy:
        response.headers["Retry-After"] = "5"
    return response
