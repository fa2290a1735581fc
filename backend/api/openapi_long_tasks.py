"""The paths of /openapi.json for long tasks: a job's event stream and logs, and the workers'
checkpoint routes (``backend.api.openapi`` adds them to the others).

Apart from openapi.py so that each module stays short; like it, each schema states exactly what
the code takes (the same constants as the checks), which schemathesis verifies.
"""

from __future__ import annotations

from backend.api.internal import MAX_ATTEMPT
from backend.api.jobs import LOG_SEQ_MAX, LOGS_PAGE_MAX
from backend.api.openapi_schemas import ANY, INTEGER, NULLABLE_STRING, STRING, operation, query_param, ref
from backend.core.long_tasks import EVENT_KINDS, LOG_LEVELS

#: An event id as the stream sends it (a Redis stream entry id, ``<ms>-<seq>``).
EVENT_ID = {"type": "string", "minLength": 3, "maxLength": 41, "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": STRING}}

EVENTS_DESCRIPTION = """Server-Sent Events (`text/event-stream`), with the same auth and isolation as
`GET /jobs/{job_id}` (404 for another owner's job). The stream starts with `retry: 2000`, then one
frame per event: `id: <ms>-<seq>`, `event: <kind>`, `data: <JSON>`, and a blank line; a comment line
`: keep-alive` comes every 5 s. Kinds and their data:

- `status`: once at the start, then for every status the store holds when the API reads it (every
  EVENTS_POLL_SECONDS; a status shorter than that may be folded into the next, `started_at` says a
  job ran): the job's JSON as `GET /jobs/{job_id}` answers it without `args`, `kwargs`, `result`
  (schema `Job`).
- `progress`: `{"progress": 0-100, "message": str|null}` (schema `ProgressEvent`).
- `log`: one line the task logged: `{"at", "level", "message", "attempt"}` (schema `LogEvent`).
- `output`: what the task emitted with `current_job().emit(data)`: `{"data", "attempt"}`
  (schema `OutputEvent`).
- `end`: the final job JSON, whole (schema `Job`); the server then closes the stream.

A stream on an ended job sends its history, then `end` at once. A client that reconnects with the
id of the last event it got (the `Last-Event-ID` header, or `?last_event_id=`) gets only the events
after it (up to EVENTS_HISTORY events are kept, EVENTS_TTL_SECONDS after the job's last one), never
one twice; 204 when that id is the `end` event's. An id newer than every event counts as none on a
live job (the kept history is replayed), as past the end on an ended one (204)."""


def events_operation(job_id: dict) -> dict:
    """``GET /jobs/{job_id}/events``."""
    params = [job_id, {"name": "Last-Event-ID", "in": "header", "schema": EVENT_ID}]
    params.append(query_param("last_event_id", EVENT_ID))
    unavailable = "the process holds EVENTS_MAX_STREAMS streams, or Redis is unreachable"
    answer = operation(
        "A job's live events as Server-Sent Events (status, progress, log, output, then end)",
        "200",
        params=params,
        tags=["jobs"],
        more={
            "200": {
                "description": "the stream: id, event and data (JSON) per event; closed after end",
                "content": {"text/event-stream": {"schema": STRING}},
            },
            "204": {"description": "Last-Event-ID is the end event's: nothing more will come"},
            "400": {"description": "Last-Event-ID is not an event id", "content": _error()},
            "404": {"description": "no such job (or another owner's)", "content": _error()},
            "429": {
                "description": "this key holds EVENTS_MAX_STREAMS_PER_OWNER streams",
                "headers": RETRY_AFTER,
                "content": _error(),
            },  # fmt: skip
            "503": {"description": unavailable, "headers": RETRY_AFTER, "content": _error()},
        },
    )
    answer["description"] = EVENTS_DESCRIPTION
    return answer


def logs_operation(job_id: dict) -> dict:
    """``GET /jobs/{job_id}/logs``."""
    params = [
        job_id,
        query_param("after", {"type": "integer", "minimum": 0, "maximum": LOG_SEQ_MAX}, description="a line's seq"),
        query_param("limit", {"type": "integer", "minimum": 1, "maximum": LOGS_PAGE_MAX}),
    ]
    answer = operation("The lines a job's task logged, oldest first", "200", ref("JobLogs"), params=params,
                       tags=["jobs"])  # fmt: skip
    answer["description"] = (
        "Lines the task logged through `logging` (its log_level and up) or `current_job().log()`, "
        "oldest first, after the line whose seq is `after`. `next_after` goes on from the page's last "
        "line when more lines follow now (null: none yet). At most MAX_LOG_LINES_PER_JOB lines or "
        "MAX_LOG_BYTES_PER_JOB bytes are kept per job; past that a WARNING line '[log cut: ...]' says "
        "so and `truncated` is true. A bad `after` or `limit` is 400."
    )
    return answer


def checkpoint_path_item(job_id: dict, internal: dict) -> dict:
    """``PUT`` and ``GET /internal/jobs/{job_id}/checkpoint`` (the worker's checkpoint calls)."""
    attempt = {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPT}
    body = {"type": "object", "additionalProperties": False, "required": ["attempt", "state"],
            "properties": {"attempt": attempt, "state": ANY}}  # fmt: skip
    saved = {"type": "object", "required": ["checkpoint_at"], "properties": {"checkpoint_at": STRING}}
    read = {
        "type": "object",
        "required": ["state", "attempt", "checkpoint_at"],
        "properties": {"state": {"nullable": True}, "attempt": {**INTEGER, "nullable": True},
                       "checkpoint_at": NULLABLE_STRING},
    }  # fmt: skip
    return {
        "put": {
            **operation(
                "Save the job's checkpoint (409: not its current attempt, or ended; 413: over MAX_CHECKPOINT_BYTES)",
                "200",
                saved,
                body=body,
                params=[job_id],
            ),
            **internal,
        },  # fmt: skip
        "get": {
            **operation(
                "The job's newest checkpoint; with attempt=n, only one an attempt before n saved",
                "200",
                read,
                params=[job_id, query_param("attempt", attempt)],
            ),
            **internal,
        },  # fmt: skip
    }


def long_task_schemas() -> dict:
    """The component schemas of the logs page and of the event stream's data."""
    return {
        "JobLogs": {
            "type": "object",
            "required": ["job_id", "lines", "next_after", "truncated"],
            "properties": {
                "job_id": STRING,
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["seq", "attempt", "at", "level", "message"],
                        "properties": {
                            "seq": INTEGER,
                            "attempt": INTEGER,
                            "at": STRING,
                            "level": {"type": "string", "enum": list(LOG_LEVELS)},
                            "message": STRING,
                        },
                    },  # fmt: skip
                },
                "next_after": {**INTEGER, "nullable": True},
                "truncated": {"type": "boolean"},
            },
        },
        "ProgressEvent": {"type": "object", "properties": {"progress": INTEGER, "message": NULLABLE_STRING}},
        "LogEvent": {
            "type": "object",
            "properties": {"at": STRING, "level": STRING, "message": STRING, "attempt": INTEGER},
        },
        "OutputEvent": {"type": "object", "properties": {"data": ANY, "attempt": INTEGER}},
        "EventKind": {"type": "string", "enum": list(EVENT_KINDS)},
    }


def _error() -> dict:
    return {"application/json": {"schema": ref("Error")}}
