"""The API: ``create_app`` wires settings, the store, the queues and the routes.

Run it with ``gunicorn "backend.app:create_app()"``, or ``python backend/app.py`` for
development (which starts an embedded Redis when REDIS_URL is unset).
"""

from __future__ import annotations

import atexit
import logging
import sys
import weakref
from pathlib import Path

if __package__ in (None, ""):  # `python backend/app.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402

from backend import api, cli  # noqa: E402
from backend.api import (
    browser_guard,  # noqa: E402
    dashboard,  # noqa: E402
    html_security,  # noqa: E402
    metrics,  # noqa: E402
    openapi,  # noqa: E402
    rate_limits,  # noqa: E402
)
from backend.api import rq_dashboard as rq_dashboard_mount  # noqa: E402
from backend.api.error_handlers import register_error_handlers  # noqa: E402
from backend.api.forwarded import TrustedProxies, parse_networks  # noqa: E402
from backend.core import logs  # noqa: E402
from backend.core import settings as config  # noqa: E402
from backend.core.background import PeriodicThread  # noqa: E402
from backend.core.secrets_check import enforce as enforce_secrets  # noqa: E402
from backend.service.job_reads import JobReader  # noqa: E402
from backend.services import build_services  # noqa: E402
from backend.webhooks.dispatcher import Dispatcher  # noqa: E402

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None, *, role: str = "api") -> Flask:
    """Build the API. ``test_config`` overrides settings read from the environment; ``role``
    is "cli" for the operator commands, which need no internal token."""
    settings = config.load(test_config)
    logs.configure(fmt=str(settings["LOG_FORMAT"]), level=str(settings["LOG_LEVEL"]), settings=settings)
    # Before anything connects: a deployment with placeholder or short secrets never serves.
    enforce_secrets(settings, role=role)
    app = Flask(__name__)
    # The client's address behind a reverse proxy (X-Forwarded-For from trusted peers only).
    app.wsgi_app = TrustedProxies(app.wsgi_app, parse_networks(str(settings["TRUSTED_PROXIES"])))
    app.config.update(settings)
    app.json.sort_keys = False
    app.extensions["api_keys"] = config.parse_api_keys(settings["API_KEYS"])

    services = build_services(settings)
    app.extensions["engine"] = services.engine
    app.extensions["redis"] = services.redis
    app.extensions["jobs"] = services.jobs
    app.extensions["job_reader"] = JobReader(services.engine, services.jobs)
    app.extensions["reconciler"] = services.reconciler
    app.extensions["schedules"] = services.schedules
    reconciler = services.reconciler
    if float(settings["RECONCILE_INTERVAL"]) > 0:
        # Recovers interrupted jobs at start, then keeps doing so.
        thread = PeriodicThread("reconciler", reconciler.run_once, float(settings["RECONCILE_INTERVAL"]))
        thread.start()
        app.extensions["reconciler_thread"] = thread

    dispatcher = Dispatcher(
        services.jobs.sessions,
        secret=settings["WEBHOOK_SECRET"],
        allow_loopback=bool(int(settings["WEBHOOK_ALLOW_LOOPBACK"])),
        max_attempts=int(settings["WEBHOOK_MAX_ATTEMPTS"]),
        backoff_seconds=float(settings["WEBHOOK_BACKOFF_SECONDS"]),
        timeout=float(settings["WEBHOOK_TIMEOUT"]),
        concurrency=int(settings["WEBHOOK_CONCURRENCY"]),
        per_host=int(settings["WEBHOOK_HOST_CONCURRENCY"]),
        per_owner=int(settings["WEBHOOK_OWNER_CONCURRENCY"]),
    )
    app.extensions["webhooks"] = dispatcher
    if float(settings["WEBHOOK_INTERVAL"]) > 0:
        thread = PeriodicThread("webhooks", dispatcher.run_once, float(settings["WEBHOOK_INTERVAL"]))
        thread.start()
        app.extensions["webhooks_thread"] = thread
    # At process exit: no new pass claims deliveries it cannot send. A weak reference, so
    # that an app dropped early (tests make many) is not kept alive until exit.
    atexit.register(_stop_webhooks_at_exit, weakref.ref(app))

    register_error_handlers(app)
    html_security.init_app(app)
    rate_limits.init_app(app)
    metrics.init_app(app)
    # After the metrics timer, so that refused requests are counted too.
    browser_guard.init_app(app)
    api.register(app)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(openapi.bp)
    cli.register(app)
    rq_dashboard_mount.mount(app, str(settings["REDIS_URL"]))
    _warn_about_open_doors(app)
    return app


def stop_webhooks(app: Flask, wait: bool = True) -> None:
    """Stop the app's webhook dispatcher: its periodic thread, then its delivery pool (with
    ``wait``, until the deliveries in flight, each bounded by WEBHOOK_TIMEOUT, are recorded)."""
    thread = app.extensions.pop("webhooks_thread", None)
    if thread is not None:
        thread.stop()
    app.extensions["webhooks"].close(wait=wait)


def _stop_webhooks_at_exit(app_ref: weakref.ref) -> None:
    app = app_ref()
    if app is not None:
        stop_webhooks(app, wait=False)


def _warn_about_open_doors(app: Flask) -> None:
    if not app.extensions["api_keys"]:
        log.warning("API_KEYS is not set: the API serves loopback clients only, all as admin")
    if not app.config.get("INTERNAL_SERVICE_TOKEN"):
        log.warning("INTERNAL_SERVICE_TOKEN is not set: workers' reports will be refused (401)")


def main() -> None:
    """Development server; starts an embedded Redis when REDIS_URL is unset."""
    import os

    from backend.dev.redis_server import DEV_DATA_DIR, DEV_PORT, EmbeddedRedis

    # The development server: the secrets check does not apply (see backend/core/secrets_check.py).
    os.environ.setdefault("JOBSERVICE_ENV", "development")
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
