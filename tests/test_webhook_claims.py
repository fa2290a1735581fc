"""Webhook claims on one PostgreSQL shared by several dispatchers (hosts): each delivery sent
once, a claim taken over leaves its old holder nothing to record, and the claim's times are
the database's, whatever each host's clock says.

A real PostgreSQL (tests/postgres.py), real receivers (tests/receivers.py), dispatchers each
with their own engine, as on separate hosts.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import text

from backend.app import stop_background
from backend.store.engine import make_engine, make_session_factory
from backend.store.models import utcnow
from backend.webhooks.dispatcher import Dispatcher
from tests.helpers import wait_until
from tests.receivers import receivers
from tests.test_webhook_delivery import delivery_of, hook_app, job_with_webhook

KEY = {"X-Requested-With": "test"}


@pytest.fixture
def make_receiver():
    with receivers() as make:
        yield make


@pytest.fixture
def pg_app(settings, postgres_url):
    """The API on a fresh PostgreSQL; its own dispatcher idle, so the test's dispatchers race."""
    app = hook_app(settings, DATABASE_URL=postgres_url, WEBHOOK_INTERVAL=0, WEBHOOK_MAX_ATTEMPTS=3)
    yield app
    stop_background(app)


@pytest.fixture
def dispatcher_on(postgres_url):
    """``make(**options)`` -> a Dispatcher with an engine of its own (another host's)."""
    made: list[tuple[Dispatcher, object]] = []

    def make(**options) -> Dispatcher:
        engine = make_engine(postgres_url)
        dispatcher = Dispatcher(make_session_factory(engine), secret=None, allow_loopback=True, **options)
        made.append((dispatcher, engine))
        return dispatcher

    yield make
    for dispatcher, engine in made:
        dispatcher.close(wait=False)
        engine.dispose()


def skew_host_clock(monkeypatch, offset: timedelta) -> None:
    """This process's host clock reads ``offset`` off: every ``utcnow`` the backend imported."""
    skewed = lambda: utcnow() + offset  # noqa: E731
    for name, module in list(sys.modules.items()):
        if name.startswith("backend.") and getattr(module, "utcnow", None) is utcnow:
            monkeypatch.setattr(module, "utcnow", skewed)


def stored(pg_app, sql: str) -> list:
    from backend.api.context import services

    with services(pg_app).engine.connect() as connection:
        return connection.execute(text(sql)).all()


def lapse_claims(pg_app) -> None:
    """Every claim ran out a second ago by the database's clock (its holder was paused)."""
    from backend.api.context import services

    with services(pg_app).engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE webhook_deliveries"
                " SET claimed_until = (statement_timestamp() AT TIME ZONE 'UTC') - interval '1 second'"
                " WHERE claimed_until IS NOT NULL"
            )
        )


def deadlocks_since(postgres_server, offset: int) -> list[str]:
    with open(postgres_server.log_path, errors="replace") as log:
        log.seek(offset)
        return [line for line in log if "deadlock detected" in line]


def test_three_dispatchers_racing_on_postgresql_deliver_each_of_200_webhooks_exactly_once(
    pg_app, dispatcher_on, make_receiver, postgres_server
):
    # Given 200 due deliveries to one receiver, and three dispatchers on one PostgreSQL
    hook = make_receiver()
    client = pg_app.test_client()
    batch = client.post(
        "/tasks/add/batch", json={"jobs": [{"args": [1, 1], "webhook_url": hook.url}] * 200}, headers=KEY
    )
    assert batch.status_code == 202, batch.get_json()
    assert len(client.post("/jobs/cancel", json={"task": "add"}, headers=KEY).get_json()["cancelled"]) == 200
    dispatchers = [dispatcher_on(concurrency=8, per_host=8, per_owner=8) for _ in range(3)]
    log_offset = postgres_server.log_path.stat().st_size
    errors: list[BaseException] = []

    def drive(dispatcher: Dispatcher) -> None:
        deadline = time.monotonic() + 120
        try:
            while len(set(hook.received)) < 200 and time.monotonic() < deadline:
                dispatcher.run_once()
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    # When all three pass over them concurrently until the receiver has seen every one
    threads = [threading.Thread(target=drive, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    for dispatcher in dispatchers:
        assert dispatcher.wait_idle(60)

    # Then each delivery reached the receiver once, was recorded once as delivered, and every
    # dispatcher had a share; nothing failed and PostgreSQL saw no deadlock
    assert errors == []
    counts = Counter(hook.received)
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert stored(pg_app, "SELECT status, attempts, count(*) FROM webhook_deliveries GROUP BY 1, 2") == [
        ("delivered", 1, 200)
    ]
    assert stored(pg_app, "SELECT count(*), count(DISTINCT delivery_id) FROM webhook_attempts") == [(200, 200)]
    assert stored(pg_app, "SELECT count(*) FROM jobs WHERE webhook_delivered") == [(200,)]
    assert stored(pg_app, "SELECT count(*) FROM webhook_deliveries WHERE claimed_until IS NOT NULL") == [(0,)]
    assert deadlocks_since(postgres_server, log_offset) == []


def test_a_dispatcher_whose_claim_was_taken_over_on_postgresql_records_nothing(pg_app, dispatcher_on, make_receiver):
    # Given a receiver that holds the first request (then answers 500) and answers the second
    # 200 at once, and a dispatcher sending the first
    hook = make_receiver(statuses=[500, 200])
    first_answer = hook.gates[0] = threading.Event()
    client = pg_app.test_client()
    job_id = job_with_webhook(client, hook.url)
    stale, other = dispatcher_on(timeout=30), dispatcher_on(timeout=30)
    assert stale.run_once() == 1
    wait_until(lambda: len(hook.received) == 1, what="the first send")

    # When its claim lapses (its host paused past it), another dispatcher takes the delivery
    # over and delivers it, and only then does the stale one get its (500) answer
    lapse_claims(pg_app)
    assert other.run_once() == 1
    wait_until(lambda: delivery_of(client, job_id)["status"] == "delivered", what="delivered by the other")
    first_answer.set()
    assert stale.wait_idle(60) and other.wait_idle(60)

    # Then the stale answer changed nothing: one attempt, delivered, the claim released
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is True
    assert stored(pg_app, "SELECT claimed_until FROM webhook_deliveries") == [(None,)]


def test_a_dispatcher_whose_host_clock_is_an_hour_ahead_does_not_steal_a_live_claim(
    pg_app, dispatcher_on, make_receiver, monkeypatch
):
    # Given a dispatcher sending a delivery to a receiver that holds it (its claim is live)
    hook = make_receiver(hold=True)
    client = pg_app.test_client()
    job_id = job_with_webhook(client, hook.url)
    holder = dispatcher_on(timeout=30)
    assert holder.run_once() == 1
    wait_until(lambda: len(hook.received) == 1, what="the first send")

    # When a dispatcher on a host whose clock is an hour ahead makes a pass
    skew_host_clock(monkeypatch, timedelta(hours=1))
    ahead = dispatcher_on(timeout=30)
    started = ahead.run_once()

    # Then it takes nothing (before: the claim looked an hour old to it, and it sent the
    # webhook a second time), and the delivery is made once
    assert started == 0
    hook.release.set()
    assert holder.wait_idle(60) and ahead.wait_idle(60)
    assert len(hook.received) == 1
    assert [a["status_code"] for a in delivery_of(client, job_id)["attempts"]] == [200]


def test_a_dispatcher_whose_host_clock_is_an_hour_behind_takes_a_lapsed_claim_and_holds_its_own(
    pg_app, dispatcher_on, make_receiver, monkeypatch
):
    # Given a delivery whose claim ran out (its holder was paused), a receiver that holds
    # requests, and a dispatcher on a host whose clock is an hour behind
    hook = make_receiver(hold=True)
    client = pg_app.test_client()
    job_id = job_with_webhook(client, hook.url)
    paused = dispatcher_on(timeout=30)
    assert paused.run_once() == 1
    wait_until(lambda: len(hook.received) == 1, what="the paused holder's send")
    lapse_claims(pg_app)
    skew_host_clock(monkeypatch, timedelta(hours=-1))
    behind = dispatcher_on(timeout=30)

    # When it makes a pass
    started = behind.run_once()

    # Then it takes the lapsed claim over (before: the delivery was not even due by its clock)
    assert started == 1
    wait_until(lambda: len(hook.received) == 2, what="the second send")
    # and a dispatcher with the right time cannot take its claim (before: a claim an hour
    # short, lapsed the moment it was made)
    monkeypatch.undo()
    prompt = dispatcher_on(timeout=30)
    assert prompt.run_once() == 0
    hook.release.set()
    for dispatcher in (paused, behind, prompt):
        assert dispatcher.wait_idle(60)
    assert len(hook.received) == 2
    assert [a["status_code"] for a in delivery_of(client, job_id)["attempts"]] == [200]


def test_a_delivery_is_due_by_the_database_clock_not_the_clock_of_the_host_that_ended_its_job(
    pg_app, dispatcher_on, make_receiver, monkeypatch
):
    # Given a job ended on an API host whose clock is an hour ahead
    hook = make_receiver()
    client = pg_app.test_client()
    skew_host_clock(monkeypatch, timedelta(hours=1))
    job_id = job_with_webhook(client, hook.url)
    monkeypatch.undo()

    # When a dispatcher with the right time makes a pass
    dispatcher = dispatcher_on(timeout=30)
    started = dispatcher.run_once()

    # Then the delivery is due now (before: an hour from now, by the other host's clock)
    assert started == 1
    assert dispatcher.wait_idle(60)
    assert delivery_of(client, job_id)["status"] == "delivered"
