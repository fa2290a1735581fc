"""The dispatcher when its own store fails for a moment after a receiver has answered.

A delivery that reached its receiver must not be recorded as failed (and sent again) because
the store blipped while its attempt was recorded. The store is real (SQLite, or PostgreSQL with
TEST_STORE=postgres); only ``record_attempt`` is made to raise a driver's OperationalError, as
a server restart or a locked SQLite file does. Real receivers (tests/receivers.py).
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from backend.api.context import services
from backend.app import stop_webhooks
from backend.store import deliveries as delivery_rows
from backend.store.models import WebhookDelivery, utcnow
from tests.helpers import wait_until
from tests.receivers import receivers
from tests.test_webhook_delivery import delivery_of, hook_app, job_with_webhook


@pytest.fixture
def apps():
    """Apps made by a test; their dispatchers are stopped after it."""
    made = []

    def make(settings, **overrides):
        made.append(hook_app(settings, **overrides))
        return made[-1]

    yield make
    for app in made:
        stop_webhooks(app, wait=False)


@pytest.fixture
def receiver():
    with receivers() as make:
        yield make()


def store_error(database_url: str) -> OperationalError:
    """What SQLAlchemy raises when the store goes away mid-transaction (the driver's own error inside)."""
    if database_url.startswith("postgresql"):
        import psycopg

        driver_error: Exception = psycopg.OperationalError("server closed the connection unexpectedly")
    else:
        driver_error = sqlite3.OperationalError("database is locked")
    return OperationalError("UPDATE webhook_deliveries SET attempts=?", {}, driver_error)


@pytest.fixture
def store_fails(monkeypatch, settings):
    """``store_fails(name, times)``: the next ``times`` calls of backend.store.deliveries' ``name``
    raise a store error before touching the store; the list it returns holds each call's kwargs."""

    def arm(name: str, times: int) -> list:
        real = getattr(delivery_rows, name)
        calls: list = []

        def failing(*args, **kwargs):
            calls.append(kwargs)
            if len(calls) <= times:
                raise store_error(settings["DATABASE_URL"])
            return real(*args, **kwargs)

        monkeypatch.setattr(delivery_rows, name, failing)
        return calls

    return arm


def expire_claims(app) -> None:
    """As if the deliveries' claims had lapsed (their dispatcher gone)."""
    with services(app).sessions() as session, session.begin():
        session.execute(update(WebhookDelivery).values(claimed_until=utcnow() - timedelta(seconds=1)))


def test_a_store_blip_while_recording_a_delivered_attempt_records_it_delivered_once(
    settings, apps, receiver, store_fails
):
    # Given a receiver that answers 200, a delivery allowed three attempts, and a store that
    # fails the first time an attempt is recorded
    calls = store_fails("record_attempt", 1)
    app = apps(settings, WEBHOOK_MAX_ATTEMPTS=3, WEBHOOK_BACKOFF_SECONDS=0)
    client = app.test_client()

    # When a job's webhook is delivered
    job_id = job_with_webhook(client, receiver.url)
    wait_until(lambda: delivery_of(client, job_id)["status"] != "pending", timeout=30, what="the delivery ended")
    assert services(app).webhooks.wait_idle(30)

    # Then it is delivered with its one real attempt (the 200), and the receiver had it once
    # (before: the blip was recorded as a failed attempt and the delivery sent again: 2 attempts)
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered", delivery
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(200, None)]
    assert receiver.received == [delivery["webhook_id"]]
    assert [call["status_code"] for call in calls] == [200, 200]
    assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is True


def test_a_store_down_while_recording_leaves_the_delivery_claimed_and_it_is_sent_again_later(
    settings, apps, receiver, store_fails
):
    # Given a receiver that answers 200, a delivery allowed one attempt, and a store that fails
    # every try at recording its attempt (the dispatcher tries three times here)
    calls = store_fails("record_attempt", 3)
    app = apps(settings, WEBHOOK_MAX_ATTEMPTS=1)
    dispatcher = services(app).webhooks
    dispatcher.record_retry_delays = (0.05, 0.05)
    client = app.test_client()

    # When a job's webhook is delivered
    job_id = job_with_webhook(client, receiver.url)
    wait_until(lambda: len(calls) == 3, timeout=30, what="three tries at recording the attempt")
    assert dispatcher.wait_idle(30)

    # Then the delivery is not failed (its only attempt is not spent on the store's fault): it
    # is still pending, with no attempt recorded, and stays claimed
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "pending", delivery
    assert delivery["attempts"] == []
    assert receiver.received == [delivery["webhook_id"]]
    assert dispatcher.run_once() == 0

    # and once its claim lapses (the store back), it is sent again under the same webhook-id
    # (at least once: the receiver de-duplicates) and recorded delivered
    expire_claims(app)
    wait_until(lambda: delivery_of(client, job_id)["status"] != "pending", timeout=30, what="the second send")
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered", delivery
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert receiver.received == [delivery["webhook_id"]] * 2


def test_a_store_blip_before_the_send_is_not_an_attempt(settings, apps, receiver, store_fails):
    # Given a delivery allowed one attempt, and a store that fails when the dispatcher reads
    # the claimed delivery (before anything is sent)
    calls = store_fails("get_delivery", 1)
    app = apps(settings, WEBHOOK_MAX_ATTEMPTS=1)
    dispatcher = services(app).webhooks
    client = app.test_client()

    # When a job's webhook is due and the dispatcher has tried it
    job_id = job_with_webhook(client, receiver.url)
    wait_until(lambda: len(calls) == 1, timeout=30, what="the dispatcher read the delivery")
    assert dispatcher.wait_idle(30)

    # Then nothing was sent and no attempt spent (before: the store's error was recorded as
    # the only attempt, and the delivery failed without ever reaching its receiver) ...
    delivery = delivery_of(client, job_id)
    assert (delivery["status"], delivery["attempts"], receiver.received) == ("pending", [], [])

    # and once its claim lapses it is delivered
    expire_claims(app)
    wait_until(lambda: delivery_of(client, job_id)["status"] != "pending", timeout=30, what="the send")
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered", delivery
    assert receiver.received == [delivery["webhook_id"]]
