"""gunicorn settings for the event streams: ``gunicorn -c backend/gunicorn_streams.py "backend.app:create_app()"``.

The same Flask app as backend/gunicorn_conf.py, served by gevent's worker class: one greenlet
per connection, so thousands of open ``GET /jobs/<id>/events`` streams cost a little memory each
instead of a gthread thread each (2 x 4 threads would hold 8 streams and nothing else). nginx
(deploy/nginx/jobservice.conf) sends only the events path here; every other request goes to the
gthread API, so a slow request there never shares an event loop with the streams.

What may block this process's loop: psycopg 3 sees gevent's monkeypatching and waits for
PostgreSQL cooperatively; SQLite reads are short and, in WAL mode, never wait for a writer
(tests/test_streams_server.py holds SQLite's write lock in another process for seconds while
streams here keep receiving events). Nothing on the streams' path writes the store (an
``flock`` for a writer's turn would stall every stream). No reconciler or webhook thread runs
here: the API process runs them.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Private names: gunicorn takes every public name of this file as a setting.
from backend.core import logs as _logs  # noqa: E402
from backend.core import secrets_check as _secrets_check  # noqa: E402
from backend.core.settings import Settings as _Settings  # noqa: E402

_logs.install_redaction()

# The app starts its reconciler, housekeeping and webhook threads on its first request unless
# their interval is 0: this process serves streams only, and the API process (gunicorn_conf) runs
# them. Here each would be a greenlet whose store writes (the writers' flock, SQLite's lock) stall
# the event loop and every stream while another process writes.
os.environ["RECONCILE_INTERVAL"] = "0"
os.environ["HOUSEKEEPING_INTERVAL"] = "0"
os.environ["WEBHOOK_INTERVAL"] = "0"

# Loopback: behind nginx, as the API. docker-compose sets 0.0.0.0:5001.
bind = os.environ.get("STREAMS_BIND", "127.0.0.1:5001")
worker_class = "gevent"
# One process holds the streams of one host (the hub is one greenlet per process); more
# processes split them, each with its own hub and its own store poll.
workers = int(os.environ.get("STREAMS_WORKERS", "1"))
# Open connections per process: every stream is one. EVENTS_MAX_STREAMS (the app's own cap,
# answered 503 with Retry-After) should stay below it, so that a stream past the cap gets an
# answer rather than a refused connection.
worker_connections = int(os.environ.get("STREAMS_WORKER_CONNECTIONS", "4000"))
# The app's cap of streams per process (EVENTS_MAX_STREAMS, 1000 by default: what a threaded
# server could never hold anyway) is raised here unless set: this process is made for them.
os.environ.setdefault("EVENTS_MAX_STREAMS", "3000")
# A gevent worker notifies the master from its own greenlet, so a stream open for hours does not
# count against it; a process whose loop is stuck this long is restarted.
timeout = int(os.environ.get("STREAMS_TIMEOUT", "60"))
graceful_timeout = 10
# Above nginx's upstream keepalive_timeout (60 s), as gunicorn_conf.
keepalive = int(os.environ.get("STREAMS_KEEPALIVE", "75"))
# One access line per stream opened, at LOG_LEVEL INFO or DEBUG only (as gunicorn_conf).
accesslog = "-" if _logs.writes_info(os.environ.get("LOG_LEVEL", "INFO")) else None
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 10000
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 23+ opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl): the
# API's master, on the same host, has it (older gunicorn ignores the name).
control_socket_disable = True

# Every stream is a descriptor (two behind nginx: nginx's side too): a soft limit of 1024, the
# usual default, would refuse the 1,000th stream. Raised to the hard limit here, in the master,
# whose workers inherit it; systemd (LimitNOFILE) and Docker (ulimits) set the hard limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_want = 65536 if _hard == resource.RLIM_INFINITY else _hard
if _soft != resource.RLIM_INFINITY and _soft < _want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_want, _hard))


def on_starting(server):
    """Refuse to start, with the reason and no traceback, when a secret will not do."""
    try:
        _secrets_check.enforce(_Settings.load(), role="api")
    except _secrets_check.InsecureSecrets as exc:
        server.log.error("%s", exc)
        sys.exit(1)


def child_exit(server, worker):
    """Drop a dead process's samples from prometheus-client's multiprocess files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


#: What this process serves: reads. A write here could deadlock it (SQLite's writers take turns on
#: an flock, which blocks the whole process: a greenlet waiting for the turn never lets the one
#: holding it run), so writes are refused before the app sees them; nginx never sends them here.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _refuse_writes(app):
    """The app, answering a JSON 405 to any method that could write the store."""

    def guarded(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") in _READ_METHODS:
            return app(environ, start_response)
        body = json.dumps(
            {
                "error": {
                    "code": "method_not_allowed",
                    "message": "this process serves event streams and reads; send writes to the API",
                    "details": {"allowed": sorted(_READ_METHODS)},
                }
            }
        ).encode()
        start_response(
            "405 METHOD NOT ALLOWED",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Allow", "GET, HEAD, OPTIONS")],
        )
        return [body]

    return guarded


def post_worker_init(worker):
    """Refuse writes in this process (see ``_READ_METHODS``)."""
    worker.wsgi = _refuse_writes(worker.wsgi)
