"""gunicorn settings for the API: ``gunicorn -c backend/gunicorn_conf.py "backend.app:create_app()"``.

gunicorn's threads each read a whole request, headers and body, before the app sees it, and a
thread waits as long as the client takes: 2 processes x 4 threads means 8 slow connections
starve the API (a slowloris). So gunicorn is never the server that the internet talks to: it
binds 127.0.0.1 by default, and nginx in front of it (deploy/nginx/jobservice.conf; the
docker-compose `proxy` service, the Kubernetes sidecar, the systemd guide) reads each request
whole, with timeouts, before handing it over. DEPLOYMENT_GUIDE.md, "Slow clients", says why
nginx rather than an event-loop worker class.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This file is read by gunicorn's master before any worker imports the app: make the package
# importable, and mask credentials in every line the master logs too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Private names: gunicorn takes every public name of this file as a setting ("config" is one).
from backend.core import logs as _logs  # noqa: E402
from backend.core import secrets_check as _secrets_check  # noqa: E402
from backend.core.settings import Settings as _Settings  # noqa: E402

_logs.install_redaction()

# Loopback: behind the reverse proxy. docker-compose sets 0.0.0.0:5000 (its proxy and workers
# reach the API over the compose network; the port is not published).
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:5000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
# Above nginx's upstream keepalive_timeout (60 s): gunicorn never closes an idle upstream
# connection at the moment nginx reuses it.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
# One access line per request, an INFO record like the app's own: written at LOG_LEVEL INFO (the
# default) or DEBUG, not at WARNING or above (as Flower's tornado access log is not).
accesslog = "-" if _logs.writes_info(os.environ.get("LOG_LEVEL", "INFO")) else None
# At least what nginx lets through (large_client_header_buffers 4 8k: a request line or a header
# of up to 8190 bytes, 32 KiB of headers in all, however many), so that a request too large is
# refused by nginx with the API's JSON, never by gunicorn with its HTML (gunicorn's defaults,
# 4094 and 100 headers, were below nginx's). 8190 is the most gunicorn takes for a request line.
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 10000
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def on_starting(server):
    """Refuse to start, with the reason and no traceback, when a secret will not do."""
    try:
        _secrets_check.enforce(_Settings.load(), role="api")
    except _secrets_check.InsecureSecrets as exc:
        server.log.error("%s", exc)
        sys.exit(1)


def post_worker_init(worker):
    """Start this process's reconciler and webhook threads once its app is loaded: in each
    worker after the fork (a thread started in the master would not survive it)."""
    from backend.api import context
    from backend.app import start_background

    # The same configuration serves bench/hello_app.py, which has no services to run.
    if context.installed(worker.wsgi):
        start_background(worker.wsgi)


def child_exit(server, worker):
    """Drop a dead process's samples from prometheus-client's multiprocess files."""
    # prometheus-client's own variable (see backend/api/metrics.py), hence not a Settings field.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
