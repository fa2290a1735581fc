"""The peer's Celery app: one no-op task on a Redis broker with a Redis result backend.

Imported only by the peer's own virtual environment (``bench/.cache/peer-venv``, see
``bench/peer.py``), never by the project's: Celery and Flower are what the benchmark measures
against, not dependencies of the service. The task is ``bench.rawtasks.noop``, the very function
our worker and raw RQ run, registered under the name our API gives it (``bench_noop``).
"""

from __future__ import annotations

import os

from celery import Celery

from bench import rawtasks

_URL = os.environ["PEER_REDIS_URL"]

app = Celery("peer", broker=_URL, backend=_URL)
# Celery 5's defaults otherwise (JSON, prefetch 4, acks on completion, results kept a day); only
# the start-up warning about retrying the broker connection is silenced.
app.conf.broker_connection_retry_on_startup = True

noop = app.task(name="bench_noop")(rawtasks.noop)
