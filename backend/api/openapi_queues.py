"""The paths of /openapi.json for queues: ``GET /queues`` and pausing and resuming one
(``backend.api.openapi`` adds them to the others; apart so that each module stays short)."""

from __future__ import annotations

from backend.api.openapi_schemas import INTEGER, NULLABLE_STRING, SCRIPTED, STRING, operation, ref
from backend.core.settings import QUEUE_NAMES

QUEUE_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": f"a queue: one of {', '.join(QUEUE_NAMES)} (any other is 404)",
    "schema": {"type": "string", "minLength": 1},
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": STRING}}
_ERROR = {"application/json": {"schema": ref("Error")}}


def _command(summary: str, description: str) -> dict:
    answer = operation(
        summary,
        "200",
        ref("QueuePause"),
        params=[QUEUE_NAME, SCRIPTED],
        tags=["admin"],
        more={
            "404": {"description": "no such queue", "content": _ERROR},
            "503": {
                "description": "the store recorded it but Redis did not answer (workers see it once Redis is "
                "back; sending it again is safe), or the store is unavailable",
                "headers": RETRY_AFTER,
                "content": _ERROR,
            },
        },
    )
    answer["description"] = description
    return answer


def queue_paths() -> dict:
    """``/queues``, ``/queues/{name}/pause`` and ``/queues/{name}/resume``."""
    overview = operation(
        "Each queue: depth, paused (since when, by whom), live workers listening, jobs completed in the last minute",
        "200",
        ref("QueueList"),
        tags=["admin"],
        more={"503": {"description": "Redis or the store is unavailable", "headers": RETRY_AFTER, "content": _ERROR}},
    )
    return {
        "/queues": {"get": overview},
        "/queues/{name}/pause": {
            "post": _command(
                "Pause a queue: workers start none of its jobs until it is resumed",
                "Recorded in the store (it survives API, worker and Redis restarts), then set in Redis, which "
                "every worker's pop reads atomically: once this answers, no worker takes a job of the queue "
                "(one taken just before still starts). "
                "Running jobs finish; the other queues are served. The queue's jobs stay QUEUED with "
                "`waiting_reason: queue_paused`. Idempotent: pausing a paused queue changes nothing "
                "(`changed: false`, its first `paused_at` and `paused_by`).",
            )
        },
        "/queues/{name}/resume": {
            "post": _command(
                "Resume a paused queue: workers start its jobs again within seconds",
                "Idempotent: resuming a queue that is not paused changes nothing (`changed: false`).",
            )
        },
    }


def queue_schemas() -> dict:
    """The component schemas of the queue routes."""
    name = {"type": "string", "enum": list(QUEUE_NAMES)}
    return {
        "QueuePause": {
            "type": "object",
            "required": ["queue", "paused", "changed", "paused_at", "paused_by"],
            "properties": {
                "queue": name,
                "paused": {"type": "boolean"},
                "changed": {"type": "boolean", "description": "whether this request paused or resumed it"},
                "paused_at": NULLABLE_STRING,
                "paused_by": NULLABLE_STRING,
            },
        },
        "QueueList": {
            "type": "object",
            "required": ["queues"],
            "properties": {
                "queues": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "name",
                            "depth",
                            "paused",
                            "paused_at",
                            "paused_by",
                            "paused_in_redis",
                            "workers",
                            "completed_last_minute",
                        ],
                        "properties": {
                            "name": name,
                            "depth": INTEGER,
                            "paused": {"type": "boolean", "description": "as the store records it"},
                            "paused_at": NULLABLE_STRING,
                            "paused_by": NULLABLE_STRING,
                            "paused_in_redis": {
                                "type": "boolean",
                                "description": "what workers obey; differs from paused only until the next "
                                "reconciler pass after Redis lost it",
                            },
                            "workers": {"type": "array", "items": STRING},
                            "completed_last_minute": INTEGER,
                        },
                    },
                }
            },
        },
    }
