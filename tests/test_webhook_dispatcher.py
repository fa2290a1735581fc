"""The dispatcher's own faults: fairness across owners under a backlog, errors of its own,
temporary DNS failures at send time, and shutting its delivery pool down.

Real receivers (threads of tests/receivers.py) and the real dispatcher of the app.
"""

from __future__ import annotations

import socket
import threading

import pytest

from backend.api.context import services
from backend.app import stop_webhooks
from backend.webhooks import dispatcher as dispatcher_module
from tests.helpers import wait_until
from tests.receivers import Receiver
from tests.test_webhook_delivery import delivery_of, hook_app, job_with_webhook

M_KEY = {"Authorization": "Bearer key-m", "X-Requested-With": "test"}


@pytest.fixture
def receivers():
    """Receivers that hold requests until released (all released after the test)."""
    made = []

    def make():
        made.append(Receiver(hold=True))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def apps():
    """Apps made by a test; their dispatchers are stopped after it (receivers may still hold)."""
    made = []

    def make(settings, **overrides):
        app = hook_app(settings, **overrides)
        made.append(app)
        return app

    yield make
    for app in made:
        stop_webhooks(app, wait=False)


def test_one_owners_backlog_on_one_slow_host_does_not_keep_another_owners_delivery_out_of_a_pass(
    settings, receivers, apps, monkeypatch
):
    # Given a pass that scans at most 50 due rows in pages of 10 (1000 in pages of 100 as
    # shipped: the same walk, a twentieth of the rows to record first), one owner's batch of 50
    # jobs whose webhooks all go to a receiver that holds every request, all due first, and
    # another owner's job to a prompt receiver
    monkeypatch.setattr(dispatcher_module, "SCAN_LIMIT", 50)
    monkeypatch.setattr(dispatcher_module, "PAGE_SIZE", 10)
    slow, prompt = receivers(), receivers()
    prompt.release.set()
    app = apps(settings, API_KEYS="mallory:key-m,olivia:key-o", WEBHOOK_TIMEOUT=30, WEBHOOK_INTERVAL=0)
    client = app.test_client()
    batch = client.post(
        "/tasks/add/batch",
        json={"jobs": [{"args": [1, 1], "webhook_url": f"http://localhost:{slow.port}/hook"}] * 50},
        headers=M_KEY,
    )
    assert batch.status_code == 202, batch.get_json()
    cancelled = client.post("/jobs/cancel", json={"task": "add"}, headers=M_KEY).get_json()
    assert len(cancelled["cancelled"]) == 50
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer key-o"
    olivia_job = job_with_webhook(client, prompt.url)
    dispatcher = services(app).webhooks

    # When the dispatcher makes one pass
    started = dispatcher.run_once()

    # Then that pass starts the other owner's delivery too (before: only the two to the slow
    # host, whose 48 others filled the pass's scan; 998 of 1000 as shipped, ~80 min of backlog), and it
    # arrives while the slow receiver still holds its two
    assert started == 3
    wait_until(lambda: delivery_of(client, olivia_job)["status"] == "delivered", what="the other owner's delivery")
    assert len(prompt.received) == 1
    wait_until(lambda: len(slow.received) == 2, what="two slow sends")
    assert slow.answered == 0
    slow.release.set()
    assert dispatcher.wait_idle(60)


def test_an_attempt_that_fails_on_an_unexpected_error_is_recorded_and_max_attempts_end_it(settings, apps):
    # Given a delivery allowed two attempts, and a lookup that fails in a way nothing expects
    app = apps(settings, WEBHOOK_MAX_ATTEMPTS=2, WEBHOOK_BACKOFF_SECONDS=0, WEBHOOK_INTERVAL=0)
    client = app.test_client()
    job_id = job_with_webhook(client, "http://localhost:9/hook")
    dispatcher = services(app).webhooks

    def broken_dns(host, port, proto=0):
        raise RuntimeError("resolver bug")

    dispatcher.resolve = broken_dns

    # When the dispatcher runs it once
    dispatcher.run_once()
    assert dispatcher.wait_idle(30)

    # Then the failure is an attempt, named by the exception (before: no attempt at all, and
    # the claim lapsed for the delivery to be tried again, forever)
    delivery = delivery_of(client, job_id)
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(None, "RuntimeError: resolver bug")]
    assert delivery["status"] == "pending"

    # and the second such attempt is the last one: the delivery failed
    assert dispatcher.run_once() == 1
    assert dispatcher.wait_idle(30)
    delivery = delivery_of(client, job_id)
    assert [a["error"] for a in delivery["attempts"]] == ["RuntimeError: resolver bug"] * 2
    assert delivery["status"] == "failed"
    assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is False
    assert dispatcher.run_once() == 0


@pytest.mark.parametrize(
    ("errno", "status", "error"),
    [
        (socket.EAI_AGAIN, "pending", "webhook_url host 'localhost' could not be resolved now (a temporary failure)"),
        (socket.EAI_NONAME, "failed", "refused: webhook_url host 'localhost' does not resolve"),
    ],
)
def test_a_temporary_dns_failure_at_send_time_is_tried_again_a_missing_name_is_refused(
    settings, apps, errno, status, error
):
    # Given a delivery allowed three attempts, whose host's lookup fails with ``errno``
    app = apps(settings, WEBHOOK_MAX_ATTEMPTS=3, WEBHOOK_INTERVAL=0)
    client = app.test_client()
    job_id = job_with_webhook(client, "http://localhost:9/hook")  # resolved when submitted
    dispatcher = services(app).webhooks

    def failing_dns(host, port, proto=0):
        raise socket.gaierror(errno, "from the test's resolver")

    dispatcher.resolve = failing_dns

    # When the dispatcher sends it
    dispatcher.run_once()
    assert dispatcher.wait_idle(30)

    # Then EAI_AGAIN ("temporary failure in name resolution") is a failed attempt, tried again
    # (before: refused and failed for good); a name that does not exist is still refused
    delivery = delivery_of(client, job_id)
    [attempt] = delivery["attempts"]
    assert attempt["error"].startswith(error), attempt
    assert delivery["status"] == status


def test_stopping_the_webhooks_ends_the_delivery_pool_and_starts_nothing_more(settings, receivers, apps):
    # Given an app whose dispatcher has delivered a webhook (its pool has threads)
    hook = receivers()
    hook.release.set()
    before = set(threading.enumerate())
    app = apps(settings)
    client = app.test_client()
    first = job_with_webhook(client, hook.url)
    wait_until(lambda: delivery_of(client, first)["status"] == "delivered", what="the first delivery")
    pool_threads = [t for t in set(threading.enumerate()) - before if t.name.startswith("webhook")]
    assert pool_threads

    # When the app's webhooks are stopped (as at process exit, or a test's teardown)
    stop_webhooks(app)

    # Then the pool's threads have ended (before: they lived as long as the process), and a
    # delivery that falls due later is left for another process: nothing is sent
    for thread in pool_threads:
        thread.join(10)
        assert not thread.is_alive()
    second = job_with_webhook(client, hook.url)
    assert services(app).webhooks.run_once() == 0
    assert delivery_of(client, second)["status"] == "pending"
    assert len(hook.received) == 1


def test_the_migration_fills_the_host_of_deliveries_already_stored(make_store_url):
    # Given a store at the revision before the host column, holding deliveries
    from alembic import command
    from sqlalchemy import create_engine, text

    from backend.store.engine import alembic_config, migrate

    url = make_store_url("old", migrated=False)
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner, task, status, priority, args, kwargs, progress, created_at,"
                " updated_at, attempt, retry_count, max_retries, timeout, has_dependants)"
                " VALUES ('job_1', 'o', 'add', 'CANCELLED', 'default', '[]', '{}', 0, '2026-01-01 00:00:00',"
                " '2026-01-01 00:00:00', 1, 0, 3, 600, false)"
            )
        )
        for delivery_id, hook in [("msg_a", "https://Hooks.Example.COM:8443/x"), ("msg_b", "http://[::1")]:
            connection.execute(
                text(
                    "INSERT INTO webhook_deliveries (id, job_id, event, url, payload, status, attempts, created_at)"
                    " VALUES (:id, 'job_1', 'CANCELLED', :url, '{}', 'pending', 0, '2026-01-01 00:00:00')"
                ),
                {"id": delivery_id, "url": hook},
            )

    # When it is migrated to the newest schema
    migrate(url)

    # Then each delivery has its URL's host (lowercased), and a URL that cannot be parsed none
    with engine.connect() as connection:
        hosts = dict(connection.execute(text("SELECT id, host FROM webhook_deliveries")).all())
    engine.dispose()
    assert hosts == {"msg_a": "hooks.example.com", "msg_b": ""}
