"""The schemas of /openapi.json (``backend.api.openapi`` puts them together with the paths).

Each states what the code takes, from the same constants and settings as the checks
(``backend.api.payloads``, ``backend.service.schedules``, the size caps).
"""

from __future__ import annotations

from backend.api.payloads import MAX_DEPENDENCIES, MAX_IDEMPOTENCY_KEY, MAX_RETRIES, MAX_TIMEOUT
from backend.api.schedules import MAX_NAME_LENGTH
from backend.core.interruptions import MAX_INTERRUPTIONS
from backend.core.long_tasks import (
    LOG_LEVELS,
    MAX_LOG_LINE_BYTES,
    MAX_LOG_LINES_PER_REPORT,
    MAX_SNOOZE_SECONDS,
    MAX_SNOOZES_LIMIT,
    WAITING_REASONS,
)
from backend.core.protocol import EVENTS, MAX_ATTEMPT, MAX_BATCH
from backend.core.settings import QUEUE_NAMES
from backend.core.states import LIVE, JobStatus
from backend.service.schedules import MAX_CRON_LENGTH, known_timezones

STATUSES = [status.value for status in JobStatus]
LIVE_STATUSES = [status.value for status in JobStatus if status in LIVE]
STRING, INTEGER, ANY = {"type": "string"}, {"type": "integer"}, {}
OBJECT = {"type": "object"}
NULLABLE_STRING = {"type": "string", "nullable": True}
#: Unix seconds by a worker's clock, as the internal routes take them (null: not given).
UNIX_TIME = {"type": "number", "minimum": 0, "maximum": 1e11, "exclusiveMaximum": True, "nullable": True}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def operation(summary: str, code: str, schema: dict | None = None, *, body=None, params=(), tags=(), more=None) -> dict:
    answer = {"description": summary, **(json_content(schema) if schema is not None else {})}
    responses = {code: answer, **(more or {}), "default": {"description": "an error", **json_content(ref("Error"))}}
    operation = {"summary": summary, "responses": responses, "tags": list(tags)}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {"required": True, **json_content(body)}
    return operation


def path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def query_param(name: str, schema: dict, **extra) -> dict:
    return {"name": name, "in": "query", "schema": schema, **extra}


# A state-changing request without a JSON body must carry this header (the browser guard):
# a page on another site cannot send it without a CORS preflight, which this API never grants.
SCRIPTED = {"name": "X-Requested-With", "in": "header", "required": True, "schema": STRING}


def _nullable(schema: dict) -> dict:
    nullable = {**schema, "nullable": True}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _call_options() -> dict:
    """What a job submission and a schedule share (``payloads.call_option``); null: the default."""
    return {
        "args": _nullable({"type": "array", "items": ANY}),
        "kwargs": _nullable(OBJECT),
        "priority": _nullable({"type": "string", "enum": list(QUEUE_NAMES)}),
        "timeout": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT}),
        "max_retries": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}),
    }


def submission(*, with_key: bool) -> dict:
    properties = {
        **_call_options(),
        "max_interruptions": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_INTERRUPTIONS}),
        "max_snoozes": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_SNOOZES_LIMIT}),
        "webhook_url": NULLABLE_STRING,
        "depends_on": _nullable(
            {"type": "array", "maxItems": MAX_DEPENDENCIES, "items": {"type": "string", "minLength": 1}}
        ),
        "allow_failure": {"type": "boolean"},
        "run_at": {"type": "string", "format": "date-time", "nullable": True},
    }
    if with_key:
        properties["idempotency_key"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "nullable": True,
        }
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _schedule_body(*, create: bool) -> dict:
    properties = {
        "task": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
        # Five fields, valid, and due at least once in 8 years (backend.service.schedules.check_cron).
        "cron": {"type": "string", "format": "cron", "maxLength": MAX_CRON_LENGTH, "example": "*/5 * * * *"},
        "timezone": _nullable({"type": "string", "enum": sorted(known_timezones())}),
        "enabled": {"type": "boolean", "nullable": True},
        **_call_options(),
    }
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if create:
        schema["required"] = ["name", "task", "cron"]
    return schema


def _report_item(event: str) -> dict:
    """One report of ``event`` in a batch: the fields of the other events are ignored, and one
    over a size cap is answered 422 in its own result (the batch is still 200)."""
    own = _report_fields(event, None)
    properties = {
        name: ANY
        for name in (
            "worker",
            "progress",
            "message",
            "result",
            "error",
            "interrupted",
            "unstarted",
            "seconds",
            "reason",
            "lines",
        )
    }
    properties.update(
        job_id=STRING,
        attempt=REPORT_ATTEMPT,
        event={"type": "string", "enum": [event]},
        at=UNIX_TIME,
        **own["properties"],
    )
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["job_id", "attempt", "event", *own["required"]],
        "properties": properties,
    }


#: A report's attempt: 0 names no attempt (answered 409 as a stale one), past nine digits is a 400.
REPORT_ATTEMPT = {"type": "integer", "minimum": 0, "maximum": MAX_ATTEMPT}


def _report_fields(event: str, caps: dict | None) -> dict:
    """The fields of a report of ``event``; with ``caps``, the size caps as lengths (the error's
    cap is in bytes: its length in ASCII)."""
    message, error = {"type": "string", "nullable": True}, {"type": "string"}
    if caps is not None:
        message["maxLength"], error["maxLength"] = caps["MAX_PROGRESS_MESSAGE"], caps["MAX_ERROR_BYTES"]
    if event == "started":
        return {"required": ["worker"], "properties": {"worker": STRING}}
    if event == "progress":
        return {"required": ["progress"], "properties": {"progress": _progress(), "message": message}}
    if event == "completed":
        return {"required": [], "properties": {"result": ANY}}
    if event == "snoozed":
        seconds = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": MAX_SNOOZE_SECONDS}
        return {"required": ["seconds"], "properties": {"seconds": seconds, "reason": message}}
    if event == "log":
        return {"required": ["lines"], "properties": {"lines": _log_lines(caps)}}
    # interrupted: the worker's own failure (it died, lost Redis), not the task's; absent or null: false.
    # unstarted: the worker ended the run before its task began (the store never confirmed the
    # start): a new attempt after a short delay, neither a retry nor an interruption spent.
    flag = {"type": "boolean", "nullable": True}
    return {"required": ["error"], "properties": {"error": error, "interrupted": flag, "unstarted": flag}}


def _log_lines(caps: dict | None) -> dict:
    """A ``log`` report's lines; with ``caps``, a message's cap in bytes as a length (in ASCII)."""
    message = {"type": "string"} if caps is None else {"type": "string", "maxLength": MAX_LOG_LINE_BYTES}
    line = {
        "type": "object",
        "additionalProperties": False,
        "required": ["at", "level", "message"],
        "properties": {"at": {**UNIX_TIME, "nullable": False}, "level": {"type": "string", "enum": list(LOG_LEVELS)},
                       "message": message},
    }  # fmt: skip
    return {"type": "array", "minItems": 1, "maxItems": MAX_LOG_LINES_PER_REPORT, "items": line}


def _progress() -> dict:
    return {"type": "number", "minimum": 0, "maximum": 100}


def single_report(event: str, caps: dict) -> dict:
    own = _report_fields(event, caps)
    return {
        "type": "object",
        "required": ["attempt", *own["required"]],
        "properties": {"attempt": REPORT_ATTEMPT, **own["properties"]},
    }


def component_schemas(caps: dict) -> dict:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": STRING, "message": STRING, "details": ANY},
                }
            },
        },
        "Job": {
            "type": "object",
            "required": ["job_id", "task", "status", "priority", "progress", "attempt", "created_at"],
            "properties": {
                "job_id": STRING,
                "task": STRING,
                "status": {"type": "string", "enum": STATUSES},
                "priority": {"type": "string", "enum": list(QUEUE_NAMES)},
                "args": {"type": "array", "items": ANY},
                "kwargs": OBJECT,
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "progress_message": NULLABLE_STRING,
                "result": {"nullable": True},
                "error": NULLABLE_STRING,
                "attempt": {"type": "integer", "minimum": 1},
                "retry_count": {"type": "integer", "minimum": 0},
                "max_retries": {"type": "integer", "minimum": 0},
                "interruptions": {"type": "integer", "minimum": 0},
                "max_interruptions": {"type": "integer", "minimum": 0},
                "timeout": INTEGER,
                "webhook_delivered": {"type": "boolean", "nullable": True},
                "depends_on": {"type": "array", "items": STRING},
                "allow_failure": {"type": "boolean"},
                "waiting_for": {"type": "array", "items": STRING},
                # Why a live job that is not running waits (null for a running or ended job).
                "waiting_reason": {"type": "string", "enum": [*WAITING_REASONS, None], "nullable": True},
                "queue_position": {"type": "integer", "minimum": 1, "nullable": True},
                "snoozes": {"type": "integer", "minimum": 0},
                "max_snoozes": {"type": "integer", "minimum": 0},
                **{
                    name: NULLABLE_STRING
                    for name in (
                        "created_at",
                        "updated_at",
                        "started_at",
                        "completed_at",
                        "next_retry_at",
                        "webhook_url",
                        "rq_job_id",
                        "worker",
                        "cancelled_by",
                        "cancelled_at",
                        "run_at",
                        "schedule_id",
                        "batch_id",
                        "resumes_at",
                        "waiting_detail",
                        "checkpoint_at",
                    )
                },  # fmt: skip
            },
        },
        "JobSubmission": submission(with_key=True),
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {"jobs": {"type": "array", "items": ref("Job")}, "next_cursor": NULLABLE_STRING},
        },
        "Schedule": {
            "type": "object",
            "required": ["id", "name", "task", "cron", "enabled"],
            "properties": {
                "id": STRING,
                "name": STRING,
                "task": STRING,
                "cron": STRING,
                "timezone": STRING,
                "args": {"type": "array", "items": ANY},
                "kwargs": OBJECT,
                "priority": STRING,
                "timeout": INTEGER,
                "max_retries": INTEGER,
                "enabled": {"type": "boolean"},
                "next_run_at": NULLABLE_STRING,
                "last_run_at": NULLABLE_STRING,
                "last_job_id": NULLABLE_STRING,
            },
        },
        "ScheduleList": {
            "type": "object",
            "required": ["scheduled_jobs", "next_cursor"],
            "properties": {
                "scheduled_jobs": {"type": "array", "items": ref("Schedule")},
                "next_cursor": NULLABLE_STRING,
            },
        },
        "AttemptList": {
            "type": "object",
            "required": ["job_id", "attempts", "next_cursor"],
            "properties": {
                "job_id": STRING,
                "attempts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["attempt", "outcome", "error"],
                        "properties": {
                            "attempt": INTEGER,
                            "worker": NULLABLE_STRING,
                            "started_at": NULLABLE_STRING,
                            "ended_at": NULLABLE_STRING,
                            "outcome": NULLABLE_STRING,
                            "error": NULLABLE_STRING,
                        },
                    },
                },
                "next_cursor": NULLABLE_STRING,
            },
        },
        "ScheduleCreate": _schedule_body(create=True),
        "ScheduleChange": _schedule_body(create=False),
        "Health": {
            "type": "object",
            "required": ["status", "failing", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "failing": {"type": "array", "items": STRING},
                "checks": OBJECT,
            },
        },
        "ReportBatch": {
            "type": "object",
            "required": ["reports"],
            "properties": {
                "sent_at": {**UNIX_TIME, "description": "the worker's clock when sending"},
                "reports": {
                    "type": "array",
                    "maxItems": MAX_BATCH,
                    "items": {"oneOf": [_report_item(event) for event in EVENTS]},
                },
            },
        },
        "ReportAnswers": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {"type": "integer", "enum": [200, 404, 409, 422, 500]},
                            "error": STRING,
                        },
                    },
                },
                "limits": OBJECT,
            },
        },
    }
