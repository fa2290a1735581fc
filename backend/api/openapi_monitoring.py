"""The paths of /openapi.json for the dashboard's data: ``GET /monitoring/history`` and
``GET /monitoring/queue/workers`` (``backend.api.openapi`` adds them to the others)."""

from __future__ import annotations

from backend.api.openapi_schemas import INTEGER, NULLABLE_STRING, STRING, operation, query_param, ref

_ERROR = {"application/json": {"schema": ref("Error")}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": STRING}}
_COUNT = {"type": "integer", "minimum": 0}
_MS = {"type": "number", "minimum": 0, "nullable": True}


def _object(properties: dict) -> dict:
    return {"type": "object", "required": list(properties), "properties": properties}


def monitoring_paths() -> dict:
    """``/monitoring/history`` and ``/monitoring/queue/workers``."""
    history = operation(
        "The service's own history: jobs completed and failed per step, queue depths, run times per task",
        "200",
        ref("History"),
        params=[
            query_param(
                "window",
                {"type": "string", "enum": ["hour", "day"], "default": "hour"},
                description="hour: 60 steps of 60 s ending with the last full minute; day: 96 steps of 900 s",
            )
        ],
        tags=["admin"],
        more={"503": {"description": "the store is unavailable", "headers": _RETRY_AFTER, "content": _ERROR}},
    )
    history["description"] = (
        "Rolled up per UTC minute from the jobs table by the housekeeping pass (every HOUSEKEEPING_INTERVAL "
        "seconds, minutes that ended at least 5 s before), kept HISTORY_DAYS days. p50_ms and p95_ms come "
        "from counts per run-time bucket (bounds 1, 2, 5, 10, ... 3,600,000 ms), interpolated linearly "
        "within the bucket; null when no run completed. A step no pass rolled yet counts 0: `rolled_until` "
        "says up to when the history is rolled."
    )
    workers = operation(
        "Every worker RQ knows of: queues, state, current job, last heartbeat, jobs done, alive",
        "200",
        ref("WorkerList"),
        tags=["admin"],
        more={"503": {"description": "Redis is unreachable", "headers": _RETRY_AFTER, "content": _ERROR}},
    )
    return {"/monitoring/history": {"get": history}, "/monitoring/queue/workers": {"get": workers}}


def monitoring_schemas() -> dict:
    """The component schemas of those routes."""
    sample = _object({"at": STRING, "depth": _COUNT})
    return {
        "History": _object(
            {
                "window": {"type": "string", "enum": ["hour", "day"]},
                "step_seconds": {"type": "integer", "enum": [60, 900]},
                "rolled_until": NULLABLE_STRING,
                "points": {
                    "type": "array",
                    "items": _object({"at": STRING, "completed": _COUNT, "failed": _COUNT}),
                },
                "queues": {
                    "type": "object",
                    "description": "per queue, its depth per step (the step's last sample); steps without one left out",
                    "additionalProperties": {"type": "array", "items": sample},
                },
                "tasks": {
                    "type": "array",
                    "items": _object(
                        {"task": STRING, "completed": _COUNT, "failed": _COUNT, "p50_ms": _MS, "p95_ms": _MS}
                    ),
                },
            }
        ),
        "WorkerList": _object(
            {
                "workers": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": STRING,
                            "state": STRING,
                            "alive": {"type": "boolean", "description": "it holds its lease"},
                            "queues": {"type": "array", "items": STRING},
                            "current_job": {**NULLABLE_STRING, "description": "the store's job id it runs"},
                            "current_rq_job_id": NULLABLE_STRING,
                            "last_heartbeat": NULLABLE_STRING,
                            "birth": NULLABLE_STRING,
                            "successful_jobs": INTEGER,
                            "failed_jobs": INTEGER,
                            "jobs_done": INTEGER,
                        }
                    ),
                }
            }
        ),
    }
