"""Builds the service objects (store, queues, job manager, reconciler...) from settings.

Shared by the API (``create_app``), the scheduler process and the operator commands, so
that each wires the same pieces the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from backend.broker.queues import QueueAdapter, connect, register_queues
from backend.core.size_caps import SizeCaps
from backend.recovery.reconciler import Reconciler
from backend.service.job_manager import JobManager
from backend.service.retries import RetryPolicy
from backend.service.schedules import ScheduleManager
from backend.store.engine import make_engine, make_session_factory, migrate
from backend.tasks import load_task_modules

log = logging.getLogger(__name__)


@dataclass
class Services:
    engine: Engine
    redis: Redis
    jobs: JobManager
    reconciler: Reconciler
    schedules: ScheduleManager


def build_services(settings: dict, *, migrate_store: bool = True) -> Services:
    """Wire the store, Redis, the job manager, the reconciler and the schedules.

    Raises:
        RuntimeError: REDIS_URL is not set.
    """
    if not settings["REDIS_URL"]:
        raise RuntimeError("REDIS_URL is not set; `make run` or `python backend/app.py` starts one for you")
    load_task_modules(str(settings["TASK_MODULES"]))
    database_url = str(settings["DATABASE_URL"])
    if migrate_store:
        migrate(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    redis = connect(str(settings["REDIS_URL"]), socket_timeout=5)
    queues = QueueAdapter(redis, result_ttl=int(settings["RQ_RESULT_TTL"]), failure_ttl=int(settings["RQ_FAILURE_TTL"]))
    try:
        register_queues(redis)
    except RedisError as exc:
        log.warning("Redis unreachable at start (%s); submissions stay PENDING until it is back", exc)
    policy = RetryPolicy(
        base_seconds=float(settings["RETRY_BACKOFF_BASE"]),
        cap_seconds=float(settings["RETRY_BACKOFF_CAP"]),
        jitter=float(settings["RETRY_JITTER"]),
    )
    jobs = JobManager(sessions, queues, retry_policy=policy)
    reconciler = Reconciler(
        jobs,
        lease_seconds=float(settings["WORKER_LEASE_SECONDS"]),
        grace_seconds=float(settings["RECONCILE_GRACE"]),
        caps=SizeCaps.from_settings(settings),
    )
    schedules = ScheduleManager(jobs, missed_policy=str(settings["SCHEDULE_MISSED_POLICY"]))
    return Services(engine=engine, redis=redis, jobs=jobs, reconciler=reconciler, schedules=schedules)
