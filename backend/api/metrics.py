"""Prometheus metrics at ``GET /metrics`` (admin), with prometheus-client.

Counters and histograms (defined in ``backend/core/instruments.py``) are recorded where things
happen (requests, worker reports, webhook attempts). Under gunicorn with several processes,
set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (prometheus-client's multiprocess mode;
``backend/gunicorn_conf.py`` marks dead processes) and the scrape sums every process. Job counts, queue depths and live
workers are read at scrape time from the store's counters and Redis, so they are the same
whichever process answers.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from backend.api.context import services
from backend.broker import key_limits, leases, registries
from backend.broker.errors import BrokerError
from backend.core.instruments import REQUEST_LATENCY
from backend.core.settings import QUEUE_NAMES
from backend.store import counts

#: HTTP methods that get a label of their own; any other method a client sends is "other",
#: and a request that matched no route is "unmatched" (never its path): labels a client
#: controls would grow /metrics, and every process's memory, without bound.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StateCollector:
    """Job counts by task and status, paused queues, queue depths and live workers, read at scrape time."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        jobs = GaugeMetricFamily("jobservice_jobs", "Jobs in the store by task and status", labels=["task", "status"])
        with services(self.app).sessions() as session:
            for task, status, count in counts.by_task_and_status(session):
                jobs.add_metric([task, status], count)
        yield jobs
        # From the store's record of pauses (what GET /queues shows), so the same in every process.
        paused = GaugeMetricFamily("jobservice_queue_paused", "1 when the queue is paused", labels=["queue"])
        recorded = services(self.app).pauses.paused()
        for name in QUEUE_NAMES:
            paused.add_metric([name], 1 if name in recorded else 0)
        yield paused
        depth = GaugeMetricFamily("jobservice_queue_depth", "Jobs waiting in each RQ queue", labels=["queue"])
        workers = GaugeMetricFamily("jobservice_workers_alive", "Workers holding a lease")
        up = GaugeMetricFamily("jobservice_redis_up", "1 when Redis answers")
        # Counted in Redis by the limiter's script (every worker's holds); the 100 keys held most
        # (a tenant names keys: the labels stay bounded). Prometheus adds the _total suffix.
        limited = CounterMetricFamily(
            "jobservice_rate_limited", "Jobs held by their rate limit per key (top 100 keys)", labels=["key"]
        )
        queues = services(self.app).queues
        try:
            for name, sizes in registries.queue_counts(queues).items():
                depth.add_metric([name], sizes["queued"])
            workers.add_metric([], len(leases.all_alive(queues.connection)))
            for key, count in key_limits.held_totals(queues.connection, top=100).items():
                limited.add_metric([key], count)
            up.add_metric([], 1)
        except BrokerError:
            up.add_metric([], 0)
        yield depth
        yield workers
        yield limited
        yield up


def render(app: Flask) -> Response:
    """The Prometheus text of every metric (summed over processes in multiprocess mode)."""
    # Not a Settings field: prometheus-client picks its multiprocess mode from this variable at
    # import, so the environment, not an override, decides; we read what the library read.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(app.extensions["state_collector"])
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    collector = StateCollector(app)
    app.extensions["state_collector"] = collector
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several apps may live in one process (tests): the default registry keeps the newest.
        previous = REGISTRY._collector_to_names.keys()
        for old in [c for c in previous if isinstance(c, StateCollector)]:
            REGISTRY.unregister(old)
        REGISTRY.register(collector)

    # One histogram child per (route, method, status), looked up without prometheus-client's
    # label checks on every request (the hot polling path runs through here).
    children: dict[tuple, object] = {}
    # All in a WSGI wrapper rather than before/after_request hooks: Flask runs every hook through
    # its own dispatch and each `request` attribute through a context proxy. The clock stops
    # where the answer starts (start_response), after every hook, for every answer of the app.
    inner = app.wsgi_app

    def timed(environ: dict, start_response):
        started = time.perf_counter()

        def observe_then_start(status: str, headers, exc_info=None):
            elapsed = time.perf_counter() - started
            # Flask's request (werkzeug leaves it in the environ): its route, once matched.
            req = environ.get("werkzeug.request")
            rule = getattr(req, "url_rule", None)
            method = req.method if req is not None else environ.get("REQUEST_METHOD", "GET").upper()
            if method not in STANDARD_METHODS:
                method = "other"
            key = (rule.rule if rule is not None else "unmatched", method, status[:3])
            child = children.get(key)
            if child is None:
                child = children[key] = REQUEST_LATENCY.labels(*key)
            child.observe(elapsed)
            return start_response(status, headers, exc_info)

        return inner(environ, observe_then_start)

    app.wsgi_app = timed
