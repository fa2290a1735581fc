"""What long tasks may send while they run: bounds shared by the worker and the API.

A task may emit output for live streams, save a checkpoint, snooze, and log. Each has a cap
here, read by both ends (the worker refuses or shortens before sending, the API refuses what is
over), so that nothing a task sends can grow memory or the store without bound.
"""

from __future__ import annotations

#: ``current_job().emit(data)``: the most compact-JSON bytes one output event may hold.
MAX_OUTPUT_BYTES = 16 * 1024
#: ``current_job().checkpoint(state)``: the most compact-JSON bytes one checkpoint may hold.
MAX_CHECKPOINT_BYTES = 64 * 1024
#: One captured log line: longer messages are shortened (their beginning is kept).
MAX_LOG_LINE_BYTES = 4 * 1024
#: Per job, in the store: lines past either cap are not kept; one marker line says so.
MAX_LOG_LINES_PER_JOB = 1000
MAX_LOG_BYTES_PER_JOB = 256 * 1024
#: Lines per ``log`` report.
MAX_LOG_LINES_PER_REPORT = 200
#: ``raise Snooze(seconds, reason)``: the longest snooze (30 days) and the default cap on
#: how many times one job may snooze (``max_snoozes`` at submission, 0..MAX_SNOOZES_LIMIT).
MAX_SNOOZE_SECONDS = 30 * 24 * 3600
DEFAULT_MAX_SNOOZES = 100
MAX_SNOOZES_LIMIT = 10_000
#: The outcome recorded on an attempt that ended by snoozing (no failure, no retry spent).
SNOOZED_OUTCOME = "SNOOZED"
#: The log levels a line may carry (logging's names).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Event kinds of ``GET /jobs/<job_id>/events`` (Server-Sent Events).
EVENT_KINDS = ("status", "progress", "log", "output", "end")
#: Waiting reasons of a live job that is not running (``waiting_reason`` in the job's JSON).
WAITING_REASONS = (
    "queued",
    "scheduled",
    "retry_backoff",
    "snoozed",
    "dependencies",
    "concurrency_limit",
    "rate_limit",
    "queue_paused",
    "no_worker",
)
