"""Store: every statement on the webhook outbox (``webhook_deliveries``, ``webhook_attempts``).

The dispatcher (``backend.webhooks.dispatcher``) decides what to send and what an attempt's
outcome means; this module reads and writes the rows. A delivery is claimed with a
compare-and-set on ``claimed_until``, and each later write names the claim it holds, so a
dispatcher whose claim was taken over writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.store.engine import transaction
from backend.store.models import Job, WebhookAttempt, WebhookDelivery


def insert_delivery(
    session: Session, *, delivery_id: str, job_id: str, event: str, url: str, host: str, payload: dict, now: datetime
) -> None:
    """Add a pending delivery, due ``now``, in the caller's transaction (the one that ended its job)."""
    session.add(
        WebhookDelivery(
            id=delivery_id,
            job_id=job_id,
            event=event,
            url=url,
            host=host,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def due_page(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    after: tuple[datetime, str] | None,
    full_hosts: set[str],
    full_owners: set[str],
    limit: int,
) -> list[tuple[str, str, str, datetime]]:
    """Due, unclaimed deliveries as ``(id, host, owner, next_attempt_at)`` in order, after
    ``after``, leaving out the hosts and owners named."""
    query = (
        select(WebhookDelivery.id, WebhookDelivery.host, Job.owner, WebhookDelivery.next_attempt_at)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .where(or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    # In SQL, so that one host's or one owner's thousands of due deliveries (sorted first)
    # cannot fill every page of a pass and so keep other owners' deliveries out of it.
    if full_hosts:
        query = query.where(WebhookDelivery.host.not_in(full_hosts))
    if full_owners:
        query = query.where(Job.owner.not_in(full_owners))
    if after is not None:
        query = query.where(
            or_(
                WebhookDelivery.next_attempt_at > after[0],
                and_(WebhookDelivery.next_attempt_at == after[0], WebhookDelivery.id > after[1]),
            )
        )
    with sessions() as session:
        return [tuple(row) for row in session.execute(query)]


def claim(sessions: sessionmaker[Session], delivery_id: str, *, now: datetime, until: datetime) -> bool:
    """Claim a pending delivery whose claim (if any) lapsed before ``now``, until ``until``."""
    with transaction(sessions) as session:
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
            .where(or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
            .values(claimed_until=until)
        )
        return result.rowcount == 1


def release(sessions: sessionmaker[Session], delivery_id: str, claim: datetime, **values) -> None:
    """Give back the claim ``claim``, writing ``values`` too (e.g. a later ``next_attempt_at``)."""
    with transaction(sessions) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_until == claim)
            .values(claimed_until=None, **values)
        )


def get_delivery(sessions: sessionmaker[Session], delivery_id: str) -> WebhookDelivery | None:
    with sessions() as session:
        return session.get(WebhookDelivery, delivery_id)


def record_attempt(
    sessions: sessionmaker[Session],
    delivery_id: str,
    claim: datetime,
    *,
    attempted_at: datetime,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    outcome: Callable[[int], dict],
) -> tuple[str, int, dict] | None:
    """Record an attempt of a claimed delivery and its outcome, in one transaction.

    ``outcome(attempts)`` gives the delivery's new column values from its attempts so far
    (this one counted). A ``status`` of delivered or failed ends the delivery, and is written
    to its job's ``webhook_delivered`` too.

    Returns:
        ``(job_id, attempts, values)``; None when the claim was taken over (nothing written).
    """
    with transaction(sessions) as session:
        row = session.execute(
            select(WebhookDelivery.job_id, WebhookDelivery.attempts).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_until == claim
            )
        ).first()
        if row is None:
            return None
        attempts = row.attempts + 1
        values = outcome(attempts)
        # Compare-and-set on this dispatcher's claim: if another dispatcher took the
        # delivery over (the claim lapsed, e.g. this process was paused), its record stands.
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_until == claim)
            .values(attempts=attempts, claimed_until=None, **values)
        )
        if result.rowcount != 1:
            return None
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempted_at=attempted_at,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
            )
        )
        if values.get("status") in ("delivered", "failed"):
            session.execute(
                update(Job)
                .where(Job.id == row.job_id)
                # updated_at moves with every change of a job's fields (see job_reads).
                .values(webhook_delivered=values["status"] == "delivered", updated_at=attempted_at)
            )
    return row.job_id, attempts, values


def job_deliveries(sessions: sessionmaker[Session], job_id: str) -> tuple[list[WebhookDelivery], list[WebhookAttempt]]:
    """A job's deliveries (oldest first) and all their attempts (in order)."""
    with sessions() as session:
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
    return rows, attempts
