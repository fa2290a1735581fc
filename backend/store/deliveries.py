"""Store: every statement on the webhook outbox (``webhook_deliveries``, ``webhook_attempts``).

The dispatcher (``backend.webhooks.dispatcher``) decides what to send and what an attempt's
outcome means; this module reads and writes the rows. A dispatcher claims a page of due
deliveries in one transaction: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` gives each
row to one dispatcher while the others pass over it (instead of queueing behind its lock), and
SQLite's writers take turns, where the claiming UPDATE's own conditions decide. A claim is a
fresh random token with a ``claimed_until`` from the database's clock (``backend.store.clock``),
so hosts whose clocks disagree still agree on when it lapses; every later write names the
token, so a dispatcher whose claim lapsed and was taken over writes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.store import clock
from backend.store.engine import transaction
from backend.store.models import Job, WebhookAttempt, WebhookDelivery

#: A due delivery as the dispatcher sees it: (id, host, owner, next_attempt_at).
DueRow = tuple[str, str, str, datetime]


class _ClaimLost(Exception):
    """The claim was taken over between reading the delivery and writing it: write nothing."""


def insert_delivery(
    session: Session, *, delivery_id: str, job_id: str, event: str, url: str, host: str, payload: dict
) -> None:
    """Add a pending delivery, due now by the database's clock, in the caller's transaction
    (the one that ended its job)."""
    # Due by the database's clock: a delivery added on a host whose clock is ahead would be
    # due only later for the dispatchers of the other hosts.
    now = clock.now_for_write(session.get_bind().dialect.name)
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


def _unclaimed(now: datetime):
    return or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now)


def claim_due(
    sessions: sessionmaker[Session],
    *,
    after: tuple[datetime, str] | None,
    full_hosts: set[str],
    full_owners: set[str],
    limit: int,
    claim_seconds: float,
    pick: Callable[[list[DueRow]], list[str]],
) -> tuple[list[DueRow], list[DueRow], str]:
    """Claim the deliveries ``pick`` chooses from the next page of due ones, in one transaction.

    The page: pending deliveries due, and unclaimed or their claim lapsed, by the database's
    clock, in ``(next_attempt_at, id)`` order after ``after``, none to ``full_hosts`` or of
    ``full_owners``, at most ``limit``; on PostgreSQL, none that another dispatcher has locked.
    ``pick(page)`` returns the ids to claim, for ``claim_seconds`` of the database's time.

    Returns:
        ``(page, claimed, token)``: the rows read, those claimed (in page order), their claim's token.
    """
    token = secrets.token_hex(16)
    with transaction(sessions) as session:
        now = clock.now(session)
        query = (
            select(WebhookDelivery.id, WebhookDelivery.host, Job.owner, WebhookDelivery.next_attempt_at)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now, _unclaimed(now))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
            # Only the deliveries' rows: a job's row stays free for the commands on the job.
            .with_for_update(of=WebhookDelivery, skip_locked=True)
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
        page: list[DueRow] = [tuple(row) for row in session.execute(query)]
        chosen = pick(page) if page else []
        if not chosen:
            return page, [], token
        # The page's conditions again: on PostgreSQL the rows are locked and still meet them;
        # on SQLite the read took no lock, and another dispatcher may have claimed some since.
        claimed = set(
            session.scalars(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(chosen), WebhookDelivery.status == "pending", _unclaimed(now))
                .values(claimed_until=now + timedelta(seconds=claim_seconds), claim_token=token)
                .returning(WebhookDelivery.id),
                execution_options={"synchronize_session": False},
            )
        )
    return page, [row for row in page if row[0] in claimed], token


def release(
    sessions: sessionmaker[Session], delivery_id: str, token: str, *, delay_seconds: float | None = None
) -> None:
    """Give back the claim ``token``; with ``delay_seconds``, the delivery is due again that
    much later (by the database's clock)."""
    with transaction(sessions) as session:
        values: dict = {"claimed_until": None, "claim_token": None}
        if delay_seconds is not None:
            values["next_attempt_at"] = clock.now(session) + timedelta(seconds=delay_seconds)
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claim_token == token)
            .values(**values)
        )


def get_delivery(sessions: sessionmaker[Session], delivery_id: str) -> WebhookDelivery | None:
    with sessions() as session:
        return session.get(WebhookDelivery, delivery_id)


def record_attempt(
    sessions: sessionmaker[Session],
    delivery_id: str,
    token: str,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    outcome: Callable[[int, datetime], dict],
) -> tuple[str, int, dict] | None:
    """Record an attempt of a delivery claimed with ``token`` and its outcome, in one transaction.

    ``outcome(attempts, now)`` gives the delivery's new column values from its attempts so far
    (this one counted) and the database's time. A ``status`` of delivered or failed ends the
    delivery, and is written to its job's ``webhook_delivered`` too.

    Returns:
        ``(job_id, attempts, values)``; None when the claim was taken over (nothing written).
    """
    try:
        with transaction(sessions) as session:
            row = session.execute(
                select(WebhookDelivery.job_id, WebhookDelivery.attempts).where(
                    WebhookDelivery.id == delivery_id, WebhookDelivery.claim_token == token
                )
            ).first()
            if row is None:
                return None
            now = clock.now(session)
            attempts = row.attempts + 1
            values = outcome(attempts, now)
            if values.get("status") in ("delivered", "failed"):
                # The job's row before the delivery's, the order in which every transaction
                # locks them (a job's command inserts its delivery): no deadlock between them.
                session.execute(
                    update(Job)
                    .where(Job.id == row.job_id)
                    # updated_at moves with every change of a job's fields (see job_reads).
                    .values(webhook_delivered=values["status"] == "delivered", updated_at=now)
                )
            # Compare-and-set on this dispatcher's token: if another dispatcher took the
            # delivery over (the claim lapsed, e.g. this process was paused), its record stands.
            result = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claim_token == token)
                .values(attempts=attempts, claimed_until=None, claim_token=None, **values)
            )
            if result.rowcount != 1:
                raise _ClaimLost  # and the job's update above is rolled back with it
            session.add(
                WebhookAttempt(
                    delivery_id=delivery_id,
                    attempted_at=now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
    except _ClaimLost:
        return None
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
