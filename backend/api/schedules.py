"""Client routes for cron schedules."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify

from backend.api.auth import authenticate_client
from backend.api.payloads import json_body
from backend.models import ScheduledJob
from backend.representations import iso, job_dict
from backend.schedules import schedule_fields
from backend.tasks import get_task

bp = Blueprint("schedules", __name__, url_prefix="/scheduled-jobs")
bp.before_request(authenticate_client)


def _schedules():
    return current_app.extensions["schedules"]


def schedule_dict(schedule: ScheduledJob) -> dict:
    return {
        "id": schedule.id,
        "name": schedule.name,
        "task": schedule.task,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "args": schedule.args,
        "kwargs": schedule.kwargs,
        "priority": schedule.priority,
        "timeout": schedule.timeout,
        "max_retries": schedule.max_retries,
        "enabled": schedule.enabled,
        "next_run_at": iso(schedule.next_run_at),
        "last_run_at": iso(schedule.last_run_at),
        "last_job_id": schedule.last_job_id,
        "created_at": iso(schedule.created_at),
    }


def _defaults() -> dict:
    return {
        "timeout": current_app.config["DEFAULT_JOB_TIMEOUT"],
        "max_retries": current_app.config["DEFAULT_MAX_RETRIES"],
    }


@bp.get("")
def list_schedules():
    return jsonify({"scheduled_jobs": [schedule_dict(s) for s in _schedules().list(owner=g.principal.scope)]})


@bp.post("")
def create_schedule():
    fields = schedule_fields(json_body(), partial=False, defaults=_defaults())
    get_task(fields["task"]).check_arguments(fields["args"], fields["kwargs"])
    schedule = _schedules().create(owner=g.principal.owner, fields=fields)
    response = jsonify(schedule_dict(schedule))
    response.status_code = 201
    return response


@bp.get("/<schedule_id>")
def get_schedule(schedule_id: str):
    return jsonify(schedule_dict(_schedules().get(schedule_id, owner=g.principal.scope)))


@bp.patch("/<schedule_id>")
def update_schedule(schedule_id: str):
    current = _schedules().get(schedule_id, owner=g.principal.scope)
    fields = schedule_fields(json_body(), partial=True, defaults=_defaults())
    merged = {"task": current.task, "args": current.args, "kwargs": current.kwargs, **fields}
    get_task(merged["task"]).check_arguments(merged["args"], merged["kwargs"])
    schedule = _schedules().update(schedule_id, owner=g.principal.scope, fields=fields)
    return jsonify(schedule_dict(schedule))


@bp.delete("/<schedule_id>")
def delete_schedule(schedule_id: str):
    _schedules().delete(schedule_id, owner=g.principal.scope)
    return "", 204


@bp.post("/<schedule_id>/run")
def run_schedule(schedule_id: str):
    job = _schedules().run_now(schedule_id, owner=g.principal.scope)
    response = jsonify(job_dict(job))
    response.status_code = 202
    return response


@bp.get("/<schedule_id>/jobs")
def schedule_jobs(schedule_id: str):
    schedule = _schedules().get(schedule_id, owner=g.principal.scope)
    return jsonify({"id": schedule.id, "jobs": [job_dict(job) for job in _schedules().jobs_of(schedule.id)]})
