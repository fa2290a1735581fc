"""RQ Dashboard, mounted in the API at /rq for admins only.

We mount rq-dashboard's JSON endpoints and actions, but not its pages: its page scripts
(rq-dashboard 0.9.0) put job fields into the page as HTML (``_.template`` with ``<%= %>``), so
a tenant's result or error such as ``<img src=x onerror=...>`` ran as script in the admin's
browser. Our own pages (``templates/rq/page.html`` and ``static/rq_dashboard.js``) read the same
JSON and insert every value as text. They also need no inline script and no ``eval``
(``_.template`` compiles with ``new Function``), so the Content-Security-Policy of
``backend.api.html_security`` can forbid both.

Our own blueprint, not rq-dashboard's, so that we choose which of its views are reachable and
how: every action that changes Redis (requeue, delete, empty, compact) answers POST only;
rq-dashboard 0.9.0 also requeues all failed jobs on a GET, which any page could trigger with
an ``<img>``. Bad paths (an unknown Redis instance, queue, registry, job; a page that is not
a number) answer 404, where rq-dashboard raised a 500; an error of Redis or RQ that remains
answers in JSON, 503 while Redis is unreachable, never 500.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import rq_dashboard
import rq_dashboard.web as rqd
from flask import Blueprint, Flask, current_app, jsonify, render_template, request, url_for

from backend.api.auth import require_admin
from backend.api.context import services
from backend.api.error_handlers import error_response
from backend.api.rate_limits import limiter
from backend.broker import inspection, registries
from backend.broker.errors import (
    BrokenDependency,
    BrokerError,
    BrokerUnreachable,
    NoSuchJob,
    RefusedOperation,
    UndecodableJob,
)
from backend.core.errors import NotFound
from backend.core.logs import redact
from backend.core.settings import QUEUE_NAMES

log = logging.getLogger(__name__)

URL_PREFIX = "/rq"
REGISTRIES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled")
ORDERS = ("asc", "dsc")
MAX_PER_PAGE = 200
# Far past any real queue; a page beyond Redis' 64-bit ranges was a Redis error (a 500).
MAX_PAGE = 10_000_000

# The blueprint keeps rq-dashboard's name: its JSON views build their links with
# url_for(".jobs_overview", ...), relative to the blueprint that serves them. Static files
# (Bootstrap's stylesheet) come from the installed package, unchanged.
bp = Blueprint(
    "rq_dashboard",
    __name__,
    static_folder=str(Path(rq_dashboard.__file__).parent / "static"),
    static_url_path="/static",
)
# Registered first so that nobody reaches the dashboard without an admin key.
bp.before_request(require_admin)


@bp.before_request
def _refuse_bad_paths() -> None:
    args = request.view_args or {}
    # We mount one Redis; rq-dashboard raised LookupError (a 500) for any other number.
    if args.get("instance_number", 0) != 0:
        raise NotFound(f"no Redis instance {args['instance_number']}; this dashboard has only instance 0")
    # The service's queues only: rq-dashboard answered an unknown name as an empty queue (200),
    # and Compact of one raised a 500.
    if args.get("queue_name") is not None and args["queue_name"] not in QUEUE_NAMES:
        raise NotFound(f"unknown queue {args['queue_name'][:60]!r}; one of {', '.join(QUEUE_NAMES)}")
    # The queue adapter's rule for a job id, so that /rq and the API agree: None for an id RQ
    # cannot hold (RQ raised ValueError, a 500, for anything but letters, digits, _ and -) and
    # for a job that is gone.
    if "job_id" in args and services().queues.fetch(args["job_id"]) is None:
        raise NotFound(f"no job {args['job_id'][:60]!r} in Redis (it may have expired)")
    if "registry_name" in args and args["registry_name"] not in REGISTRIES:
        raise NotFound(f"unknown registry {args['registry_name']!r}; one of {', '.join(REGISTRIES)}")
    if "order" in args and args["order"] not in ORDERS:
        raise NotFound(f"unknown order {args['order']!r}; asc or dsc")
    for name, top in (("per_page", MAX_PER_PAGE), ("page", MAX_PAGE)):
        if name in args:
            value = str(args[name])
            # isdecimal() alone accepts other scripts' digits; int() would then parse them.
            if not (value.isascii() and value.isdecimal()) or not 1 <= int(value) <= top:
                raise NotFound(f"{name} must be a whole number from 1 to {top}, got {value[:20]!r}")


@bp.errorhandler(NoSuchJob)
def _no_such_job(exc: Exception):
    return error_response(404, "not_found", "no such job in Redis (it may have expired)", None)


@bp.errorhandler(RefusedOperation)
def _invalid_operation(exc: Exception):
    # e.g. requeueing a job that is not in the failed registry
    message = str(exc)[:500] or "RQ refused this operation on the job in its current state"
    return error_response(409, "invalid_job_operation", message, None)


@bp.errorhandler(UndecodableJob)
@bp.errorhandler(BrokenDependency)
def _unreadable_job(exc: Exception):
    # A job written by another RQ client (another serializer), or a broken dependency.
    message = str(exc)[:500] or "RQ cannot read this job"
    return error_response(409, "unreadable_job", message, None)


# The net under the checks above: whatever else Redis or RQ raises answers in JSON, not 500.
def _redis_unreachable(exc: Exception):
    log.warning("RQ Dashboard: Redis unreachable: %s", redact(str(exc)))
    return error_response(503, "service_unavailable", "Redis is unreachable", None, {"Retry-After": "5"})


for _error in BrokerUnreachable:
    bp.register_error_handler(_error, _redis_unreachable)


@bp.errorhandler(BrokerError)
def _redis_refused(exc: Exception):
    # e.g. WRONGTYPE: a key that something other than RQ wrote under RQ's name.
    log.warning("RQ Dashboard: Redis refused a command: %s", redact(str(exc)))
    return error_response(409, "redis_refused", f"Redis refused the operation: {redact(str(exc))[:300]}", None)


def compact_queue(queue_name: str):
    """Drop the ids of jobs that are gone from the queue; rq-dashboard answered 500 for an
    empty queue (RQ renames the list first, which Redis refuses for a list that does not exist)."""
    inspection.compact(current_app.redis_conn, queue_name)
    return jsonify(status="OK"), {"Cache-Control": "no-store"}


UNREADABLE = "(unreadable: not written by this service's JSON serializer)"


def _readable(read):
    """A job field that RQ decodes with our JSON serializer, or UNREADABLE: a job that another
    RQ client wrote with another serializer (pickle) raised in the middle of the view (a 500)."""
    try:
        return read()
    except (UndecodableJob, ValueError):
        return UNREADABLE


def _job_summary(job) -> dict:
    """A job's line in a list (rq-dashboard's ``serialize_job``, which raised on such a job)."""
    latest = _readable(lambda: inspection.latest_result(job))
    return {
        "id": job.id,
        "created_at": rqd.serialize_date(job.created_at),
        "started_at": rqd.serialize_date(job.started_at),
        "ended_at": rqd.serialize_date(job.ended_at),
        "exc_info": latest if isinstance(latest, str) else latest.exc_string if latest else None,
        "description": rqd.format_job_description(job),
    }


def requeue_all(queue_name: str):
    """Requeue every failed job of a queue. rq-dashboard's stopped at the first id whose job
    had expired (NoSuchJobError: a 404 after requeueing some); such an id is dropped here."""
    count = inspection.requeue_failed(current_app.redis_conn, queue_name)
    return jsonify(status="OK", count=count), {"Cache-Control": "no-store"}


def list_jobs(instance_number: int, queue_name: str, registry_name: str, per_page: str, order: str, page: str):
    """A page of a queue or registry, newest last (asc) or first (dsc). rq-dashboard's page n
    held up to n × per_page jobs (it gave RQ an end index where RQ takes a length, and widened
    registries' ranges by the offset), and a descending page past the last one nearly every
    job: answers unbounded in size, and pages that overlapped."""
    per_page, page = int(per_page), int(page)  # checked by _refuse_bad_paths
    total, page_jobs = inspection.job_page(
        current_app.redis_conn, queue_name, registry_name, per_page=per_page, page=page, order=order
    )
    jobs = [_job_summary(job) for job in page_jobs]
    num_pages = -(-total // per_page)

    def link(number: int) -> dict:
        url = url_for(
            ".jobs_overview",
            instance_number=instance_number,
            queue_name=queue_name,
            registry_name=registry_name,
            per_page=per_page,
            order=order,
            page=number,
        )
        return {"number": number, "url": url}

    pagination = {
        "current_page": page,
        "num_pages": num_pages,
        "pages_in_window": [link(n) for n in rqd.pagination_window(total, page, per_page)],
        "first_page": link(1),
        "last_page": link(max(1, num_pages)),
    }
    if page > 1:
        pagination["prev_page"] = link(page - 1)
    if page < num_pages:
        pagination["next_page"] = link(page + 1)
    body = {"name": queue_name, "registry_name": registry_name, "jobs": jobs, "pagination": pagination}
    return jsonify(body), {"Cache-Control": "no-store"}


def job_info(instance_number: int, job_id: str):
    """One job as JSON. rq-dashboard's own view decodes the ids of a job's dependencies as
    bytes, which RQ 3 already gives as text: it answered 500 for every job that has any."""
    job = inspection.fetch(current_app.redis_conn, job_id)
    # A class, not a value an environment can spell: set on app.config by code that embeds the app.
    encoder = current_app.config.get("RQ_DASHBOARD_JSON_ENCODER", json.JSONEncoder)
    body = {
        **_job_summary(job),
        "enqueued_at": rqd.serialize_date(job.enqueued_at),
        "origin": job.origin,
        "status": inspection.status(job),
        "result": _readable(lambda: inspection.result(job)),
        "metadata": _readable(lambda: json.dumps(inspection.meta(job), cls=encoder)),
    }
    dependencies = [str(d).split(":")[-1] for d in job.dependency_ids]
    if dependencies:
        alive = services().queues.existing(dependencies)
        body["depends_on"] = dependencies
        body["depends_on_status"] = ["active" if d in alive else "expired" for d in dependencies]
    return jsonify(body), {"Cache-Control": "no-store"}


def _page(view: str, **context):
    response = current_app.make_response(
        render_template(
            "rq/page.html",
            view=view,
            prefix=URL_PREFIX + "/",
            instance=0,
            # From app.config, where rq-dashboard's own delete and empty views look (the
            # settings put them there typed): a caller who changes them after create_app, as
            # rq-dashboard documents, changes the buttons and the views alike.
            poll_interval=current_app.config["RQ_DASHBOARD_POLL_INTERVAL"],
            enable_delete=not current_app.config["RQ_DASHBOARD_DISABLE_DELETE"],
            **context,
        )
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# The page endpoints keep rq-dashboard's names and arguments: its JSON views link to them.
def queues_overview(instance_number: int = 0):
    return _page("queues")


def workers_overview(instance_number: int):
    return _page("workers")


def jobs_overview(instance_number: int, queue_name, registry_name, per_page, order, page):
    return _page(
        "jobs",
        queue_name=queue_name or "default",
        registry_name=registry_name,
        per_page=per_page,
        order=order,
        page=page,
    )


def list_workers(instance_number: int):
    """rq-dashboard's ``list_workers`` reads workers with RQ's default (pickle) serializer, so it
    answered 500 whenever a worker was busy with one of our JSON jobs; this one reads JSON."""
    workers = []
    for worker in registries.workers(current_app.redis_conn, current_jobs=True):
        workers.append(
            {
                "name": worker["name"],
                "pid": worker["pid"],
                "queues": worker["queues"],
                "state": str(worker["state"]),
                "current_job": rqd.serialize_current_job(worker["current_job"]),
                "last_heartbeat": rqd.serialize_date(worker["last_heartbeat"]),
                "birth_date": rqd.serialize_date(worker["birth_date"]),
                "successful_job_count": worker["successful_job_count"],
                "failed_job_count": worker["failed_job_count"],
                "total_working_time": worker["total_working_time"],
                "version": worker["version"],
                "python_version": worker["python_version"],
            }
        )
    workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return jsonify(workers=workers), {"Cache-Control": "no-store"}


def job_view(instance_number: int, job_id: str):
    job = inspection.fetch(current_app.redis_conn, job_id)
    return _page("job", job_id=job.id)


_JOBS_DEFAULTS = {"queue_name": None, "registry_name": "queued", "per_page": 8, "order": "asc", "page": 1}
_JOBS_PATH = "/<int:instance_number>/view/jobs/<queue_name>/<registry_name>/<int:per_page>/<order>/<int:page>"

PAGES = [
    ("/", "queues_overview", queues_overview, {"defaults": {"instance_number": 0}}),
    ("/<int:instance_number>/", "queues_overview", queues_overview, {}),
    ("/<int:instance_number>/view", "queues_overview", queues_overview, {}),
    ("/<int:instance_number>/view/queues", "queues_overview", queues_overview, {}),
    ("/<int:instance_number>/view/workers", "workers_overview", workers_overview, {}),
    ("/<int:instance_number>/view/jobs", "jobs_overview", jobs_overview, {"defaults": _JOBS_DEFAULTS}),
    (_JOBS_PATH, "jobs_overview", jobs_overview, {}),
    ("/<int:instance_number>/view/job/<job_id>", "job_view", job_view, {}),
]

# rq-dashboard's JSON endpoints (but workers'): they return job fields as JSON strings, which our
# pages insert as text.
DATA = [
    ("/<int:instance_number>/data/queues.json", "list_queues", rqd.list_queues),
    (
        "/<int:instance_number>/data/jobs/<queue_name>/<registry_name>/<per_page>/<order>/<page>.json",
        "list_jobs",
        list_jobs,
    ),
    ("/<int:instance_number>/data/job/<job_id>.json", "job_info", job_info),
    ("/<int:instance_number>/data/workers.json", "list_workers", list_workers),
]

# Everything that changes Redis: POST only.
ACTIONS = [
    ("/job/<job_id>/delete", "delete_job_view", rqd.delete_job_view),
    ("/job/<job_id>/requeue", "requeue_job_view", rqd.requeue_job_view),
    ("/requeue/<queue_name>", "requeue_all", requeue_all),
    ("/queue/<queue_name>/<registry_name>/empty", "empty_queue", rqd.empty_queue),
    ("/queue/<queue_name>/compact", "compact_queue", compact_queue),
]

for _path, _endpoint, _view, _options in PAGES:
    bp.add_url_rule(_path, _endpoint, _view, methods=["GET"], **_options)
for _path, _endpoint, _view in DATA:
    bp.add_url_rule(_path, _endpoint, _view, methods=["GET"])
for _path, _endpoint, _view in ACTIONS:
    bp.add_url_rule(_path, _endpoint, _view, methods=["POST"])


def mount(app: Flask) -> None:
    """Serve the dashboard at /rq on the app's own Redis connection (``connect``: Sentinel, TLS and
    failover rules included), never one that rq-dashboard would open from the URL itself."""
    # Our jobs are JSON-serialized; the dashboard must read them the same way.
    rqd.config.serializer = inspection.SERIALIZER
    app.redis_conn = services(app).redis
    app.register_blueprint(bp, url_prefix=URL_PREFIX)
    # The dashboard polls several endpoints every few seconds: admins only, not limited.
    limiter.exempt(bp)
