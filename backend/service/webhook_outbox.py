"""Webhooks, the outbox: the delivery a job's end adds, and a job's deliveries as
``GET /jobs/<id>/webhooks`` shows them.

A command on jobs (the service) queues the delivery in the transaction that ends the job; the
dispatcher (backend/webhooks/dispatcher.py) sends it later. So this module sits with the job
commands, below the dispatcher: the webhooks package imports the service, never the reverse.
The rows are read and written by ``backend.store.deliveries``.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from backend.service.representations import iso, job_dict
from backend.store import deliveries as delivery_rows
from backend.store.jobs import Sessions
from backend.store.models import Job, utcnow


def add_delivery(session, job: Job) -> None:
    """Queue the webhook of a job that just ended, in the caller's transaction (its ``session``)."""
    now = utcnow()
    delivery_rows.insert_delivery(
        session,
        delivery_id=f"msg_{uuid.uuid4().hex}",
        job_id=job.id,
        event=job.status,
        url=job.webhook_url,
        host=delivery_host(job.webhook_url),
        payload={"type": f"job.{job.status.lower()}", "timestamp": now.isoformat(), "data": job_dict(job)},
    )


def delivery_host(url: str) -> str:
    """The host a delivery's per-host cap counts against (stored in ``WebhookDelivery.host``)."""
    try:
        # At most the column's 255 characters: two longer names that share them share a cap.
        return (urlsplit(url).hostname or "").lower()[:255]
    except ValueError:  # refused when its attempt runs
        return ""


def job_deliveries(sessions: Sessions, job_id: str) -> list[dict]:
    """Every delivery of a job with its attempts."""
    rows, attempts = delivery_rows.job_deliveries(sessions, job_id)
    by_delivery: dict[str, list[dict]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(
            {
                "attempted_at": iso(attempt.attempted_at),
                "status_code": attempt.status_code,
                "error": attempt.error,
                "duration_ms": attempt.duration_ms,
            }
        )
    return [
        {
            "webhook_id": row.id,
            "event": row.event,
            "url": row.url,
            "status": row.status,
            "attempts": by_delivery.get(row.id, []),
        }
        for row in rows
    ]
