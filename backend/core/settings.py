"""Settings, read from the environment in this one place.

Every setting has a documented default here; tests override any of them with the
``test_config`` dict given to ``create_app``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PACKAGE_DIR / "data"

#: Queues in priority order: a worker always takes from the first non-empty one.
QUEUE_NAMES = ("high", "default", "low")

DEFAULTS: dict[str, object] = {
    # The queue broker; unset means "no Redis configured" (make run starts one).
    "REDIS_URL": None,
    # The job store of record.
    "DATABASE_URL": f"sqlite:///{DATA_DIR / 'jobs.db'}",
    # Shared secret between the API and workers for the internal endpoints.
    "INTERNAL_SERVICE_TOKEN": None,
    # Client keys, "name:key[:admin],...". None: open, but only on loopback.
    "API_KEYS": None,
    # Host names served besides loopback ones ("api.example.com,.example.com,*"). Unset: with
    # no API_KEYS only loopback names are served (DNS rebinding), with keys any name.
    "ALLOWED_HOSTS": None,
    # Origins ("https://app.example.com,...") whose pages may POST/PUT/PATCH/DELETE here
    # besides the API's own origin.
    "TRUSTED_ORIGINS": None,
    # Where workers reach the API.
    "API_BASE_URL": "http://127.0.0.1:5000",
    # Modules whose @task functions are registered (comma separated).
    "TASK_MODULES": "backend.tasks.examples",
    # Retention of finished and failed jobs in Redis (seconds).
    "RQ_RESULT_TTL": 86400,
    "RQ_FAILURE_TTL": 604800,
    # Job defaults.
    "DEFAULT_JOB_TIMEOUT": 600,
    "DEFAULT_MAX_RETRIES": 3,
    # Request body cap (bytes) and how deep JSON may nest.
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "MAX_JSON_DEPTH": 32,
    # Page size of GET /jobs.
    "JOBS_PAGE_DEFAULT": 50,
    "JOBS_PAGE_MAX": 500,
    # A page of GET /jobs stops adding jobs once its body would pass this many bytes (it
    # always holds at least one job; next_cursor goes on from the last one it holds).
    "JOBS_PAGE_MAX_BYTES": 1024 * 1024,
    # Size caps on what requests store (backend/core/size_caps.py). Sizes are of compact UTF-8 JSON.
    # A job's arguments (args and kwargs together): larger submissions are refused (413).
    "MAX_ARGS_BYTES": 64 * 1024,
    # A task's result: a larger one fails the attempt (retried like any failure).
    "MAX_RESULT_BYTES": 256 * 1024,
    # An attempt's error text (traceback): workers keep its tail, the API refuses more.
    "MAX_ERROR_BYTES": 16 * 1024,
    # A progress message, in characters: workers shorten it, the API refuses more.
    # Workers start with their own values of these four and adopt the API's from its answers.
    "MAX_PROGRESS_MESSAGE": 1024,
    # Worker -> API reports: how long a report is retried while the API is unreachable,
    # and the least time between two progress reports of one job.
    "REPORT_RETRY_SECONDS": 120.0,
    "PROGRESS_MIN_INTERVAL": 0.25,
    # Retries: the n-th retry waits min(cap, base * 2**(n-1)) seconds, +/- jitter (a fraction).
    "RETRY_BACKOFF_BASE": 120.0,
    "RETRY_BACKOFF_CAP": 1800.0,
    "RETRY_JITTER": 0.1,
    # Recovery: a worker's lease lapses this long after it dies (the recovery bound is about
    # lease + interval); the reconciler runs every RECONCILE_INTERVAL seconds in the API
    # (0 turns the thread off) and leaves rows changed in the last RECONCILE_GRACE seconds.
    "WORKER_LEASE_SECONDS": 15.0,
    "RECONCILE_INTERVAL": 5.0,
    "RECONCILE_GRACE": 2.0,
    # Schedules: a due time missed while no scheduler ran fires "once" at the next pass, or
    # is skipped ("skip"); schedulers look for due schedules every SCHEDULER_INTERVAL seconds.
    "SCHEDULE_MISSED_POLICY": "once",
    "SCHEDULER_INTERVAL": 1.0,
    # Webhooks: HMAC-SHA256 secret, loopback allowed only for tests and local development,
    # attempts per delivery, backoff base (seconds), and how often the dispatcher looks.
    "WEBHOOK_SECRET": None,
    "WEBHOOK_ALLOW_LOOPBACK": 0,
    "WEBHOOK_MAX_ATTEMPTS": 3,
    "WEBHOOK_BACKOFF_SECONDS": 10.0,
    "WEBHOOK_TIMEOUT": 10.0,
    "WEBHOOK_INTERVAL": 1.0,
    # WEBHOOK_TIMEOUT bounds a whole delivery (resolve, connect, send, read), not each read.
    # Deliveries in flight at once per API process, and at most so many to one receiver host
    # and of one job owner, so that a slow receiver cannot hold up other owners' deliveries.
    "WEBHOOK_CONCURRENCY": 8,
    "WEBHOOK_HOST_CONCURRENCY": 2,
    "WEBHOOK_OWNER_CONCURRENCY": 4,
    # One request's (a batch's) webhook_url hosts: seconds they may take to resolve in all,
    # and most distinct names (a slow DNS server must not hold an API thread).
    "WEBHOOK_RESOLVE_SECONDS": 3.0,
    "WEBHOOK_MAX_HOSTS": 10,
    # Rate limits per API key (or client address when keys are off), flask-limiter syntax.
    "RATE_LIMIT_ENABLED": 1,
    "RATE_LIMIT_SUBMIT": "10/minute",
    "RATE_LIMIT_BATCH": "5/minute",
    "RATE_LIMIT_DEFAULT": "100/minute",
    # Most jobs one batch may hold.
    "BATCH_MAX_JOBS": 1000,
    # Most jobs one POST /jobs/cancel may cancel (ids listed, or matched by its filter).
    "BULK_CANCEL_MAX_IDS": 1000,
    # Most attempts a job may reach by POST /jobs/<id>/retry (409 past it; its own automatic
    # retries may still add max_retries more), and most schedules one owner may keep (409).
    "MAX_ATTEMPTS_PER_JOB": 100,
    "MAX_SCHEDULES_PER_OWNER": 1000,
    # Logging: "text" or "json".
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
    # "development" (set by `make run`, `python backend/app.py` and the tests) skips the
    # start-up check of secrets (backend/core/secrets_check.py); anything else is a deployment.
    "JOBSERVICE_ENV": "production",
    # Peers (IPs or CIDRs) whose X-Forwarded-For names the client: a reverse proxy on the same
    # host or pod. Anyone else's X-Forwarded-For is ignored (backend/api/forwarded.py).
    "TRUSTED_PROXIES": "127.0.0.1,::1",
}

_INT_KEYS = {
    "RQ_RESULT_TTL",
    "RQ_FAILURE_TTL",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "MAX_CONTENT_LENGTH",
    "MAX_JSON_DEPTH",
    "JOBS_PAGE_DEFAULT",
    "JOBS_PAGE_MAX",
    "JOBS_PAGE_MAX_BYTES",
    "MAX_ARGS_BYTES",
    "MAX_RESULT_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_PROGRESS_MESSAGE",
    "WEBHOOK_ALLOW_LOOPBACK",
    "WEBHOOK_MAX_ATTEMPTS",
    "WEBHOOK_CONCURRENCY",
    "WEBHOOK_HOST_CONCURRENCY",
    "WEBHOOK_OWNER_CONCURRENCY",
    "WEBHOOK_MAX_HOSTS",
    "RATE_LIMIT_ENABLED",
    "BATCH_MAX_JOBS",
    "BULK_CANCEL_MAX_IDS",
    "MAX_ATTEMPTS_PER_JOB",
    "MAX_SCHEDULES_PER_OWNER",
}
_FLOAT_KEYS = {
    "REPORT_RETRY_SECONDS",
    "PROGRESS_MIN_INTERVAL",
    "RETRY_BACKOFF_BASE",
    "RETRY_BACKOFF_CAP",
    "RETRY_JITTER",
    "WORKER_LEASE_SECONDS",
    "RECONCILE_INTERVAL",
    "RECONCILE_GRACE",
    "SCHEDULER_INTERVAL",
    "WEBHOOK_BACKOFF_SECONDS",
    "WEBHOOK_TIMEOUT",
    "WEBHOOK_INTERVAL",
    "WEBHOOK_RESOLVE_SECONDS",
}


def load(overrides: dict | None = None) -> dict[str, object]:
    """Return the settings: defaults, then the environment, then ``overrides``."""
    settings = dict(DEFAULTS)
    for key, _default in DEFAULTS.items():
        raw = os.environ.get(key)
        if raw is None or raw == "":
            continue
        if key in _INT_KEYS:
            settings[key] = int(raw)
        elif key in _FLOAT_KEYS:
            settings[key] = float(raw)
        else:
            settings[key] = raw
    settings.update(overrides or {})
    return settings


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
