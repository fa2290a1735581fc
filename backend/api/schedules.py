"""Client routes for cron schedules.

A schedule's body is checked here with the same checks as a job submission for what the two
share (``payloads.call_option``: args, kwargs, priority, timeout, max_retries, and the size cap
of the arguments), so a schedule can never hold a job that ``POST /tasks/<name>`` would refuse.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from flask import Blueprint, current_app, g, jsonify, request

from backend.api.auth import authenticate_client
from backend.api.context import services, settings
from backend.api.payloads import CALL_OPTIONS, call_option, check_argument_size, json_body, query_fields, query_int
from backend.api.rate_limits import submit_limit
from backend.core.cursors import encode_cursor
from backend.core.errors import NotFound, ValidationFailed
from backend.core.pages import encode, page_parts
from backend.service.representations import HEAVY_FIELDS, iso, job_dict
from backend.service.schedules import check_cron, check_timezone
from backend.tasks import get_task

if TYPE_CHECKING:
    from backend.store.models import ScheduledJob

bp = Blueprint("schedules", __name__, url_prefix="/scheduled-jobs")
bp.before_request(authenticate_client)


def _schedules():
    return services().schedules


#: The fields of a schedule as the API shows it; the heavy ones (its arguments, up to
#: MAX_ARGS_BYTES) only when asked for in a list (``?fields=``).
SCHEDULE_OUTPUT_FIELDS = (
    "id", "name", "task", "cron", "timezone", "args", "kwargs", "priority", "timeout", "max_retries",
    "enabled", "next_run_at", "last_run_at", "last_job_id", "created_at",
)  # fmt: skip
SCHEDULE_HEAVY_FIELDS = ("args", "kwargs")


def schedule_dict(schedule: ScheduledJob, *, omit: frozenset[str] = frozenset()) -> dict:
    """A schedule (its row, or a row of its columns but those in ``omit``) as the API shows it."""
    shown = {
        "id": schedule.id,
        "name": schedule.name,
        "task": schedule.task,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "priority": schedule.priority,
        "timeout": schedule.timeout,
        "max_retries": schedule.max_retries,
        "enabled": schedule.enabled,
        "next_run_at": iso(schedule.next_run_at),
        "last_run_at": iso(schedule.last_run_at),
        "last_job_id": schedule.last_job_id,
        "created_at": iso(schedule.created_at),
    }
    for name in SCHEDULE_HEAVY_FIELDS:
        if name not in omit:
            shown[name] = getattr(schedule, name)
    return {name: shown[name] for name in SCHEDULE_OUTPUT_FIELDS if name in shown}


SCHEDULE_FIELDS = ("task", "name", "cron", "timezone", "enabled", *CALL_OPTIONS)
REQUIRED_FIELDS = ("name", "task", "cron")
MAX_NAME_LENGTH = 200


def schedule_fields(body: dict, *, partial: bool) -> dict:
    """Check a schedule body (all of it to create, ``partial`` to change one); returns the
    fields to store. A null optional field means its default, as in a job submission.

    Raises:
        ValidationFailed: an unknown, missing or invalid field (the message names it), or a task
            that is not registered (``POST /tasks/<name>`` answers 404 for that: there the URL
            names it).
    """
    unknown = sorted(set(body) - set(SCHEDULE_FIELDS))
    if unknown:
        raise ValidationFailed(f"unknown fields {unknown}", details={"allowed": sorted(SCHEDULE_FIELDS)})
    if not partial:
        missing = [name for name in REQUIRED_FIELDS if body.get(name) is None]
        if missing:
            raise ValidationFailed(f"missing fields {missing}", details={"required": list(REQUIRED_FIELDS)})
    fields: dict = {}
    # In this order (the task first), whatever the body's order, so one body gets one answer.
    for key in SCHEDULE_FIELDS:
        if key not in body and partial:
            continue
        value = body.get(key)
        if key == "name":
            if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LENGTH:
                raise ValidationFailed(
                    f"name must be a string of 1 to {MAX_NAME_LENGTH} characters, got {str(value)[:40]!r}"
                )
        elif key == "task":
            if not isinstance(value, str) or not value:
                raise ValidationFailed(f"task must name a registered task, got {str(value)[:40]!r}")
            try:
                get_task(value)
            except NotFound as exc:
                # A field's value, not the resource the URL names: a 404 to PATCH /scheduled-jobs/<id>
                # would read as "no such schedule". The same message and list of tasks.
                raise ValidationFailed(exc.message, details=exc.details) from None
        elif key == "cron":
            value = check_cron(value)
        elif key == "timezone":
            value = "UTC" if value is None else check_timezone(value)
        elif key == "enabled":
            value = True if value is None else value
            if not isinstance(value, bool):
                raise ValidationFailed(f"enabled must be true or false, got {str(value)[:40]!r}")
        else:
            value = call_option(key, value)
        fields[key] = value
    return fields


def _check_call(task: str, args: list, kwargs: dict) -> None:
    check_argument_size(args, kwargs)
    get_task(task).check_arguments(args, kwargs)


@bp.get("")
def list_schedules():
    """Schedules oldest first, a page at a time like ``GET /jobs``: without their arguments
    unless ``?fields=`` names them, at most ``limit``, and no more than fit in
    ``JOBS_PAGE_MAX_BYTES`` (the first always does, so that ``next_cursor`` moves on)."""
    config = settings()
    limit = query_int("limit", config.jobs_page_default, 1, config.jobs_page_max)
    omit = frozenset(SCHEDULE_HEAVY_FIELDS) - query_fields("schedule", SCHEDULE_OUTPUT_FIELDS, SCHEDULE_HEAVY_FIELDS)
    budget = config.jobs_page_max_bytes
    rows = _schedules().page(
        owner=g.principal.scope, limit=limit + 1, cursor=request.args.get("cursor") or None, omit=omit
    )
    with contextlib.closing(rows):
        parts, next_cursor = page_parts(
            rows, lambda row: encode(schedule_dict(row, omit=omit)), encode_cursor, limit=limit, max_bytes=budget
        )
    body = b'{"scheduled_jobs":[' + b",".join(parts) + b'],"next_cursor":' + encode(next_cursor) + b"}"
    return current_app.response_class(body, mimetype="application/json")


@bp.post("")
@submit_limit
def create_schedule():
    fields = schedule_fields(json_body(), partial=False)
    _check_call(fields["task"], fields["args"], fields["kwargs"])
    schedule = _schedules().create(
        owner=g.principal.owner, fields=fields, max_per_owner=settings().max_schedules_per_owner
    )
    response = jsonify(schedule_dict(schedule))
    response.status_code = 201
    return response


@bp.get("/<schedule_id>")
def get_schedule(schedule_id: str):
    return jsonify(schedule_dict(_schedules().get(schedule_id, owner=g.principal.scope)))


@bp.patch("/<schedule_id>")
def update_schedule(schedule_id: str):
    current = _schedules().get(schedule_id, owner=g.principal.scope)
    fields = schedule_fields(json_body(), partial=True)
    merged = {"task": current.task, "args": current.args, "kwargs": current.kwargs, **fields}
    _check_call(merged["task"], merged["args"], merged["kwargs"])
    schedule = _schedules().update(schedule_id, owner=g.principal.scope, fields=fields)
    return jsonify(schedule_dict(schedule))


@bp.delete("/<schedule_id>")
def delete_schedule(schedule_id: str):
    _schedules().delete(schedule_id, owner=g.principal.scope)
    return "", 204


@bp.post("/<schedule_id>/run")
@submit_limit
def run_schedule(schedule_id: str):
    job = _schedules().run_now(schedule_id, owner=g.principal.scope)
    response = jsonify(job_dict(job))
    response.status_code = 202
    return response


@bp.get("/<schedule_id>/jobs")
def schedule_jobs(schedule_id: str):
    schedule = _schedules().get(schedule_id, owner=g.principal.scope)
    # Like a page of GET /jobs: without arguments and results, so that the answer stays small.
    jobs = [job_dict(job, omit=frozenset(HEAVY_FIELDS)) for job in _schedules().jobs_of(schedule.id)]
    return jsonify({"id": schedule.id, "jobs": jobs})
