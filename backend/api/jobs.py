"""Client routes for jobs: read one, list them."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from backend.api.auth import authenticate_client
from backend.api.context import services, settings
from backend.api.payloads import json_body, query_fields, query_int
from backend.api.rate_limits import submit_limit
from backend.core.errors import BadRequest, ValidationFailed
from backend.core.pages import encode, page_parts
from backend.core.states import JobStatus
from backend.service import job_logs
from backend.service.representations import HEAVY_FIELDS, JOB_FIELDS, attempt_dict, job_dict

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate_client)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    body = services().job_reader.json(job_id, owner=g.principal.scope)
    return current_app.response_class(body, mimetype="application/json")


@bp.get("/jobs/<job_id>/webhooks")
def get_webhooks(job_id: str):
    job = services().jobs.get_job(job_id, owner=g.principal.scope)
    return jsonify(
        {
            "job_id": job.id,
            "webhook_url": job.webhook_url,
            "webhook_delivered": job.webhook_delivered,
            "deliveries": services().webhooks.deliveries(job.id),
        }
    )


@bp.get("/jobs/<job_id>/attempts")
def get_attempts(job_id: str):
    """A job's attempts, oldest first, a page at a time like ``GET /jobs``: at most ``limit``,
    and no more than fit in ``JOBS_PAGE_MAX_BYTES`` (each error may hold ``MAX_ERROR_BYTES``);
    ``next_cursor`` (the last attempt's number) goes on from there."""
    config, jobs = settings(), services().jobs
    job = jobs.get_job(job_id, owner=g.principal.scope)
    limit = query_int("limit", config.jobs_page_default, 1, config.jobs_page_max)
    # Empty: the first page, as for GET /jobs.
    after = query_int("cursor", 0, 0, ATTEMPT_CURSOR_MAX) if request.args.get("cursor") else 0
    parts, next_cursor = page_parts(
        jobs.get_attempts(job.id, after=after, limit=limit + 1),
        lambda attempt: encode(attempt_dict(attempt)),
        lambda attempt: str(attempt.attempt),
        limit=limit,
        max_bytes=config.jobs_page_max_bytes,
    )
    body = b'{"job_id":%s,"attempts":[%s],"next_cursor":%s}' % (encode(job.id), b",".join(parts), encode(next_cursor))
    return current_app.response_class(body, mimetype="application/json")


#: The largest attempt number a cursor of GET /jobs/<id>/attempts may name (nine digits).
ATTEMPT_CURSOR_MAX = 999_999_999
#: GET /jobs/<id>/logs: lines per page, by default and at most; the largest ``after`` (a BIGINT id).
LOGS_PAGE_DEFAULT, LOGS_PAGE_MAX = 200, 1000
LOG_SEQ_MAX = 10**18 - 1


@bp.get("/jobs/<job_id>/logs")
def get_logs(job_id: str):
    """The lines the job's task logged, oldest first, those after ``seq`` ``after`` (default 0):
    at most ``limit`` (1-1000, default 200) and no more than fit in ``JOBS_PAGE_MAX_BYTES``.
    ``next_after`` goes on from there (null: no more lines yet); ``truncated``: lines were dropped
    (the job's log passed its cap; a marker line says where)."""
    after = _query_int_400("after", 0, 0, LOG_SEQ_MAX)
    limit = _query_int_400("limit", LOGS_PAGE_DEFAULT, 1, LOGS_PAGE_MAX)
    bundle = services()
    job = bundle.jobs.get_job(job_id, owner=g.principal.scope)
    parts, next_after = page_parts(
        job_logs.page(bundle.sessions, job.id, after=after, limit=limit + 1),
        lambda line: encode(job_logs.line_dict(line)),
        lambda line: line.id,
        limit=limit,
        max_bytes=settings().jobs_page_max_bytes,
    )
    body = b'{"job_id":%s,"lines":[%s],"next_after":%s,"truncated":%s}' % (
        encode(job.id), b",".join(parts), encode(next_after), encode(job_logs.is_cut(job.log_lines)),
    )  # fmt: skip
    return current_app.response_class(body, mimetype="application/json")


def _query_int_400(name: str, default: int, low: int, high: int) -> int:
    """``query_int``, a bad value answered 400 (a malformed query, not a body that failed its checks)."""
    try:
        return query_int(name, default, low, high)
    except ValidationFailed as exc:
        raise BadRequest(exc.message) from None


@bp.get("/jobs")
def list_jobs():
    """Jobs newest first, without their arguments and results unless ``?fields=`` names them;
    a page holds at most ``limit`` jobs and stops once it reaches ``JOBS_PAGE_MAX_BYTES``."""
    config = settings()
    status = _status(request.args.get("status"))
    limit = query_int("limit", config.jobs_page_default, 1, config.jobs_page_max)
    body = services().job_reader.list_json(
        owner=g.principal.scope,
        status=status,
        task=request.args.get("task") or None,
        limit=limit,
        cursor=request.args.get("cursor") or None,
        include=query_fields("job", JOB_FIELDS, HEAVY_FIELDS),
        max_bytes=config.jobs_page_max_bytes,
    )
    return current_app.response_class(body, mimetype="application/json")


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = services().jobs.cancel_job(job_id, owner=g.principal.scope, by=g.principal.owner)
    return jsonify(job_dict(job))


@bp.post("/jobs/<job_id>/retry")
@submit_limit
def retry_job(job_id: str):
    job = services().jobs.retry_job(job_id, owner=g.principal.scope, max_attempts=settings().max_attempts_per_job)
    response = jsonify(job_dict(job))
    response.status_code = 202
    return response


@bp.post("/jobs/cancel")
def cancel_many():
    """Cancel ``{"job_ids": [...]}``, or the live jobs matching ``{"status", "task"}``, at most
    ``BULK_CANCEL_MAX_IDS`` per request (the filter: the oldest first, ``more`` says if some are left)."""
    body = json_body()
    jobs = services().jobs
    cap = settings().bulk_cancel_max_ids
    unknown = sorted(set(body) - {"job_ids", "status", "task"})
    if unknown:
        raise ValidationFailed(f"unknown fields {unknown}; send job_ids, or status and/or task")
    more = False
    # Presence decides, so that a null is refused like any other value of the wrong kind.
    if "job_ids" in body:
        job_ids = body["job_ids"]
        if "status" in body or "task" in body:
            raise ValidationFailed("send job_ids or a filter (status and/or task), not both")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise ValidationFailed("job_ids must be a list of job ids")
        if len(job_ids) > cap:
            raise ValidationFailed(
                f"job_ids may list at most {cap} jobs per request (BULK_CANCEL_MAX_IDS), got {len(job_ids)}",
                details={"setting": "BULK_CANCEL_MAX_IDS", "limit": cap},
            )
    elif "status" not in body and "task" not in body:
        raise ValidationFailed("send job_ids, or a filter: status and/or task")
    else:
        status, task = body.get("status"), body.get("task")
        live = [s.value for s in JobStatus if not s.is_terminal]
        if "status" in body and status not in live:
            raise ValidationFailed(f"status must be a live status to cancel, one of {live}, got {status!r}")
        if "task" in body and (not isinstance(task, str) or not task):
            raise ValidationFailed(f"task must be a task name, got {task!r}")
        job_ids = jobs.live_job_ids(
            owner=g.principal.scope, status=JobStatus(status) if status else None, task=task, limit=cap + 1
        )
        more, job_ids = len(job_ids) > cap, job_ids[:cap]
    cancelled, skipped = jobs.cancel_many(job_ids, owner=g.principal.scope, by=g.principal.owner)
    return jsonify({"cancelled": cancelled, "skipped": skipped, "more": more})


def _status(raw) -> JobStatus | None:
    if raw is None or raw == "":
        return None
    try:
        return JobStatus(str(raw).upper())
    except ValueError:
        raise ValidationFailed(f"status must be one of {[s.value for s in JobStatus]}, got {raw!r}") from None
