"""The job store's tables. Alembic migrations (backend/store/migrations) own the schema;
tests/test_migrations.py fails whenever these models and the migrations differ."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """A naive UTC timestamp in the database, an aware UTC datetime in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


class Key(TypeDecorator):
    """A name the service makes itself (an id, a task's name), never one holding a NUL.

    PostgreSQL refuses a NUL (0x00) anywhere in a statement's text, comparisons included, where
    SQLite compares it as any other character. So that a lookup by such a name answers as for any
    other unknown name on both stores, PostgreSQL is sent an empty string instead, which no key
    is: the lookup finds nothing. No key the service writes holds a NUL (ids are made here, task
    names are the registered ones), so only lookups ever meet the substitution.
    """

    impl = String
    cache_ok = True

    def bind_processor(self, dialect):
        if dialect.name != "postgresql":
            return None
        return _nul_to_empty


def _nul_to_empty(value: str | None) -> str | None:
    return "" if value is not None and "\x00" in value else value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


#: The predicate of ``ix_jobs_completed``: the jobs that completed (a count's query repeats it).
COMPLETED_ONLY = "status = 'COMPLETED'"
#: The predicates of the prune's indexes (backend/store/retention.py): FAILED and CANCELLED jobs,
#: and the live jobs of batches.
FAILED_OR_CANCELLED = "status = 'FAILED' OR status = 'CANCELLED'"
LIVE_BATCH_JOBS = "batch_id IS NOT NULL AND status IN ('PENDING', 'QUEUED', 'PROCESSING')"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(Key(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(Key(200))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    args: Mapped[list] = mapped_column(JSON)
    kwargs: Mapped[dict] = mapped_column(JSON)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    progress_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[object | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    # Runs cut by the infrastructure (a worker killed, Redis lost mid-run), counted apart from
    # retry_count: they spend no retry, and more than max_interruptions end the job FAILED.
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_interruptions: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    timeout: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_delivered: Mapped[bool | None] = mapped_column(Boolean)
    rq_job_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    # Live jobs keep their key here; it is cleared when the job ends, so a unique index
    # guards "one live job per key" and a dead job can never block its key.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    cancelled_by: Mapped[str | None] = mapped_column(String(100))
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Where the job came from, when not a plain submission.
    schedule_id: Mapped[str | None] = mapped_column(Key(40))
    batch_id: Mapped[str | None] = mapped_column(Key(40))
    # Jobs that must complete first (see job_dependencies); the failure of one cancels this
    # job unless allow_failure.
    depends_on: Mapped[list | None] = mapped_column(JSON)
    allow_failure: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Set when another job depends on this one, so that ending a job with no dependants
    # costs no dependency lookups.
    has_dependants: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Not before this time (RQ's scheduler holds it until then).
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Times the task snoozed (ran again later, no failure counted); the one past max_snoozes
    # ends the job FAILED (a task that snoozes for ever).
    snoozes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_snoozes: Mapped[int] = mapped_column(Integer, default=100, server_default="100")
    # The newest state a task saved for its next attempt, the attempt that saved it and when.
    # Deferred: up to MAX_CHECKPOINT_BYTES, read only by the checkpoint route, never by the
    # job commands or the polling path (backend/store/checkpoints.py).
    checkpoint: Mapped[object | None] = mapped_column(JSON, deferred=True)
    checkpoint_attempt: Mapped[int | None] = mapped_column(Integer)
    checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What job_logs keeps of this job (the cut marker included): the per-job cap costs no COUNT.
    log_lines: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    log_bytes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index("ix_jobs_schedule_created", "schedule_id", "created_at", "id"),
        # A batch's jobs listed newest first (GET /jobs?batch_id=) without a sort.
        Index("ix_jobs_batch_created", "batch_id", "created_at", "id"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        # A key's listing filtered by status or task must not walk the other owners' jobs.
        Index("ix_jobs_owner_status_created", "owner", "status", "created_at", "id"),
        Index("ix_jobs_owner_task_created", "owner", "task", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_task_created", "task", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ux_jobs_owner_idempotency_key", "owner", "idempotency_key", unique=True),
        # GET /queues counts the jobs completed in the last minute: a range of this index, never
        # every COMPLETED job (backend/store/queue_pauses.py). Partial, so a job enters it once,
        # when it completes; status in it too, so SQLite reads the index alone (covering).
        Index(
            "ix_jobs_completed",
            "completed_at",
            "priority",
            "status",
            sqlite_where=text(COMPLETED_ONLY),
            postgresql_where=text(COMPLETED_ONLY),
        ),
        # The prune's walk of FAILED and CANCELLED jobs, oldest end first (backend/store/retention.py);
        # partial: submissions and completions never write to it.
        Index(
            "ix_jobs_status_completed",
            "status",
            "completed_at",
            sqlite_where=text(FAILED_OR_CANCELLED),
            postgresql_where=text(FAILED_OR_CANCELLED),
        ),
        # "Does this batch still have a live job" in one probe (the prune keeps such a batch's jobs).
        Index(
            "ix_jobs_batch_live", "batch_id", sqlite_where=text(LIVE_BATCH_JOBS), postgresql_where=text(LIVE_BATCH_JOBS)
        ),
    )


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ux_attempts_job_attempt", "job_id", "attempt", unique=True),)


class JobLog(Base):
    """One line a task logged while it ran (``GET /jobs/<job_id>/logs``); its id is the line's ``seq``."""

    __tablename__ = "job_logs"

    # BIGINT: up to MAX_LOG_LINES_PER_JOB lines per job add up over a store's life.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_job_logs_job", "job_id", "id"),)


class JobKwarg(Base):
    """One scalar top-level keyword argument of a job, as text (``backend.core.job_filters.kwarg_text``):
    the index behind ``GET /jobs?kwargs.<name>=<value>``, written with the job's INSERT."""

    __tablename__ = "job_kwargs"

    job_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # The job's owner: a tenant's filter walks its own rows (ix_job_kwargs_owner_lookup), not every owner's.
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    # The job's created_at: the listing's order comes from this index, not from a sort.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_job_kwargs_lookup", "name", "value", "created_at", "job_id"),
        Index("ix_job_kwargs_owner_lookup", "owner", "name", "value", "created_at", "job_id"),
    )


class JobDependency(Base):
    """One edge of the dependency graph: ``job_id`` waits for ``depends_on_id``."""

    __tablename__ = "job_dependencies"

    job_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)

    __table_args__ = (Index("ix_job_dependencies_parent", "depends_on_id"),)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(Key(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(Key(200))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ScheduledJob(Base):
    __tablename__ = "scheduled_jobs"

    id: Mapped[str] = mapped_column(Key(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(Key(200))
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    args: Mapped[list] = mapped_column(JSON)
    kwargs: Mapped[dict] = mapped_column(JSON)
    priority: Mapped[str] = mapped_column(String(16))
    timeout: Mapped[int] = mapped_column(Integer)
    max_retries: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_job_id: Mapped[str | None] = mapped_column(Key(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ux_scheduled_jobs_owner_name", "owner", "name", unique=True),
        Index("ix_scheduled_jobs_due", "enabled", "next_run_at"),
    )


class ScheduleFiring(Base):
    """One firing of a schedule; the unique (schedule, fire_at) makes each fire exactly once."""

    __tablename__ = "schedule_firings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(Key(40), ForeignKey("scheduled_jobs.id", ondelete="CASCADE"))
    fire_at: Mapped[datetime] = mapped_column(UTCDateTime)
    job_id: Mapped[str] = mapped_column(Key(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ux_schedule_firings_once", "schedule_id", "fire_at", unique=True),)


class WebhookDelivery(Base):
    """One webhook message (an outbox row): sent, retried and recorded by the dispatcher."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(Key(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(Key(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    #: The URL's host name, lowercased (backend.service.webhook_outbox.delivery_host): the dispatcher's
    #: per-host cap is applied in its query, so one host's backlog cannot fill a pass.
    host: Mapped[str] = mapped_column(String(255), server_default="")
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The random token of the claim that holds the delivery (backend/store/deliveries.py):
    #: every write after the claim names it, so a dispatcher whose claim was taken over writes nothing.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id"),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(Key(40), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id"),)


class JobCount(Base):
    """How many jobs of a task are in a status, up to the last roll-up (backend/store/counts.py)."""

    __tablename__ = "job_counts"

    task: Mapped[str] = mapped_column(Key(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    # BIGINT: a roll-up adds a chunk's sum at once, and a busy task's count never wraps.
    count: Mapped[int] = mapped_column(BigInteger)


class JobCountDelta(Base):
    """One move of jobs between statuses, appended by the write that made it and never updated,
    so no two writers share a row; ``counts.roll_up`` folds these into ``job_counts``."""

    __tablename__ = "job_count_deltas"

    # BIGINT: a busy store appends billions of these over its life (SQLite's rowid is 64-bit).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(Key(200))
    old_status: Mapped[str | None] = mapped_column(String(16))
    new_status: Mapped[str | None] = mapped_column(String(16))
    jobs: Mapped[int] = mapped_column(Integer)


class QueuePause(Base):
    """A paused queue: recorded here so that the pause survives every restart (Redis holds its
    mirror for the workers, backend/broker/pauses.py); the row goes when the queue resumes."""

    __tablename__ = "queue_pauses"

    queue: Mapped[str] = mapped_column(String(16), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime)
    paused_by: Mapped[str] = mapped_column(String(200))


class RateLimitOverride(Base):
    """A rate limit set at run time for one key (``PUT /rate-limits/<key>``): recorded here so that
    it survives every restart (Redis holds its mirror for the workers, backend/broker/limit_overrides.py);
    it wins over the limit a task declares, and the row goes when it is cleared."""

    __tablename__ = "rate_limit_overrides"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    limit_text: Mapped[str] = mapped_column(String(40))
    set_by: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobMinute(Base):
    """One task's jobs ended in one UTC minute: completed, failed, and the completed runs' times
    as counts per bucket of ``history.RUN_MS_BOUNDS``; rolled up from jobs by the housekeeping
    pass (backend/store/history.py). The row of task "" is the minute's total, and marks it rolled."""

    __tablename__ = "job_minutes"

    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    task: Mapped[str] = mapped_column(Key(200), primary_key=True)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    run_ms: Mapped[list] = mapped_column(JSON)


class QueueMinute(Base):
    """A queue's depth (jobs waiting in its list) as sampled once in one UTC minute."""

    __tablename__ = "queue_minutes"

    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    queue: Mapped[str] = mapped_column(String(16), primary_key=True)
    depth: Mapped[int] = mapped_column(Integer)
