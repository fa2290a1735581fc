"""The OpenAPI 3.0 description of the whole HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from backend.config import QUEUE_NAMES
from backend.representations import JOB_FIELDS
from backend.states import JobStatus

bp = Blueprint("openapi", __name__)

STATUSES = [status.value for status in JobStatus]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _answers(code: str, description: str, schema: dict | None = None) -> dict:
    answer = {"description": description}
    if schema is not None:
        answer.update(_json(schema))
    return {code: answer, "default": {"description": "an error", **_json(_ref("Error"))}}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _op(summary: str, code: str, schema: dict | None = None, *, body: dict | None = None, params=(), tags=()):
    operation = {"summary": summary, "responses": _answers(code, summary, schema), "tags": list(tags)}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(body)}
    return operation


NULLABLE_STRING = {"type": "string", "nullable": True}
OBJECT = {"type": "object"}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            }
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "task", "status", "priority", "progress", "attempt", "created_at"],
        "properties": {
            "job_id": {"type": "string"},
            "task": {"type": "string"},
            "status": {"type": "string", "enum": STATUSES},
            "priority": {"type": "string", "enum": list(QUEUE_NAMES)},
            "args": {"type": "array", "items": {}},
            "kwargs": OBJECT,
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "progress_message": NULLABLE_STRING,
            "result": {"nullable": True},
            "error": NULLABLE_STRING,
            "created_at": {"type": "string"},
            "updated_at": NULLABLE_STRING,
            "started_at": NULLABLE_STRING,
            "completed_at": NULLABLE_STRING,
            "attempt": {"type": "integer"},
            "retry_count": {"type": "integer", "minimum": 0},
            "max_retries": {"type": "integer", "minimum": 0},
            "next_retry_at": NULLABLE_STRING,
            "timeout": {"type": "integer"},
            "webhook_url": NULLABLE_STRING,
            "webhook_delivered": {"type": "boolean", "nullable": True},
            "rq_job_id": NULLABLE_STRING,
            "worker": NULLABLE_STRING,
            "cancelled_by": NULLABLE_STRING,
            "cancelled_at": NULLABLE_STRING,
            "run_at": NULLABLE_STRING,
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "allow_failure": {"type": "boolean"},
            "waiting_for": {"type": "array", "items": {"type": "string"}},
            "schedule_id": NULLABLE_STRING,
            "batch_id": NULLABLE_STRING,
        },
    },
    "JobSubmission": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "args": {"type": "array", "items": {}},
            "kwargs": OBJECT,
            "priority": {"type": "string", "enum": list(QUEUE_NAMES)},
            "timeout": {"type": "integer", "minimum": 1},
            "max_retries": {"type": "integer", "minimum": 0},
            "webhook_url": NULLABLE_STRING,
            "idempotency_key": NULLABLE_STRING,
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "allow_failure": {"type": "boolean"},
            "run_at": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}, "next_cursor": NULLABLE_STRING},
    },
    "Schedule": {
        "type": "object",
        "required": ["id", "name", "task", "cron", "enabled"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "task": {"type": "string"},
            "cron": {"type": "string"},
            "timezone": {"type": "string"},
            "args": {"type": "array", "items": {}},
            "kwargs": OBJECT,
            "priority": {"type": "string"},
            "enabled": {"type": "boolean"},
            "next_run_at": NULLABLE_STRING,
            "last_run_at": NULLABLE_STRING,
            "last_job_id": NULLABLE_STRING,
        },
    },
    "ScheduleBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "task": {"type": "string"},
            "cron": {"type": "string", "example": "*/5 * * * *"},
            "args": {"type": "array", "items": {}},
            "kwargs": OBJECT,
            "priority": {"type": "string", "enum": list(QUEUE_NAMES)},
            "enabled": {"type": "boolean"},
            "timezone": {"type": "string"},
            "timeout": {"type": "integer", "minimum": 1},
            "max_retries": {"type": "integer", "minimum": 0},
        },
    },
    "Report": {
        "type": "object",
        "required": ["attempt"],
        "properties": {
            "attempt": {"type": "integer"},
            "worker": {"type": "string"},
            "progress": {"type": "number"},
            "message": NULLABLE_STRING,
            "result": {},
            "error": {"type": "string"},
        },
    },
    "ReportBatch": {
        "type": "object",
        "required": ["reports"],
        "properties": {
            "sent_at": {"type": "number", "description": "the worker's clock when sending (unix seconds)"},
            "reports": {
                "type": "array",
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "required": ["job_id", "attempt", "event"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "attempt": {"type": "integer"},
                        "event": {"type": "string", "enum": ["started", "progress", "completed", "failed"]},
                        "at": {"type": "number", "description": "the worker's clock at the event"},
                        "worker": {"type": "string"},
                        "progress": {"type": "number", "minimum": 0, "maximum": 100},
                        "message": NULLABLE_STRING,
                        "result": {},
                        "error": {"type": "string"},
                    },
                },
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
                        "error": {"type": "string"},
                    },
                },
            },
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
}


def spec() -> dict:
    job, jobs = _ref("Job"), _ref("JobList")
    job_id, name, schedule_id = _path_param("job_id"), _path_param("name"), _path_param("schedule_id")
    list_params = [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUSES}},
        {"name": "task", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {
            "name": "fields",
            "in": "query",
            "description": "fields to include besides the default ones: args, kwargs, result (comma separated)",
            "style": "form",
            "explode": False,
            "schema": {"type": "array", "items": {"type": "string", "enum": list(JOB_FIELDS)}},
        },
    ]
    internal = {"security": [{"internalToken": []}], "tags": ["internal"]}
    paths = {
        "/tasks": {"get": _op("The registered tasks with their parameters", "200", OBJECT, tags=["tasks"])},
        "/tasks/{name}": {
            "post": _op("Start a job", "202", job, body=_ref("JobSubmission"), params=[name], tags=["tasks"])
        },
        "/tasks/{name}/batch": {
            "post": _op(
                "Start many jobs of one task (all or none)",
                "202",
                OBJECT,
                body={"type": "object", "properties": {"jobs": {"type": "array", "items": _ref("JobSubmission")}}},
                params=[name],
                tags=["tasks"],
            )
        },
        "/jobs": {"get": _op("Jobs, newest first", "200", jobs, params=list_params, tags=["jobs"])},
        "/jobs/cancel": {
            "post": _op(
                "Cancel jobs by ids or by a filter",
                "200",
                OBJECT,
                body={
                    "type": "object",
                    "properties": {
                        "job_ids": {"type": "array", "items": {"type": "string"}},
                        "status": {"type": "string"},
                        "task": {"type": "string"},
                    },
                },
                tags=["jobs"],
            )
        },
        "/jobs/{job_id}": {"get": _op("One job", "200", job, params=[job_id], tags=["jobs"])},
        "/jobs/{job_id}/attempts": {"get": _op("A job's attempts", "200", OBJECT, params=[job_id], tags=["jobs"])},
        "/jobs/{job_id}/webhooks": {
            "get": _op("A job's webhook deliveries", "200", OBJECT, params=[job_id], tags=["jobs"])
        },
        "/jobs/{job_id}/cancel": {"post": _op("Cancel a live job", "200", job, params=[job_id], tags=["jobs"])},
        "/jobs/{job_id}/retry": {
            "post": _op("Run a FAILED or CANCELLED job again", "202", job, params=[job_id], tags=["jobs"])
        },
        "/batches/{batch_id}": {
            "get": _op("A batch's counts and progress", "200", OBJECT, params=[_path_param("batch_id")])
        },
        "/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch's live jobs", "200", OBJECT, params=[_path_param("batch_id")])
        },
        "/scheduled-jobs": {
            "get": _op("Schedules", "200", OBJECT, tags=["schedules"]),
            "post": _op("Create a schedule", "201", _ref("Schedule"), body=_ref("ScheduleBody"), tags=["schedules"]),
        },
        "/scheduled-jobs/{schedule_id}": {
            "get": _op("One schedule", "200", _ref("Schedule"), params=[schedule_id], tags=["schedules"]),
            "patch": _op(
                "Change a schedule",
                "200",
                _ref("Schedule"),
                body=_ref("ScheduleBody"),
                params=[schedule_id],
                tags=["schedules"],
            ),
            "delete": _op("Delete a schedule", "204", params=[schedule_id], tags=["schedules"]),
        },
        "/scheduled-jobs/{schedule_id}/run": {
            "post": _op("Fire a schedule now", "202", job, params=[schedule_id], tags=["schedules"])
        },
        "/scheduled-jobs/{schedule_id}/jobs": {
            "get": _op("The jobs a schedule started", "200", OBJECT, params=[schedule_id], tags=["schedules"])
        },
        "/monitoring/health": {"get": _op("Health of Redis, the store and workers", "200", OBJECT, tags=["admin"])},
        "/monitoring/queue/stats": {"get": _op("Queue and status counts", "200", OBJECT, tags=["admin"])},
        "/monitoring/queue/workers": {"get": _op("Workers", "200", OBJECT, tags=["admin"])},
        "/monitoring/queue/failed": {
            "get": _op("Failed RQ jobs with their errors", "200", OBJECT, tags=["admin"]),
            "post": _op(
                "Re-queue a failed job",
                "202",
                OBJECT,
                body={"type": "object", "properties": {"job_id": {"type": "string"}, "rq_job_id": {"type": "string"}}},
                tags=["admin"],
            ),
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["admin"],
                "responses": {
                    "200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "default": {"description": "an error", **_json(_ref("Error"))},
                },
            }
        },
    }
    paths["/internal/reports"] = {
        "post": {
            **_op("Worker reports, in a batch", "200", _ref("ReportAnswers"), body=_ref("ReportBatch")),
            **internal,
        }
    }
    for event in ("started", "progress", "completed", "failed"):
        paths[f"/internal/jobs/{{job_id}}/{event}"] = {
            "post": {**_op(f"Worker report: {event}", "200", job, body=_ref("Report"), params=[job_id]), **internal}
        }
    # The browser guard (backend/api/browser_guard.py) refuses a write that declares no JSON
    # body and sends no X-Requested-With (415), so the body-less writes document the header.
    requested_with = {"name": "X-Requested-With", "in": "header", "required": True, "schema": {"type": "string"}}
    for item in paths.values():
        for method, operation in item.items():
            if method in ("post", "put", "patch", "delete") and "requestBody" not in operation:
                operation.setdefault("parameters", []).append(requested_with)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Job service", "version": "1.0"},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "internalToken": {"type": "apiKey", "in": "header", "name": "X-Internal-Token"},
            },
        },
        "security": [{"apiKey": []}],
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec())
