"""Client routes for tasks: list them, start a job."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request, url_for

from backend.api.auth import authenticate_client
from backend.api.payloads import job_request, json_body
from backend.api.representations import job_dict
from backend.tasks import all_tasks, get_task

bp = Blueprint("tasks", __name__)
bp.before_request(authenticate_client)


@bp.get("/tasks")
def list_tasks():
    return jsonify({"tasks": [spec.describe() for spec in all_tasks()]})


@bp.post("/tasks/<name>")
def submit(name: str):
    spec = get_task(name)
    body = json_body()
    job_req = job_request(spec, body, idempotency_header=request.headers.get("Idempotency-Key"))
    job, created = current_app.extensions["jobs"].submit(job_req, owner=g.principal.owner)
    response = jsonify(job_dict(job))
    response.status_code = 202 if created else 200
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response
