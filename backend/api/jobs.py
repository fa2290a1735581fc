"""Client routes for jobs: read one, list them."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from backend.api import job_filters
from backend.api.auth import authenticate_client
from backend.api.context import services, settings
from backend.api.payloads import json_body, query_fields, query_int
from backend.api.rate_limits import submit_limit
from backend.core.errors import BadRequest, ValidationFailed
from backend.core.job_filters import JobFilter
from backend.core.pages import encode, page_parts
from backend.service import job_logs, job_search
from backend.service.representations import HEAVY_FIELDS, JOB_FIELDS, attempt_dict, job_dict

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate_client)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    app = current_app._get_current_object()  # once: each read through the proxy resolves it again
    body = services(app).job_reader.json(job_id, owner=g.principal.scope)
    return app.response_class(body, mimetype="application/json")


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
    """Jobs newest first, those matching the search filters (``backend/api/job_filters.py``),
    without their arguments and results unless ``?fields=`` names them; a page holds at most
    ``limit`` jobs and stops once it reaches ``JOBS_PAGE_MAX_BYTES``."""
    config = settings()
    filt = job_filters.from_query()
    limit = query_int("limit", config.jobs_page_default, 1, config.jobs_page_max)
    body = services().job_reader.list_json(
        filt=filt,
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
    jobs = services().jobs
    job = jobs.retry_job(job_id, owner=g.principal.scope, max_attempts=settings().max_attempts_per_job)
    # Its dependencies read (a query only for a job that has some): one whose parents all ended
    # does not say it waits for them.
    response = jsonify(job_dict(job, waiting_for=jobs.waiting_for(job)))
    response.status_code = 202
    return response


@bp.post("/jobs/cancel")
def cancel_many():
    """Cancel ``{"job_ids": [...]}``, or the live jobs matching the search filters (as ``GET
    /jobs``'s, in a JSON object; ``kwargs`` an object), at most ``BULK_CANCEL_MAX_IDS`` per
    request (by filter: the oldest first, ``more`` says if some are left; ``dry_run``: only count)."""
    body = json_body()
    jobs = services().jobs
    cap = settings().bulk_cancel_max_ids
    # Presence decides, so that a null is refused like any other value of the wrong kind.
    if "job_ids" in body:
        job_ids = body["job_ids"]
        if set(body) - {"job_ids"}:
            raise ValidationFailed(f"send job_ids or a filter, not both (also got {sorted(set(body) - {'job_ids'})})")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise ValidationFailed("job_ids must be a list of job ids")
        if len(job_ids) > cap:
            raise ValidationFailed(
                f"job_ids may list at most {cap} jobs per request (BULK_CANCEL_MAX_IDS), got {len(job_ids)}",
                details={"setting": "BULK_CANCEL_MAX_IDS", "limit": cap},
            )
        more = False
    else:
        filt, dry_run = _bulk_filter(body, "cancel", job_search.CANCELLABLE)
        job_ids, more = job_search.matching_ids(jobs, filt, statuses=job_search.CANCELLABLE, cap=cap)
        if dry_run:
            return jsonify({"matched": len(job_ids), "more": more, "dry_run": True})
    cancelled, skipped = jobs.cancel_many(job_ids, owner=g.principal.scope, by=g.principal.owner)
    return jsonify({"cancelled": cancelled, "skipped": skipped, "more": more})


@bp.post("/jobs/retry")
@submit_limit
def retry_many():
    """Retry the FAILED and CANCELLED jobs matching the search filters (a JSON object, as for
    ``POST /jobs/cancel``), each as ``POST /jobs/<id>/retry`` does, at most
    ``BULK_CANCEL_MAX_IDS`` per request, the oldest first (``more`` says if some are left)."""
    body = json_body()
    filt, dry_run = _bulk_filter(body, "retry", job_search.RETRYABLE)
    jobs = services().jobs
    # Only the jobs a retry can act on: one at MAX_ATTEMPTS_PER_JOB would be skipped by every request.
    max_attempts = settings().max_attempts_per_job
    job_ids, more = job_search.matching_ids(
        jobs, filt, statuses=job_search.RETRYABLE, cap=settings().bulk_cancel_max_ids, max_attempts=max_attempts
    )
    if dry_run:
        return jsonify({"matched": len(job_ids), "more": more, "dry_run": True})
    retried, skipped = job_search.retry_many(jobs, job_ids, owner=g.principal.scope, max_attempts=max_attempts)
    return jsonify({"retried": retried, "skipped": skipped, "more": more})


def _bulk_filter(body: dict, action: str, statuses: tuple[str, ...]) -> tuple[JobFilter, bool]:
    """A bulk action's filter and its ``dry_run``; a filter there must be (an empty one would act
    on every job), and a status filter must name one the action acts on."""
    filt = job_filters.from_body(body, allowed=("dry_run",))
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValidationFailed(f"dry_run must be true or false, got {dry_run!r:.100}")
    if not job_filters.names_a_filter(body):
        raise ValidationFailed(
            f"send a filter to {action} by ({', '.join([*job_filters.FILTER_LENGTHS, 'kwargs'])})"
            + (", or job_ids" if action == "cancel" else "")
        )
    if filt.status is not None and filt.status not in statuses:
        raise ValidationFailed(f"status must be one of {list(statuses)} to {action}, got {filt.status!r}")
    return filt, dry_run
