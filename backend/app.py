"""The API: ``create_app`` wires settings, the service objects and the routes; nothing more.

Run it with ``gunicorn -c backend/gunicorn_conf.py "backend.app:create_app()"`` (whose
``post_worker_init`` hook starts each process's background threads as the process starts), or
``python backend/app.py`` for development (which starts an embedded Redis when REDIS_URL is
unset). Served any other way, the app starts them itself on the first request it serves.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from pathlib import Path

if __package__ in (None, ""):  # `python backend/app.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402

from backend import api, cli  # noqa: E402
from backend.api import (  # noqa: E402
    browser_guard,
    context,
    dashboard,
    html_security,
    metrics,
    openapi,
    rate_limits,
)
from backend.api import rq_dashboard as rq_dashboard_mount  # noqa: E402
from backend.api.error_handlers import register_error_handlers  # noqa: E402
from backend.api.forwarded import TrustedProxies, parse_networks  # noqa: E402
from backend.core import logs  # noqa: E402
from backend.core.background import PeriodicThread  # noqa: E402
from backend.core.secrets_check import enforce as enforce_secrets  # noqa: E402
from backend.core.settings import Settings, parse_api_keys  # noqa: E402
from backend.services import TRANSIENT_ERRORS, build_services  # noqa: E402

log = logging.getLogger(__name__)


class JobServiceFlask(Flask):
    """Flask, keeping ``ensure_sync``'s answer per function: Flask asks it of every hook and view
    on every request (10 on a poll, each an ``inspect.iscoroutinefunction`` of five calls), and the
    answer for a given function never changes. Every hook and view here is synchronous anyway."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync_funcs: dict = {}

    def ensure_sync(self, func):
        sync = self._sync_funcs.get(func)
        if sync is not None:
            return sync
        sync = super().ensure_sync(func)
        # Bounded: keys are the app's hooks and views (a bound method is equal to its twin).
        if len(self._sync_funcs) < 1024:
            self._sync_funcs[func] = sync
        return sync


def create_app(test_config: dict | None = None) -> Flask:
    """Build the API; no thread starts here, but on its first request (see ``start_background``).

    Args:
        test_config: settings by their capital names, over those of the environment.
    """
    settings = Settings.load(test_config)
    logs.configure(fmt=settings.log_format, level=settings.log_level, settings=settings.as_config())
    # Before anything connects: a deployment with placeholder or short secrets never serves.
    enforce_secrets(settings, role="api")
    app = JobServiceFlask(__name__)
    # The client's address behind a reverse proxy (X-Forwarded-For from trusted peers only).
    app.wsgi_app = TrustedProxies(app.wsgi_app, parse_networks(settings.trusted_proxies))
    app.json.sort_keys = False
    api_keys = parse_api_keys(settings.api_keys)  # a malformed list fails before anything connects
    services = build_services(settings)
    context.install(app, services, api_keys=api_keys)
    _start_background_on_first_request(app)

    register_error_handlers(app)
    html_security.init_app(app)
    rate_limits.init_app(app)
    metrics.init_app(app)
    # Its refusals are answers like any other: the metrics count them (their clock starts in a WSGI
    # wrapper, before every hook).
    browser_guard.init_app(app)
    api.register(app)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(openapi.bp)
    cli.register(app)
    rq_dashboard_mount.mount(app)
    _warn_about_open_doors(settings, api_keys)
    return app


def start_background(app: Flask) -> Flask:
    """Start the API process's periodic threads: the reconciler (recovers interrupted jobs at
    start, then keeps doing so) and the webhook dispatcher, each unless its interval is 0.

    Called by the processes that serve the API (gunicorn's ``post_worker_init``,
    ``python backend/app.py``), by the app itself on the first request it serves (any other WSGI
    server), and by the tests that need the threads; never by the commands, which serve no
    request. Returns ``app``; only the first call starts anything, even once the threads stopped.
    """
    background: _Background = app.extensions[_BACKGROUND]
    # Under the lock: two first requests at once on two server threads start one set. The
    # flag is set once both threads run, so a start that failed is tried again by the next
    # caller, and the per-thread keys keep a retry from starting a second reconciler.
    with background.lock:
        if background.started:
            return app
        settings, services = context.settings(app), context.services(app)
        if settings.reconcile_interval > 0 and "reconciler_thread" not in app.extensions:
            thread = PeriodicThread(
                "reconciler", services.reconciler.run_once, settings.reconcile_interval, transient=TRANSIENT_ERRORS
            )
            thread.start()
            app.extensions["reconciler_thread"] = thread
        if settings.housekeeping_interval > 0 and "housekeeping_thread" not in app.extensions:
            thread = PeriodicThread(
                "housekeeping",
                services.housekeeping.run_once,
                settings.housekeeping_interval,
                transient=TRANSIENT_ERRORS,
            )
            thread.start()
            app.extensions["housekeeping_thread"] = thread
        if settings.webhook_interval > 0 and "webhooks_thread" not in app.extensions:
            thread = PeriodicThread(
                "webhooks", services.webhooks.run_once, settings.webhook_interval, transient=TRANSIENT_ERRORS
            )
            thread.start()
            app.extensions["webhooks_thread"] = thread
            # At process exit: no new pass claims deliveries it cannot send. A weak reference, so
            # that an app dropped early (tests make many) is not kept alive until exit.
            atexit.register(_stop_webhooks_at_exit, weakref.ref(app))
        background.started = True
        _drop_first_request_hook(app, background)
    return app


_BACKGROUND = "background"


class _Background:
    """Whether an app's threads were started: they start once per app, whoever asks first."""

    def __init__(self) -> None:
        self.started = False
        self.lock = threading.Lock()
        #: The before_request hook that starts them on a first request, while it is installed.
        self.hook = None


def _drop_first_request_hook(app: Flask, background: _Background) -> None:
    """Once the threads run, a request no longer pays for the hook that would start them (under
    gunicorn, post_worker_init starts them before the first request). The app's list of hooks is
    replaced, not changed in place: a request running the hooks meanwhile goes on with the old one."""
    hook, background.hook = background.hook, None
    funcs = app.before_request_funcs.get(None)
    if hook is not None and funcs and hook in funcs:
        app.before_request_funcs[None] = [func for func in funcs if func is not hook]


def _start_background_on_first_request(app: Flask) -> None:
    """Start the threads on the first request too, so that an app served without gunicorn_conf
    (another WSGI server, a bare ``gunicorn backend.app:create_app()``) still recovers jobs and
    sends webhooks; once they run, the hook is taken out (``_drop_first_request_hook``)."""
    background = app.extensions[_BACKGROUND] = _Background()

    def start_background_once() -> None:
        if not background.started:
            try:
                start_background(app)
            except Exception:  # the request goes on; the next one tries again
                log.exception(
                    "could not start the reconciler, housekeeping and webhook threads; retrying on the next request"
                )

    background.hook = start_background_once
    app.before_request(start_background_once)


def stop_background(app: Flask, wait: bool = True) -> None:
    """Stop what ``start_background`` started, and the webhook dispatcher's delivery pool."""
    for name in ("reconciler_thread", "housekeeping_thread"):
        thread = app.extensions.pop(name, None)
        if thread is not None:
            thread.stop()
    stop_webhooks(app, wait=wait)


def stop_webhooks(app: Flask, wait: bool = True) -> None:
    """Stop the app's webhook dispatcher: its periodic thread, then its delivery pool (with
    ``wait``, until the deliveries in flight, each bounded by WEBHOOK_TIMEOUT, are recorded)."""
    thread = app.extensions.pop("webhooks_thread", None)
    if thread is not None:
        thread.stop()
    context.services(app).webhooks.close(wait=wait)


def _stop_webhooks_at_exit(app_ref: weakref.ref) -> None:
    app = app_ref()
    if app is not None:
        stop_webhooks(app, wait=False)


def _warn_about_open_doors(settings: Settings, api_keys: dict) -> None:
    if not api_keys:
        log.warning("API_KEYS is not set: the API serves loopback clients only, all as admin")
    if not settings.internal_service_token:
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
        app = start_background(create_app())
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
