"""Builds the service objects (store, queues, job manager, reconciler...) from the settings.

Shared by the API (``create_app``), the scheduler process and the operator commands, so that
each wires the same pieces the same way. ``Services`` is the one typed bundle of them: the API
reaches it through ``backend.api.context.services()``, never through one service's attributes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.broker.connection import connect_for, warn_if_evicting
from backend.broker.errors import BrokerError
from backend.broker.events import EventLog
from backend.broker.fences import note_history
from backend.broker.queues import QueueAdapter, register_queues
from backend.core.settings import Settings
from backend.core.size_caps import SizeCaps
from backend.recovery.housekeeping import Housekeeping
from backend.recovery.reconciler import Reconciler
from backend.service.history import History
from backend.service.job_events import EventHub
from backend.service.job_manager import JobManager
from backend.service.job_reads import JobReader
from backend.service.queue_pauses import QueuePauses
from backend.service.rate_limits import RateLimits
from backend.service.retention import Retention, policy_from_settings
from backend.service.retries import RetryPolicy
from backend.service.schedules import ScheduleManager
from backend.store.engine import make_engine, make_session_factory, migrate, schema_behind
from backend.store.errors import StoreUnavailable
from backend.tasks import load_task_modules
from backend.webhooks.dispatcher import Dispatcher

if TYPE_CHECKING:  # types only, as the broker and the store name them (they alone import redis, sqlalchemy)
    from backend.broker.connection import Redis
    from backend.store.engine import Engine, Session, sessionmaker

log = logging.getLogger(__name__)

#: The errors of a dependency that is down for a while: periodic passes log them without a traceback.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (BrokerError, *StoreUnavailable)


@dataclass
class Services:
    """The service objects of one process, built once from its ``settings``."""

    settings: Settings
    engine: Engine
    #: Sessions on the store, for the services that read or write it.
    sessions: sessionmaker[Session]
    redis: Redis
    #: The RQ side: queues, registries, fences.
    queues: QueueAdapter
    jobs: JobManager
    #: The fast reads of GET /jobs/<id> and GET /jobs.
    job_reader: JobReader
    reconciler: Reconciler
    schedules: ScheduleManager
    #: Webhook deliveries; its pool only runs once ``run_once`` is called (``start_background``).
    webhooks: Dispatcher
    #: GET /jobs/<id>/events: subscriptions and status events of this process's streams.
    event_hub: EventHub
    #: Paused queues: the store's record and Redis's mirror for the workers.
    pauses: QueuePauses
    #: Rate limits set at run time per key: the store's record and Redis's mirror for the limiter.
    rate_limits: RateLimits
    #: The store's periodic upkeep (retention, history), run by the API's "housekeeping" thread.
    housekeeping: Housekeeping


def build_services(settings: Settings, *, migrate_store: bool = True) -> Services:
    """Wire the store, Redis, the job manager, the reconciler, the schedules and the webhooks.

    Raises:
        RuntimeError: REDIS_URL is not set.
    """
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set; `make run` or `python backend/app.py` starts one for you")
    load_task_modules(settings.task_modules)
    if migrate_store and settings.migrate_on_start:
        migrate(settings.database_url, connect_timeout=settings.db_connect_timeout)
    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
    )
    if not (migrate_store and settings.migrate_on_start):
        behind = schema_behind(engine)
        if behind is not None:
            engine.dispose()
            raise RuntimeError(f"{behind}: run `python -m backend migrate` first (MIGRATE_ON_START is off)")
    sessions = make_session_factory(engine)
    redis = connect_for(settings, socket_timeout=5)
    queues = QueueAdapter(
        redis, result_ttl=settings.rq_result_ttl, failure_ttl=settings.rq_failure_ttl, fair_share=settings.fair_share
    )
    try:
        note_history(redis)  # before register_queues: an empty Redis is noted as such
        register_queues(redis)
    except BrokerError as exc:
        log.warning("Redis unreachable at start (%s); submissions stay PENDING until it is back", exc)
    else:
        warn_if_evicting(redis, "start-up check")
    policy = RetryPolicy(
        base_seconds=settings.retry_backoff_base,
        cap_seconds=settings.retry_backoff_cap,
        jitter=settings.retry_jitter,
    )
    jobs = JobManager(sessions, queues, retry_policy=policy, max_attempts=settings.max_attempts_per_job)
    pauses = QueuePauses(sessions, redis)
    rate_limits = RateLimits(sessions, redis)
    reconciler = Reconciler(
        jobs,
        sessions,
        queues,
        lease_seconds=settings.worker_lease_seconds,
        grace_seconds=settings.reconcile_grace,
        caps=SizeCaps.from_settings(settings),
        pauses=pauses,
        rate_limits=rate_limits,
    )
    webhooks = Dispatcher(
        sessions,
        secret=settings.webhook_secret,
        allow_loopback=settings.webhook_allow_loopback,
        max_attempts=settings.webhook_max_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout=settings.webhook_timeout,
        concurrency=settings.webhook_concurrency,
        per_host=settings.webhook_host_concurrency,
        per_owner=settings.webhook_owner_concurrency,
    )
    built = Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=redis,
        queues=queues,
        jobs=jobs,
        job_reader=JobReader(engine, sessions, jobs),
        reconciler=reconciler,
        schedules=ScheduleManager(jobs, sessions, missed_policy=settings.schedule_missed_policy),
        webhooks=webhooks,
        event_hub=None,  # type: ignore[arg-type]  # below: it serves jobs through job_reader
        pauses=pauses,
        rate_limits=rate_limits,
        housekeeping=Housekeeping(redis),
    )
    built.event_hub = EventHub(
        EventLog(redis, history=settings.events_history, ttl=settings.events_ttl_seconds),
        sessions,
        built.job_reader,
        poll_seconds=settings.events_poll_seconds,
        max_streams=settings.events_max_streams,
        max_streams_per_owner=settings.events_max_streams_per_owner,
    )
    retention = Retention(sessions, policy_from_settings(settings), batch=settings.prune_batch)
    built.housekeeping.add("retention", retention.prune_pass)
    history = History(sessions, queues, days=settings.history_days)
    built.housekeeping.add("history.roll_up", history.roll_up)
    built.housekeeping.add("history.sample_queues", history.sample_queues, needs_redis=True)
    built.housekeeping.add("history.prune", history.prune)
    return built
