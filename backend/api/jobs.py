"""Client routes for jobs: read one, list them."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from backend.api.auth import authenticate_client
from backend.api.payloads import query_int
from backend.api.representations import attempt_dict, job_dict
from backend.errors import ValidationFailed
from backend.states import JobStatus

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate_client)


def _jobs():
    return current_app.extensions["jobs"]


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    job = _jobs().get_job(job_id, owner=g.principal.scope)
    return jsonify(job_dict(job))


@bp.get("/jobs/<job_id>/attempts")
def get_attempts(job_id: str):
    job = _jobs().get_job(job_id, owner=g.principal.scope)
    return jsonify({"job_id": job.id, "attempts": [attempt_dict(a) for a in _jobs().get_attempts(job.id)]})


@bp.get("/jobs")
def list_jobs():
    config = current_app.config
    status = request.args.get("status") or None
    if status is not None:
        try:
            status = JobStatus(status.upper())
        except ValueError:
            raise ValidationFailed(f"status must be one of {[s.value for s in JobStatus]}, got {status!r}") from None
    limit = query_int("limit", config["JOBS_PAGE_DEFAULT"], 1, config["JOBS_PAGE_MAX"])
    jobs, next_cursor = _jobs().list_jobs(
        owner=g.principal.scope,
        status=status,
        task=request.args.get("task") or None,
        limit=limit,
        cursor=request.args.get("cursor") or None,
    )
    return jsonify({"jobs": [job_dict(job) for job in jobs], "next_cursor": next_cursor})
