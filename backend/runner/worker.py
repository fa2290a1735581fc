"""The worker: RQ's own Worker (forking) or SimpleWorker, plus reports to the API.

    python backend/worker.py --name worker-1 --queues high,default,low [--max-jobs N] [--burst] [--simple]

RQ does the work loop, priority order of queues, heartbeats, timeouts, the stop-job command
and warm shutdown on SIGTERM. This module adds what the store needs: it tells the API when
an attempt starts, how far it is and how it ended (a task raising ``Snooze`` ended it snoozed, no
failure; ``backend/runner/reporting.py``), and gives the task its job context, wired by
``backend/runner/task_io.py`` to the job's event stream, its captured log lines and its
checkpoints. It takes its jobs fairly across owners and never from a paused queue
(backend/runner/dequeue.py), and sends RQ's own heartbeat and state writes in fewer round trips
(backend/runner/bookkeeping.py). The forking worker is ``backend/runner/forking.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from backend.broker.connection import connect_for, warn_if_evicting
from backend.broker.leases import LeaseKeeper
from backend.broker.queues import register_queues
from backend.core import logs, secrets_check
from backend.core.settings import QUEUE_NAMES, SettingError, Settings, parse_owner_weights
from backend.core.size_caps import SizeCaps
from backend.runner.bookkeeping import LeanBookkeeping
from backend.runner.checkpoints import CheckpointClient
from backend.runner.dequeue import FairDequeue
from backend.runner.forking import JobServiceWorker
from backend.runner.outcomes import completed_unrecorded
from backend.runner.reporter import Reporter
from backend.runner.reporting import ReportingMixin
from backend.runner.start_gate import StartGate
from backend.runner.start_trip import OneTripStart
from backend.runner.startup import abandon_orphaned_jobs, forget_stale_registration, wait_for_redis
from backend.runner.success import OneTripSuccess
from backend.runner.task_io import EventSender, RunServices
from backend.tasks import load_task_modules

__all__ = [
    "JobServiceSimpleWorker",
    "JobServiceWorker",
    "ReportingMixin",
    "abandon_orphaned_jobs",
    "build_worker",
    "forget_stale_registration",
    "main",
    "wait_for_redis",
]

log = logging.getLogger(__name__)


class JobServiceSimpleWorker(FairDequeue, LeanBookkeeping, OneTripSuccess, ReportingMixin, OneTripStart, SimpleWorker):
    """RQ's SimpleWorker: jobs run in the worker's own process (faster, less isolated)."""


def build_worker(
    *,
    name: str,
    queues: list[str],
    simple: bool,
    settings: Settings,
    connection: Redis,
) -> Worker:
    """A worker for ``queues`` (in priority order) reporting to the API of ``settings``."""
    reporter = Reporter(
        settings.api_base_url,
        str(settings.internal_service_token),
        retry_seconds=settings.report_retry_seconds,
        progress_interval=settings.progress_min_interval,
        caps=SizeCaps.from_settings(settings),
    )
    worker_class = JobServiceSimpleWorker if simple else JobServiceWorker
    worker = worker_class(
        queues,
        name=name,
        connection=connection,
        serializer=JSONSerializer,
        default_result_ttl=settings.rq_result_ttl,
        reporter=reporter,
        start_gate=StartGate(settings.api_base_url, str(settings.internal_service_token)),
        run_services=RunServices(
            EventSender(connection, history=settings.events_history, ttl=settings.events_ttl_seconds),
            CheckpointClient(
                settings.api_base_url, str(settings.internal_service_token), patience=settings.report_retry_seconds
            ),
        ),
    )
    worker.fair_share = settings.fair_share
    worker.owner_weights = parse_owner_weights(settings.owner_weights)
    return worker


def parse_args(argv: list[str] | None = None, settings: Settings | None = None) -> argparse.Namespace:
    settings = settings or Settings.load()
    parser = argparse.ArgumentParser(description="Run a job service worker.")
    parser.add_argument(
        "--name",
        default=settings.rq_worker_name or f"{socket.gethostname()}-{os.getpid()}",
        help="worker name, unique across hosts (default: RQ_WORKER_NAME or host-pid)",
    )
    parser.add_argument(
        "--queues",
        default=settings.rq_queue_names,
        help="queues in priority order (default: RQ_QUEUE_NAMES or high,default,low)",
    )
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--simple", action="store_true", help="run jobs in this process (RQ's SimpleWorker)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load()
    except SettingError as exc:  # e.g. OWNER_WEIGHTS: one line naming the setting, no traceback
        raise SystemExit(f"refusing to start the worker: {exc}") from None
    args = parse_args(argv, settings)
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    queues = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = [name for name in queues if name not in QUEUE_NAMES]
    if not queues or unknown:
        raise SystemExit(f"--queues must name some of {list(QUEUE_NAMES)}, got {args.queues!r}")
    if not settings.internal_service_token:
        raise SystemExit("INTERNAL_SERVICE_TOKEN is not set: the API would refuse this worker's reports")
    secrets_check.enforce_or_exit(settings, role="worker")
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set")
    load_task_modules(settings.task_modules)

    connection = connect_for(settings)
    # The lease thread gets a connection pool of its own: a forked work-horse must never
    # inherit a pool lock that this thread held at the moment of the fork.
    lease = LeaseKeeper(connect_for(settings), args.name, settings.worker_lease_seconds)
    wait_for_redis(connection, what=f"worker {args.name}")
    warn_if_evicting(connection, f"worker {args.name}")
    claim_deadline = time.monotonic() + 2 * settings.worker_lease_seconds
    while not lease.claim():
        # A restarted container often reuses its name: wait for the dead holder's lease to
        # lapse; a holder that keeps renewing is a live worker, and then this one gives up.
        if time.monotonic() > claim_deadline:
            raise SystemExit(f"a live worker is already named {args.name!r}; pick another --name")
        log.warning("worker %s: the name is leased; waiting for the lease to lapse", args.name)
        time.sleep(1)
    lease.start()
    try:
        while True:
            forget_stale_registration(connection, args.name)
            abandon_orphaned_jobs(connection, args.name, queues, completed=completed_unrecorded)
            register_queues(connection, queues)
            worker = build_worker(
                name=args.name, queues=queues, simple=args.simple, settings=settings, connection=connection
            )
            worker.reporter.check()
            try:
                worker.work(
                    burst=args.burst,
                    max_jobs=args.max_jobs,
                    with_scheduler=True,
                    logging_level=settings.log_level,
                )
            except RedisError as exc:
                log.warning("worker %s: lost Redis (%s)", args.name, exc)
            finally:
                # Whatever ends the loop, the reports of the jobs it ran are sent first.
                if not worker.reporter.flush(timeout=settings.report_retry_seconds):
                    log.error("worker %s: some reports were not delivered; the reconciler settles them", args.name)
                worker.reporter.close()
            if worker.stop_requested or args.burst or args.max_jobs:
                break
            # RQ's loop gave up (on some Redis errors, or a job it could not read): wait for
            # Redis if it is down, then go on working.
            log.warning("worker %s: RQ's work loop ended unexpectedly; restarting it", args.name)
            time.sleep(1)
            wait_for_redis(connection, what=f"worker {args.name}")
    except RedisError as exc:
        log.warning("worker %s: Redis unavailable while starting (%s)", args.name, exc)
    finally:
        lease.stop()
    log.info("worker %s stopped", args.name)
    return 0
