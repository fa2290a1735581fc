"""The API: ``create_app`` wires settings, the store, the queues and the routes.

Run it with ``gunicorn "backend.app:create_app()"``, or ``python backend/app.py`` for
development (which starts an embedded Redis when REDIS_URL is unset).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python backend/app.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from backend import api, cli, config, logs, rq_dashboard_mount  # noqa: E402
from backend.errors import register_error_handlers  # noqa: E402
from backend.job_manager import JobManager  # noqa: E402
from backend.queues import QueueAdapter, connect, register_queues  # noqa: E402
from backend.reconciler import Reconciler, ReconcilerThread  # noqa: E402
from backend.retries import RetryPolicy  # noqa: E402
from backend.store import make_engine, make_session_factory, migrate  # noqa: E402
from backend.tasks import load_task_modules  # noqa: E402

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the API. ``test_config`` overrides settings read from the environment."""
    settings = config.load(test_config)
    logs.configure(fmt=str(settings["LOG_FORMAT"]), level=str(settings["LOG_LEVEL"]))
    if not settings["REDIS_URL"]:
        raise RuntimeError("REDIS_URL is not set; `make run` or `python backend/app.py` starts one for you")

    app = Flask(__name__)
    app.config.update(settings)
    app.json.sort_keys = False
    app.extensions["api_keys"] = config.parse_api_keys(settings["API_KEYS"])

    load_task_modules(str(settings["TASK_MODULES"]))
    database_url = str(settings["DATABASE_URL"])
    migrate(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    redis = connect(str(settings["REDIS_URL"]), socket_timeout=5)
    queues = QueueAdapter(redis, result_ttl=int(settings["RQ_RESULT_TTL"]), failure_ttl=int(settings["RQ_FAILURE_TTL"]))
    try:
        register_queues(redis)
    except RedisError as exc:
        log.warning("Redis unreachable at start (%s); submissions stay PENDING until it is back", exc)
    app.extensions["engine"] = engine
    app.extensions["redis"] = redis
    policy = RetryPolicy(
        base_seconds=float(settings["RETRY_BACKOFF_BASE"]),
        cap_seconds=float(settings["RETRY_BACKOFF_CAP"]),
        jitter=float(settings["RETRY_JITTER"]),
    )
    manager = JobManager(sessions, queues, retry_policy=policy)
    reconciler = Reconciler(
        manager,
        lease_seconds=float(settings["WORKER_LEASE_SECONDS"]),
        grace_seconds=float(settings["RECONCILE_GRACE"]),
    )
    app.extensions["jobs"] = manager
    app.extensions["reconciler"] = reconciler
    if float(settings["RECONCILE_INTERVAL"]) > 0:
        # Recovers interrupted jobs at start, then keeps doing so.
        thread = ReconcilerThread(reconciler, float(settings["RECONCILE_INTERVAL"]))
        thread.start()
        app.extensions["reconciler_thread"] = thread

    register_error_handlers(app)
    api.register(app)
    cli.register(app)
    rq_dashboard_mount.mount(app, str(settings["REDIS_URL"]))
    _warn_about_open_doors(app)
    return app


def _warn_about_open_doors(app: Flask) -> None:
    if not app.extensions["api_keys"]:
        log.warning("API_KEYS is not set: the API serves loopback clients only, all as admin")
    if not app.config.get("INTERNAL_SERVICE_TOKEN"):
        log.warning("INTERNAL_SERVICE_TOKEN is not set: workers' reports will be refused (401)")


def main() -> None:
    """Development server; starts an embedded Redis when REDIS_URL is unset."""
    import os

    from backend.redis_server import DEV_DATA_DIR, DEV_PORT, EmbeddedRedis

    embedded = None
    if not os.environ.get("REDIS_URL"):
        embedded = EmbeddedRedis.start(data_dir=DEV_DATA_DIR, port=int(os.environ.get("REDIS_PORT", DEV_PORT)))
        os.environ["REDIS_URL"] = embedded.url
    try:
        create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
