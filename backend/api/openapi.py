"""The OpenAPI 3.0 description of the whole HTTP API, served at ``/openapi.json``, and the
answers that keep requests to it: ``OPTIONS`` lists the methods the document gives a path,
and a query parameter comes once.

The document says exactly what the code takes: required fields, one-of rules, ranges and
lengths come from the same constants and settings as the checks, so that a request valid by
the document is never refused as invalid (422) and one invalid by it is never accepted.
Schemathesis checks that (tests/test_openapi.py).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from backend.api.context import api_keys, settings
from backend.api.jobs import ATTEMPT_CURSOR_MAX
from backend.api.openapi_long_tasks import checkpoint_path_item, events_operation, logs_operation, long_task_schemas
from backend.api.openapi_monitoring import monitoring_paths, monitoring_schemas
from backend.api.openapi_queues import queue_paths, queue_schemas
from backend.api.openapi_rate_limits import rate_limit_paths, rate_limit_schemas
from backend.api.openapi_schemas import (
    EVENTS,
    OBJECT,
    SCRIPTED,
    STRING,
    component_schemas,
    json_content,
    operation,
    path_param,
    query_param,
    ref,
    single_report,
    submission,
)
from backend.api.openapi_search import LIST_DESCRIPTION, bulk_answer, cancel_filter_body, retry_path_item, search_params
from backend.api.payloads import MAX_IDEMPOTENCY_KEY
from backend.api.schedules import SCHEDULE_OUTPUT_FIELDS
from backend.core.cursors import CURSOR_PATTERN
from backend.core.errors import ValidationFailed
from backend.service.representations import JOB_FIELDS

bp = Blueprint("openapi", __name__)


def spec() -> dict:
    config = settings()
    caps = {
        "MAX_PROGRESS_MESSAGE": config.max_progress_message,
        "MAX_ERROR_BYTES": config.max_error_bytes,
    }
    job, jobs, error = ref("Job"), ref("JobList"), ref("Error")
    job_id, name, schedule_id = path_param("job_id"), path_param("name"), path_param("schedule_id")
    batch_id = path_param("batch_id")
    page_limit = query_param("limit", {"type": "integer", "minimum": 1, "maximum": config.jobs_page_max})
    # Empty: the first page.
    page_cursor = query_param("cursor", {"type": "string", "pattern": f"^({CURSOR_PATTERN.strip('^$')})?$"})

    def fields_param(allowed: tuple[str, ...], description: str) -> dict:
        return query_param(
            "fields",
            {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(allowed)}},
            style="form",
            explode=False,
            description=description,
        )

    list_params = [
        # An empty filter is no filter.
        *search_params(),
        page_limit,
        page_cursor,
        fields_param(JOB_FIELDS, "heavy fields (args, kwargs, result) to include in each job"),
    ]
    schedule_list_params = [
        page_limit,
        page_cursor,
        fields_param(SCHEDULE_OUTPUT_FIELDS, "heavy fields (args, kwargs) to include in each schedule"),
    ]
    attempt_params = [
        job_id,
        page_limit,
        # The last attempt number of the page before (next_cursor); empty: the first page.
        query_param("cursor", {"type": "string", "pattern": f"^([0-9]{{1,{len(str(ATTEMPT_CURSOR_MAX))}}})?$"}),
    ]
    idempotency_header = {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    }
    cancel_body = {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["job_ids"],
                "properties": {"job_ids": {"type": "array", "maxItems": config.bulk_cancel_max_ids, "items": STRING}},
            },
            cancel_filter_body(),
        ]
    }
    requeue_body = {
        "oneOf": [
            {"type": "object", "additionalProperties": False, "required": [key], "properties": {key: STRING}}
            for key in ("job_id", "rq_job_id")
        ]
    }
    batch_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "jobs": {
                "type": "array",
                "minItems": 1,
                "maxItems": config.batch_max_jobs,
                "items": submission(with_key=False),
            }
        },
    }
    internal = {"security": [{"internalToken": []}], "tags": ["internal"]}
    paths = {
        "/tasks": {"get": operation("The registered tasks with their parameters", "200", OBJECT, tags=["tasks"])},
        "/tasks/{name}": {
            "post": operation(
                "Start a job (200: the live job of the same request under this idempotency key)",
                "202",
                job,
                body=ref("JobSubmission"),
                params=[name, idempotency_header],
                tags=["tasks"],
                more={"200": {"description": "the job already recorded for this key", **json_content(job)}},
            )
        },
        "/tasks/{name}/batch": {
            "post": operation(
                "Start many jobs of one task (all or none)", "202", OBJECT, body=batch_body, params=[name]
            )
        },
        "/jobs": {"get": operation(LIST_DESCRIPTION, "200", jobs, params=list_params, tags=["jobs"])},
        "/jobs/cancel": {
            "post": operation(
                "Cancel jobs by ids, or the live jobs matching the filters (oldest first; dry_run only counts)",
                "200",
                bulk_answer("cancel"),
                body=cancel_body,
                tags=["jobs"],
            )
        },
        "/jobs/retry": retry_path_item(config.bulk_cancel_max_ids),
        "/jobs/{job_id}": {"get": operation("One job", "200", job, params=[job_id], tags=["jobs"])},
        "/jobs/{job_id}/attempts": {
            "get": operation(
                "A job's attempts, oldest first, a page at a time",
                "200",
                ref("AttemptList"),
                params=attempt_params,
                tags=["jobs"],
            )
        },
        "/jobs/{job_id}/events": {"get": events_operation(job_id)},
        "/jobs/{job_id}/logs": {"get": logs_operation(job_id)},
        "/jobs/{job_id}/webhooks": {
            "get": operation("A job's webhook deliveries", "200", OBJECT, params=[job_id], tags=["jobs"])
        },
        "/jobs/{job_id}/cancel": {
            "post": operation("Cancel a live job", "200", job, params=[job_id, SCRIPTED], tags=["jobs"])
        },
        "/jobs/{job_id}/retry": {
            "post": operation(
                "Run a FAILED or CANCELLED job again", "202", job, params=[job_id, SCRIPTED], tags=["jobs"]
            )
        },
        "/batches/{batch_id}": {"get": operation("A batch's counts and progress", "200", OBJECT, params=[batch_id])},
        "/batches/{batch_id}/cancel": {
            "post": operation("Cancel a batch's live jobs", "200", OBJECT, params=[batch_id, SCRIPTED])
        },
        "/scheduled-jobs": {
            "get": operation(
                "Schedules, oldest first, a page at a time",
                "200",
                ref("ScheduleList"),
                params=schedule_list_params,
                tags=["schedules"],
            ),
            "post": operation(
                "Create a schedule", "201", ref("Schedule"), body=ref("ScheduleCreate"), tags=["schedules"]
            ),
        },
        "/scheduled-jobs/{schedule_id}": {
            "get": operation("One schedule", "200", ref("Schedule"), params=[schedule_id], tags=["schedules"]),
            "patch": operation(
                "Change a schedule",
                "200",
                ref("Schedule"),
                body=ref("ScheduleChange"),
                params=[schedule_id],
                tags=["schedules"],
            ),
            "delete": operation("Delete a schedule", "204", params=[schedule_id, SCRIPTED], tags=["schedules"]),
        },
        "/scheduled-jobs/{schedule_id}/run": {
            "post": operation("Fire a schedule now", "202", job, params=[schedule_id, SCRIPTED], tags=["schedules"])
        },
        "/scheduled-jobs/{schedule_id}/jobs": {
            "get": operation("The jobs a schedule started", "200", OBJECT, params=[schedule_id], tags=["schedules"])
        },
        "/monitoring/health": {
            "get": operation(
                "Health of Redis, the store and workers",
                "200",
                ref("Health"),
                tags=["admin"],
                more={"503": {"description": "something is down", **json_content(ref("Health"))}},
            )
        },
        "/monitoring/queue/stats": {"get": operation("Queue and status counts", "200", OBJECT, tags=["admin"])},
        "/monitoring/queue/failed": {
            "get": operation(
                "Failed RQ jobs with their errors",
                "200",
                OBJECT,
                params=[query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
                tags=["admin"],
            ),
            "post": operation("Re-queue a failed job", "202", OBJECT, body=requeue_body, tags=["admin"]),
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["admin"],
                "responses": {
                    "200": {"description": "text format", "content": {"text/plain": {"schema": STRING}}},
                    "default": {"description": "an error", **json_content(error)},
                },
            }
        },
        "/internal/reports": {
            "post": {
                **operation("Worker reports, in a batch", "200", ref("ReportAnswers"), body=ref("ReportBatch")),
                **internal,
            }
        },
    }
    for event in EVENTS:
        # A log report's answer is the job's id alone (lines are no change of the job).
        answer = job if event != "log" else {"type": "object", "required": ["job_id"], "properties": {"job_id": STRING}}
        paths[f"/internal/jobs/{{job_id}}/{event}"] = {
            "post": {
                **operation(f"Worker report: {event}", "200", answer, body=single_report(event, caps), params=[job_id]),
                **internal,
            }
        }
    paths["/internal/jobs/{job_id}/checkpoint"] = checkpoint_path_item(job_id, internal)
    paths.update(queue_paths())
    paths.update(rate_limit_paths())
    paths.update(monitoring_paths())
    return {
        "openapi": "3.0.3",
        "info": {"title": "Job service", "version": "1.0"},
        "paths": paths,
        "components": {
            "schemas": {
                **component_schemas(caps),
                **long_task_schemas(),
                **queue_schemas(),
                **rate_limit_schemas(),
                **monitoring_schemas(),
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "internalToken": {"type": "apiKey", "in": "header", "name": "X-Internal-Token"},
            },
        },
        # With no API_KEYS the API serves loopback clients without a key (and says so here).
        "security": [{"apiKey": []}] if api_keys() else [],
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec())


@bp.before_app_request
def answer_options():
    """``OPTIONS`` answers with the methods of the route it matched, as the document lists them.

    Flask's own answer joins the methods of every route the path could match, so
    ``OPTIONS /jobs/cancel`` also offered GET (the path also matches ``/jobs/<job_id>``).
    """
    rule = request.url_rule
    if request.method != "OPTIONS" or rule is None or not getattr(rule, "provide_automatic_options", False):
        return None
    # A path has a rule per view (GET and POST of /scheduled-jobs are two): join those of this
    # path's template only.
    methods = set()
    for other in current_app.url_map.iter_rules():
        if other.rule == rule.rule:
            methods |= other.methods or set()
    response = current_app.response_class(status=200)
    response.headers["Allow"] = ", ".join(sorted(methods))
    return response


#: The blueprints of the documented API (not /rq, /dashboard or this document).
API_BLUEPRINTS = frozenset({"tasks", "jobs", "batches", "schedules", "internal", "monitoring", "metrics"})


@bp.before_app_request
def refuse_repeated_query_parameters():
    """A query parameter given twice (``?limit=5&limit=500``) is refused, not read as its first
    value: the document gives each parameter one value."""
    if not request.environ.get("QUERY_STRING") or request.blueprint not in API_BLUEPRINTS:
        return None
    repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if repeated:
        raise ValidationFailed(
            f"query parameter {repeated[0]!r} is given more than once", details={"repeated": repeated}
        )
    return None
