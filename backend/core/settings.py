"""Settings: one typed, frozen ``Settings`` read from the environment once per process.

Every setting is a field here with its type, its default and what it does; the environment
variable of a field is its name in capitals (``redis_url`` <- ``REDIS_URL``). Tests override
any of them with a dict of those capital names (``create_app(test_config={...})``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from backend.core.durations import parse_duration

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PACKAGE_DIR / "data"

#: Queues in priority order: a worker always takes from the first non-empty one.
QUEUE_NAMES = ("high", "default", "low")


class SettingError(ValueError):
    """Raised when a setting's value cannot be read as its type, or a setting is unknown."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name} {message}")
        self.name = name


@dataclass(frozen=True)
class Settings:
    """The settings of one process (API, worker, scheduler or command)."""

    #: The queue broker; None means "no Redis configured" (make run starts one).
    redis_url: str | None = None
    #: The password of the Sentinels (a redis+sentinel:// REDIS_URL), when they require one; the
    #: master's own password goes in the URL.
    redis_sentinel_password: str | None = None
    #: A CA bundle (PEM file) that a rediss:// server's certificate must chain to; None: the system's.
    redis_ssl_ca_certs: str | None = None
    #: How a rediss:// server's certificate is checked: "required" (redis-py's default when
    #: unset), "optional" or "none".
    redis_ssl_cert_reqs: str | None = None
    #: The job store of record: a SQLite file, or postgresql+psycopg://user:password@host:5432/db.
    database_url: str = f"sqlite:///{DATA_DIR / 'jobs.db'}"
    #: Processes bring the store to the newest schema when they start (off: run
    #: `python -m backend migrate` before starting them, e.g. as a deployment's migration job).
    migrate_on_start: bool = True
    #: Connections each process keeps open to PostgreSQL (ignored for SQLite).
    db_pool_size: int = 5
    #: Connections a process may open past the pool's size under load (ignored for SQLite).
    db_max_overflow: int = 10
    #: How long a request waits for a free connection before failing (seconds; PostgreSQL only).
    db_pool_timeout: float = 30.0
    #: How long opening a connection to PostgreSQL may take (whole seconds, at least 2; libpq's
    #: connect_timeout): past it the request answers 503 instead of waiting on a server that
    #: does not answer (psycopg's own bound is 130 s). A connect_timeout in DATABASE_URL wins.
    db_connect_timeout: int = 5
    #: Shared secret between the API and workers for the internal endpoints.
    internal_service_token: str | None = None
    #: Client keys, "name:key[:admin],...". None: open, but only on loopback.
    api_keys: str | None = None
    #: Host names served besides loopback ones ("api.example.com,.example.com,*"). None: with no
    #: API_KEYS only loopback names are served (DNS rebinding), with keys any name.
    allowed_hosts: str | None = None
    #: Origins ("https://app.example.com,...") whose pages may POST/PUT/PATCH/DELETE here besides
    #: the API's own origin.
    trusted_origins: str | None = None
    #: Where workers reach the API.
    api_base_url: str = "http://127.0.0.1:5000"
    #: Modules whose @task functions are registered (comma separated).
    task_modules: str = "backend.tasks.examples"
    #: Queues a worker takes from, in priority order (its --queues default).
    rq_queue_names: str = ",".join(QUEUE_NAMES)
    #: A worker's name, unique across hosts (its --name default); None: hostname-pid.
    rq_worker_name: str | None = None
    #: Fair share across owners: within a queue, workers interleave the owners' jobs (weighted by
    #: OWNER_WEIGHTS) instead of taking them first come, first served. Set it alike on API and workers.
    fair_share: bool = True
    #: Owners' weights for fair share, "name:3,other:2" (positive integers; an owner not named weighs 1).
    owner_weights: str = ""
    #: Retention of finished jobs in Redis (seconds).
    rq_result_ttl: int = 86400
    #: Retention of failed jobs in Redis (seconds).
    rq_failure_ttl: int = 604800
    #: A job's timeout (seconds) when its submission names none.
    default_job_timeout: int = 600
    #: A job's automatic retries when its submission names none.
    default_max_retries: int = 3
    #: Request body cap (bytes); Flask refuses larger bodies (413).
    max_content_length: int = 1024 * 1024
    #: How deep a request's JSON may nest.
    max_json_depth: int = 32
    #: Page size of GET /jobs (and the other lists) when ?limit= is absent.
    jobs_page_default: int = 50
    #: Largest ?limit= of a page.
    jobs_page_max: int = 500
    #: A page stops adding items once its body would pass this many bytes (it always holds at
    #: least one; next_cursor goes on from the last one it holds).
    jobs_page_max_bytes: int = 1024 * 1024
    #: A job's arguments (args and kwargs, compact UTF-8 JSON): larger submissions are refused (413).
    max_args_bytes: int = 64 * 1024
    #: A task's result: a larger one fails the attempt (retried like any failure).
    max_result_bytes: int = 256 * 1024
    #: An attempt's error text (traceback): workers keep its tail, the API refuses more.
    max_error_bytes: int = 16 * 1024
    #: A progress message, in characters: workers shorten it, the API refuses more. Workers start
    #: with their own values of these four caps and adopt the API's from its answers.
    max_progress_message: int = 1024
    #: How long a worker retries a report while the API is unreachable (seconds).
    report_retry_seconds: float = 120.0
    #: The least time between two progress reports of one job (seconds).
    progress_min_interval: float = 0.25
    #: The n-th retry waits min(cap, base * 2**(n-1)) seconds, +/- jitter: the base.
    retry_backoff_base: float = 120.0
    #: The retry wait's cap (seconds).
    retry_backoff_cap: float = 1800.0
    #: The retry wait's jitter, a fraction of it.
    retry_jitter: float = 0.1
    #: A worker's lease lapses this long after it dies (the recovery bound is about lease + interval).
    worker_lease_seconds: float = 15.0
    #: The reconciler runs every so many seconds in the API (0 turns the thread off).
    reconcile_interval: float = 5.0
    #: Finished jobs are pruned this long after they ended, per status ("<n>d", "<n>h", "<n>m",
    #: "<n>s"; "0" keeps them for ever), with their attempts, logs and webhook deliveries.
    retention_completed: str = "30d"
    retention_failed: str = "90d"
    retention_cancelled: str = "30d"
    #: The API's housekeeping pass (retention, the per-minute history) runs every so many seconds
    #: (0 turns the thread off); one process of the fleet runs it at a time.
    housekeeping_interval: float = 10.0
    #: Jobs deleted per transaction by a prune, so that it never holds the store's write lock long.
    prune_batch: int = 25
    #: Days of per-minute history (jobs completed and failed, run times, queue depths) kept.
    history_days: int = 7
    #: The reconciler leaves rows changed in the last so many seconds.
    reconcile_grace: float = 2.0
    #: A due time missed while no scheduler ran fires "once" at the next pass, or is skipped ("skip").
    schedule_missed_policy: str = "once"
    #: Schedulers look for due schedules every so many seconds.
    scheduler_interval: float = 1.0
    #: Webhooks' HMAC-SHA256 secret.
    webhook_secret: str | None = None
    #: Webhooks may go to loopback addresses: only for tests and local development.
    webhook_allow_loopback: bool = False
    #: Attempts per webhook delivery.
    webhook_max_attempts: int = 3
    #: Backoff base between a delivery's attempts (seconds).
    webhook_backoff_seconds: float = 10.0
    #: Bounds a whole delivery (resolve, connect, send, read), not each read (seconds).
    webhook_timeout: float = 10.0
    #: How often the API's webhook dispatcher looks for deliveries (seconds; 0 turns it off).
    webhook_interval: float = 1.0
    #: Deliveries in flight at once per API process.
    webhook_concurrency: int = 8
    #: Deliveries in flight to one receiver host, so that a slow receiver cannot hold up others.
    webhook_host_concurrency: int = 2
    #: Deliveries in flight of one job owner, so that one owner cannot hold up other owners.
    webhook_owner_concurrency: int = 4
    #: Seconds one request's (a batch's) webhook_url hosts may take to resolve in all.
    webhook_resolve_seconds: float = 3.0
    #: Most distinct webhook_url host names in one request (a slow DNS must not hold an API thread).
    webhook_max_hosts: int = 10
    #: Rate limits per API key (or client address when keys are off) are enforced.
    rate_limit_enabled: bool = True
    #: The submit budget shared by every route that starts an execution (flask-limiter syntax).
    rate_limit_submit: str = "10/minute"
    #: The budget of POST /tasks/<name>/batch.
    rate_limit_batch: str = "5/minute"
    #: The budget of every other route.
    rate_limit_default: str = "100/minute"
    #: Most jobs one batch may hold.
    batch_max_jobs: int = 1000
    #: Most jobs one POST /jobs/cancel may cancel (ids listed, or matched by its filter).
    bulk_cancel_max_ids: int = 1000
    #: Most attempts a job may reach by POST /jobs/<id>/retry (409 past it; its own automatic
    #: retries may still add max_retries more).
    max_attempts_per_job: int = 100
    #: Most schedules one owner may keep (409 past it).
    max_schedules_per_owner: int = 1000
    #: Log lines as "text" or "json".
    log_format: str = "text"
    #: The least level logged.
    log_level: str = "INFO"
    #: "development" (set by `make run`, `python backend/app.py` and the tests) skips the start-up
    #: check of secrets (backend/core/secrets_check.py); anything else is a deployment.
    jobservice_env: str = "production"
    #: How often the /rq pages refresh (milliseconds).
    rq_dashboard_poll_interval: int = 2500
    #: The /rq pages offer no delete or empty buttons, and refuse those requests.
    rq_dashboard_disable_delete: bool = False
    #: Peers (IPs or CIDRs) whose X-Forwarded-For names the client: a reverse proxy on the same
    #: host or pod. Anyone else's X-Forwarded-For is ignored (backend/api/forwarded.py).
    trusted_proxies: str = "127.0.0.1,::1"
    #: GET /jobs/<id>/events: events kept per job in Redis for a reconnect to replay (Last-Event-ID).
    events_history: int = 500
    #: A job's events expire this long after its last one (seconds).
    events_ttl_seconds: int = 3600
    #: How often an API process reads the status of the jobs it streams (seconds).
    events_poll_seconds: float = 0.1
    #: Open event streams per API process (503 past it), and per owner in a process (429).
    events_max_streams: int = 1000
    events_max_streams_per_owner: int = 100

    @classmethod
    def load(
        cls, overrides: Mapping[str, object] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then the environment (read here, once), then ``overrides`` (by capital names).

        Raises:
            SettingError: a value is not of its setting's type, or an override names no setting.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _parse(field, raw)
        for name, value in (overrides or {}).items():
            field = _FIELDS.get(name.lower()) if name.isupper() else None
            if field is None:
                raise SettingError(name, "is not a setting")
            values[field.name] = _parse(field, value)
        retry = values.get("report_retry_seconds", cls.report_retry_seconds)
        if not retry > 0:  # also NaN
            # The worker's start check waits within it: at 0 it would never ask the store, and
            # every job created before a Redis failover would end unstarted, over and over.
            raise SettingError("REPORT_RETRY_SECONDS", f"must be a number of seconds above 0, got {retry!r}")
        _check_events(values, cls)
        _check_retention(values, cls)
        _check_housekeeping(values, cls)
        parse_owner_weights(values.get("owner_weights", cls.owner_weights))  # fails at start, not at a pop
        return cls(**values)

    def as_config(self) -> dict[str, object]:
        """The settings under their capital names: for Flask's ``app.config`` and log redaction."""
        return {field.name.upper(): getattr(self, field.name) for field in dataclasses.fields(self)}

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` (capital names, parsed like overrides)."""
        parsed = Settings.load(changes, environ={})
        return dataclasses.replace(self, **{name.lower(): getattr(parsed, name.lower()) for name in changes})


def _check_events(values: dict[str, object], cls: type[Settings]) -> None:
    """The EVENTS_ settings' bounds: each is a count or a time above 0 (0 would turn streams into busy loops)."""
    for name in ("events_history", "events_ttl_seconds", "events_poll_seconds", "events_max_streams",
                 "events_max_streams_per_owner"):  # fmt: skip
        value = values.get(name, getattr(cls, name))
        if not value > 0 or value == float("inf"):  # also NaN
            raise SettingError(name.upper(), f"must be above 0, got {value!r}")


def _check_retention(values: dict[str, object], cls: type[Settings]) -> None:
    """RETENTION_* are durations ("30d"; "0" keeps for ever), PRUNE_BATCH a count: refused at start, not at a pass."""
    for name in ("retention_completed", "retention_failed", "retention_cancelled"):
        try:
            parse_duration(values.get(name, getattr(cls, name)))
        except ValueError as exc:
            raise SettingError(name.upper(), f"must be a duration like 30d, 12h or 0 (keep for ever): {exc}") from None
    batch = values.get("prune_batch", cls.prune_batch)
    if not 1 <= batch <= 10_000:
        raise SettingError("PRUNE_BATCH", f"must be from 1 to 10000 jobs, got {batch!r}")


def _check_housekeeping(values: dict[str, object], cls: type[Settings]) -> None:
    """HISTORY_DAYS 1..3650 (0 rolls nothing and prunes all; a huge one overflows), HOUSEKEEPING_INTERVAL
    finite and >= 0 (NaN turned the thread off silently, inf overflowed its wait): refused at start."""
    days = values.get("history_days", cls.history_days)
    if not 1 <= days <= 3650:
        raise SettingError("HISTORY_DAYS", f"must be from 1 to 3650 days, got {days!r}")
    interval = values.get("housekeeping_interval", cls.housekeeping_interval)
    if not 0 <= interval < float("inf"):  # also NaN
        raise SettingError("HOUSEKEEPING_INTERVAL", f"must be a number of seconds, 0 (off) or above, got {interval!r}")


def _parse_bool(value: object) -> bool:
    """Any integer, nonzero meaning on (as the flags were always read: ``bool(int(x))``), or a word."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on"):
            return True
        if word in ("false", "no", "off"):
            return False
        return bool(int(word))  # "2" and "-1" are on, "0" off; "1.0" or "maybe" a ValueError
    if isinstance(value, int | float):
        return bool(int(value))
    raise TypeError


def _parse_int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)  # the 0/1 flags the tests and old settings spell as numbers
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    if isinstance(value, str | int | float):
        return int(value)
    raise TypeError


def _parse_float(value: object) -> float:
    if isinstance(value, str | int | float):
        return float(value)
    raise TypeError


def _parse_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError


# Keyed by the annotation's text: ``from __future__ import annotations`` keeps them as strings.
_PARSERS: dict[str, tuple[Callable[[object], object], str]] = {
    "bool": (_parse_bool, "a flag (1/0, true/false)"),
    "int": (_parse_int, "an integer"),
    "float": (_parse_float, "a number"),
    "str": (_parse_str, "a string"),
    "str | None": (_parse_str, "a string"),
}
_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def _parse(field: dataclasses.Field, value: object) -> object:
    if value is None and field.type == "str | None":
        return None
    parse, kind = _PARSERS[str(field.type)]
    try:
        return parse(value)
    except (TypeError, ValueError):
        raise SettingError(field.name.upper(), f"must be {kind}, got {value!r}") from None


def load(overrides: Mapping[str, object] | None = None) -> Settings:
    """``Settings.load``: the settings of this process, ``overrides`` applied last."""
    return Settings.load(overrides)


#: Every setting's default under its capital name (the deployment files list each of them).
DEFAULTS: dict[str, object] = Settings().as_config()


#: An owner's name in OWNER_WEIGHTS is at most this long (the store caps owners at 100 characters).
OWNER_NAME_MAX = 100
#: The most weights OWNER_WEIGHTS may name (the worker passes them to every pop).
OWNER_WEIGHTS_MAX = 100


def parse_owner_weights(spec: str | None) -> dict[str, int]:
    """Parse ``OWNER_WEIGHTS`` ("name:3,other:2") into {owner: weight}.

    Raises:
        SettingError: an entry is not ``name:weight`` with a name and a whole weight from 1 to 1,000.
    """
    weights: dict[str, int] = {}
    entries = [entry.strip() for entry in (spec or "").split(",") if entry.strip()]
    if len(entries) > OWNER_WEIGHTS_MAX:
        raise SettingError("OWNER_WEIGHTS", f"names {len(entries)} owners, at most {OWNER_WEIGHTS_MAX}")
    for entry in entries:
        name, sep, weight = entry.rpartition(":")
        name = name.strip()
        if not sep or not name or len(name) > OWNER_NAME_MAX:
            raise SettingError(
                "OWNER_WEIGHTS", f"entry {entry!r} must be name:weight (a name of 1 to {OWNER_NAME_MAX} characters)"
            )
        if not weight.strip().isdigit() or not 1 <= int(weight) <= 1000:
            raise SettingError("OWNER_WEIGHTS", f"entry {entry!r}: the weight must be a whole number from 1 to 1000")
        if name in weights:
            raise SettingError("OWNER_WEIGHTS", f"names {name!r} twice")
        weights[name] = int(weight)
    return weights


def parse_api_keys(spec: str | None) -> dict[str, tuple[str, bool]]:
    """Parse ``API_KEYS`` ("name:key[:admin],...") into {key: (owner, is_admin)}.

    Raises:
        ValueError: an entry is not ``name:key`` or ``name:key:admin``.
    """
    keys: dict[str, tuple[str, bool]] = {}
    for number, entry in enumerate((spec or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        # The messages name the entry by its place, never its text: that holds a key.
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"API_KEYS entry {number} must be name:key[:admin]")
        if len(parts) == 3 and parts[2] != "admin":
            raise ValueError(f"API_KEYS entry {number} ({parts[0]!r}): the flag must be 'admin'")
        keys[parts[1]] = (parts[0], len(parts) == 3)
    return keys
