"""Monitoring routes (admin only)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from backend.api import metrics
from backend.api.auth import require_admin
from backend.api.context import services, settings
from backend.api.payloads import json_body, query_int
from backend.api.rate_limits import submit_limit
from backend.broker import connection as broker
from backend.broker import leases, registries, worker_records
from backend.broker.errors import BrokerError
from backend.broker.rq_records import last_error
from backend.core.errors import NotFound, ServiceUnavailable, ValidationFailed
from backend.core.size_caps import SizeCaps
from backend.core.states import JobStatus
from backend.service import history as history_service
from backend.service.representations import iso, job_dict
from backend.store import counts
from backend.store import health as store_health

bp = Blueprint("monitoring", __name__, url_prefix="/monitoring")
bp.before_request(require_admin)

#: ``/metrics`` sits at the root, where Prometheus looks for it; admins only too.
metrics_bp = Blueprint("metrics", __name__)
metrics_bp.before_request(require_admin)


@metrics_bp.get("/metrics")
def prometheus_metrics():
    return metrics.render(current_app)


@bp.get("/health")
def health():
    """200 when Redis, the store and at least one worker are up; else 503 naming what is down.

    Redis's ``maxmemory_policy`` is reported (None: CONFIG GET refused), with a ``warning`` when
    it is not noeviction; that alone does not fail the check: the API still serves."""
    checks: dict[str, dict] = {}
    redis = services().redis
    try:
        broker.ping(redis)
        policy = broker.eviction_policy(redis)
        checks["redis"] = {"ok": True, "maxmemory_policy": policy}
        warning = broker.eviction_warning(policy)
        if warning:
            checks["redis"]["warning"] = warning
        workers = sorted(leases.all_alive(redis))
        checks["workers"] = {"ok": bool(workers), "alive": len(workers), "names": workers}
        if not workers:
            checks["workers"]["error"] = "no live worker"
    except BrokerError as exc:
        checks["redis"] = {"ok": False, "error": f"Redis unreachable: {exc}"}
        checks["workers"] = {"ok": False, "error": "unknown while Redis is down"}
    problem = store_health.problem(services().engine)
    if problem is None:
        checks["store"] = {"ok": True}
    else:
        checks["store"] = {"ok": False, "error": f"job store unavailable: {problem}"}
    healthy = all(check["ok"] for check in checks.values())
    failing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ok" if healthy else "unhealthy", "failing": failing, "checks": checks}
    response = jsonify(body)
    response.status_code = 200 if healthy else 503
    if not healthy:
        response.headers["Retry-After"] = "5"
    return response


def _queues():
    return services().queues


@bp.get("/queue/stats")
def queue_stats():
    """Per queue: RQ's counts; per status: the store's maintained counters (no table scan)."""
    queues = {}
    try:
        queues = registries.queue_counts(_queues(), registries=True)
        redis_error = None
    except BrokerError as exc:
        redis_error = f"Redis unreachable: {exc}"
    with services().sessions() as session:
        statuses = {status.value: 0 for status in JobStatus}
        statuses.update(counts.by_status(session))
    body = {"queues": queues, "jobs": statuses, "total_jobs": sum(statuses.values())}
    if redis_error:
        body["error"] = redis_error
    return jsonify(body)


@bp.get("/queue/workers")
def queue_workers():
    """Every worker RQ knows of, in three Redis round trips however many there are.

    ``current_job`` is the store's job id (``current_rq_job_id`` RQ's), ``jobs_done`` RQ's
    successful plus failed counts, ``alive`` whether the worker holds its lease."""
    try:
        workers = worker_records.read_workers(_queues().connection)
    except BrokerError as exc:
        raise ServiceUnavailable(f"Redis unreachable: {exc}") from None
    return jsonify(
        {
            "workers": [
                {
                    "name": worker["name"],
                    "state": worker["state"],
                    "alive": worker["alive"],
                    "queues": worker["queues"],
                    "current_job": worker["current_job_id"],
                    "current_rq_job_id": worker["current_rq_job_id"],
                    "last_heartbeat": iso(worker["last_heartbeat"]),
                    "birth": iso(worker["birth"]),
                    "successful_jobs": worker["successful_jobs"],
                    "failed_jobs": worker["failed_jobs"],
                    "jobs_done": worker["successful_jobs"] + worker["failed_jobs"],
                }
                for worker in workers
            ]
        }
    )


@bp.get("/history")
def history():
    """The service's own per-minute history: ``?window=hour`` (60 steps of 60 s) or ``day`` (96 of 900 s)."""
    window = request.args.get("window", "hour")
    unknown = sorted(set(request.args) - {"window"})
    if unknown:
        raise ValidationFailed(f"unknown parameter {unknown[0]!r}; GET /monitoring/history takes window")
    if window not in history_service.WINDOWS:
        raise ValidationFailed(f"window must be one of {', '.join(history_service.WINDOWS)}, got {window!r}")
    return jsonify(history_service.read(services().sessions, window))


@bp.get("/queue/failed")
def failed_jobs():
    """RQ's failed registries, newest first, with each job's error and its store job id."""
    limit = query_int("limit", 100, 1, 1000)
    # RQ keeps a task's error whole; a tenant's task may raise with its 64 KiB of arguments.
    caps = SizeCaps.from_settings(settings())
    entries = []
    try:
        for name, queue in _queues().queues.items():
            ids = registries.newest_failed_ids(queue, limit)
            for rq_id, job in _queues().fetch_many(ids).items() if ids else []:
                if job is None:
                    continue
                entries.append(
                    {
                        "queue": name,
                        "rq_job_id": rq_id,
                        "job_id": (job.meta or {}).get("job_id"),
                        "func": job.func_name,
                        "error": caps.shorten_error(last_error(job) or "") or None,
                        "ended_at": iso(job.ended_at),
                    }
                )
    except BrokerError as exc:
        raise ServiceUnavailable(f"Redis unreachable: {exc}") from None
    entries.sort(key=lambda e: e["ended_at"] or "", reverse=True)
    return jsonify({"failed": entries[:limit]})


@bp.post("/queue/failed")
@submit_limit
def requeue_failed():
    """Re-queue one failed job: ``{"job_id": ...}`` or ``{"rq_job_id": ...}``."""
    body = json_body()
    if set(body) - {"job_id", "rq_job_id"} or len(body) != 1:
        raise ValidationFailed('send exactly one of {"job_id": ...} or {"rq_job_id": ...}')
    manager = services().jobs
    job_id = body.get("job_id")
    if "rq_job_id" in body:
        rq_id = body["rq_job_id"]
        rq_job = _queues().fetch(rq_id) if isinstance(rq_id, str) else None
        if rq_job is None:
            raise NotFound(f"no RQ job {rq_id!r}")
        job_id = (rq_job.meta or {}).get("job_id")
        if job_id is None:
            # Not one of ours: let RQ put it back as it is.
            registries.requeue(rq_job)
            return jsonify({"rq_job_id": rq_id, "requeued": True})
    if not isinstance(job_id, str):
        raise ValidationFailed(f"job_id must be a job id, got {job_id!r}")
    job = manager.retry_job(job_id)
    response = jsonify(job_dict(job))
    response.status_code = 202
    return response
