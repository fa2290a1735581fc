"""Client routes for tasks: list them, start a job, start a batch of jobs."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request, url_for

from backend.api.auth import authenticate_client
from backend.api.context import services, settings
from backend.api.payloads import job_request, json_body
from backend.api.rate_limits import limiter, submit_limit
from backend.core.errors import ValidationFailed
from backend.core.pages import encode
from backend.service.representations import job_dict
from backend.tasks import all_tasks, get_task

bp = Blueprint("tasks", __name__)
bp.before_request(authenticate_client)


@bp.get("/tasks")
def list_tasks():
    return jsonify({"tasks": [spec.describe() for spec in all_tasks()]})


@bp.post("/tasks/<name>")
@submit_limit
def submit(name: str):
    spec = get_task(name)
    body = json_body()
    job_req = job_request(spec, body, idempotency_header=request.headers.get("Idempotency-Key"))
    jobs = services().jobs
    job, created = jobs.submit(job_req, owner=g.principal.owner)
    # Compact JSON as GET /jobs/<id> serves it, and the job's path without a URL map lookup: the
    # hottest write's answer (jsonify and url_for cost ~7% of its CPU, issue 17).
    body = encode(job_dict(job, waiting_for=jobs.waiting_for(job)))
    response = current_app.response_class(body, status=202 if created else 200, mimetype="application/json")
    response.headers["Location"] = f"{request.script_root}/jobs/{job.id}"
    return response


@bp.post("/tasks/<name>/batch")
@limiter.limit(lambda: settings().rate_limit_batch, scope="batch")
def submit_batch(name: str):
    """Start many jobs of one task: all are recorded, or none (422 naming the bad one)."""
    spec = get_task(name)
    body = json_body()
    unknown = sorted(set(body) - {"jobs"})
    if unknown:
        raise ValidationFailed(f'unknown fields {unknown}; send {{"jobs": [...]}}')
    items = body.get("jobs")
    limit = settings().batch_max_jobs
    if not isinstance(items, list) or not items or len(items) > limit:
        raise ValidationFailed(f"jobs must be a list of 1 to {limit} job bodies")
    requests_ = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationFailed(f"jobs[{index}] must be an object, got {type(item).__name__}")
        try:
            requests_.append(job_request(spec, item))
        except ValidationFailed as exc:
            raise ValidationFailed(f"jobs[{index}]: {exc.message}", details={"index": index}) from None
    if any(r.idempotency_key for r in requests_):
        raise ValidationFailed("idempotency_key is not supported inside a batch")
    batch, job_ids = services().jobs.create_batch(requests_, owner=g.principal.owner)
    response = jsonify({"batch_id": batch.id, "task": batch.task, "size": batch.size, "job_ids": job_ids})
    response.status_code = 202
    response.headers["Location"] = url_for("batches.get_batch", batch_id=batch.id)
    return response
