"""Logging set-up: one line per event, as text or as JSON lines (LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
import sys

#: Fields that log calls pass with ``extra=`` and that JSON lines carry as keys of their own.
EVENT_FIELDS = ("job_id", "attempt", "worker", "task", "status")


def job_fields(job, **more) -> dict:
    """``extra=`` for a log line about ``job``: its id, attempt, worker, task and status."""
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "worker": job.worker,
        "task": job.task,
        "status": job.status,
        **more,
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if getattr(record, name, None) is not None:
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(*, fmt: str = "text", level: str = "INFO") -> None:
    """Send the service's logs to stderr, once per process."""
    root = logging.getLogger()
    if any(getattr(h, "_jobservice", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._jobservice = True
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
