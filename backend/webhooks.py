"""Webhooks: an outbox of deliveries, sent and retried by a dispatcher off the workers' path.

When a job with a ``webhook_url`` ends (COMPLETED, FAILED or CANCELLED), the same store
transaction adds a delivery row holding the job as JSON. The dispatcher (a thread in the API)
POSTs it, signed the Standard Webhooks way, with a 10 s timeout and no redirects, up to
``WEBHOOK_MAX_ATTEMPTS`` times with backoff, and records every attempt.

Verifying a delivery (the receiver's side)::

    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw_body
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], f"v1,{expected}")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from datetime import timedelta

import requests
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.errors import ValidationFailed
from backend.metrics import WEBHOOK_DELIVERIES
from backend.models import Job, WebhookAttempt, WebhookDelivery, utcnow
from backend.representations import iso, job_dict
from backend.ssrf import check_webhook_url
from backend.store import transaction

log = logging.getLogger(__name__)

CLAIM_SECONDS = 60


def secret_bytes(secret: str) -> bytes:
    """Standard Webhooks secrets look like ``whsec_<base64>``; anything else is used as is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def add_delivery(session: Session, job: Job) -> None:
    """Queue the webhook of a job that just ended, in the caller's transaction."""
    now = utcnow()
    session.add(
        WebhookDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=job.id,
            event=job.status,
            url=job.webhook_url,
            payload={"type": f"job.{job.status.lower()}", "timestamp": now.isoformat(), "data": job_dict(job)},
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


class Dispatcher:
    """Sends due deliveries; safe to run in several API processes (rows are claimed)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        secret: str | None,
        allow_loopback: bool,
        max_attempts: int = 3,
        backoff_seconds: float = 10.0,
        timeout: float = 10.0,
    ):
        self.sessions = sessions
        self.secret = secret_bytes(secret) if secret else None
        self.allow_loopback = allow_loopback
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout
        self.http = requests.Session()

    def run_once(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        now = utcnow()
        with self.sessions() as session:
            due = list(
                session.scalars(
                    select(WebhookDelivery.id)
                    .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                    .where(or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
                    .limit(100)
                )
            )
        sent = 0
        for delivery_id in due:
            if self._claim(delivery_id):
                self._attempt(delivery_id)
                sent += 1
        return sent

    def _claim(self, delivery_id: str) -> bool:
        now = utcnow()
        with transaction(self.sessions) as session:
            result = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
                .where(or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
                .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            )
            return result.rowcount == 1

    def _attempt(self, delivery_id: str) -> None:
        with self.sessions() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": delivery.id, "webhook-timestamp": str(timestamp)}
        if self.secret is not None:
            headers["webhook-signature"] = sign(self.secret, delivery.id, timestamp, body)
        started = time.monotonic()
        status_code, error = None, None
        try:
            check_webhook_url(delivery.url, allow_loopback=self.allow_loopback)
            response = self.http.post(
                delivery.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except ValidationFailed as exc:
            error = f"refused: {exc.message}"
        except requests.RequestException as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        self._record(delivery, status_code, error, int((time.monotonic() - started) * 1000))

    def _record(self, delivery: WebhookDelivery, status_code: int | None, error: str | None, duration_ms: int) -> None:
        now = utcnow()
        attempts = delivery.attempts + 1
        refused = bool(error and error.startswith("refused"))
        if error is None:
            values = {"status": "delivered", "delivered_at": now}
        elif attempts >= self.max_attempts or refused:
            values = {"status": "failed"}
        else:
            delay = self.backoff_seconds * 2 ** (attempts - 1)
            values = {"next_attempt_at": now + timedelta(seconds=delay)}
        with transaction(self.sessions) as session:
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempted_at=now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(attempts=attempts, claimed_until=None, **values)
            )
            if values.get("status") in ("delivered", "failed"):
                session.execute(
                    update(Job)
                    .where(Job.id == delivery.job_id)
                    # updated_at moves with every change of a job's fields (see job_reads).
                    .values(webhook_delivered=values["status"] == "delivered", updated_at=now)
                )
        WEBHOOK_DELIVERIES.labels(values.get("status", "retry")).inc()
        log.info("job %s: webhook %s attempt %s: %s", delivery.job_id, delivery.id, attempts, error or status_code)

    def deliveries(self, job_id: str) -> list[dict]:
        """Every delivery of a job with its attempts (``GET /jobs/<id>/webhooks``)."""
        with self.sessions() as session:
            rows = list(
                session.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.created_at)
                )
            )
            attempts = list(
                session.scalars(
                    select(WebhookAttempt)
                    .where(WebhookAttempt.delivery_id.in_([row.id for row in rows]))
                    .order_by(WebhookAttempt.id)
                )
            )
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
