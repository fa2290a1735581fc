"""Webhook deliveries against hostile receivers: real receiver processes and threads.

A receiver that answers with a huge body, one that drips its status line a byte at a time,
one that holds its deliveries while another receiver waits, and two dispatchers on one store.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import psutil
import pytest
from sqlalchemy import select, update

from backend.api.context import services
from backend.app import create_app, start_background
from backend.store.models import WebhookDelivery, utcnow
from backend.webhooks.dispatcher import Dispatcher
from tests.helpers import wait_until
from tests.receivers import one_answer, raw_receivers, receivers


@pytest.fixture
def receiver_process():
    with raw_receivers() as start:
        yield start


@pytest.fixture
def held_receiver():
    with receivers(hold=True) as make:
        yield make


def hook_app(settings, **overrides):
    settings.update({"WEBHOOK_ALLOW_LOOPBACK": 1, "WEBHOOK_MAX_ATTEMPTS": 1, "WEBHOOK_INTERVAL": 0.1, **overrides})
    return start_background(create_app(settings))


def job_with_webhook(client, url: str) -> str:
    """A job whose webhook is due at once (cancelling a queued job ends it)."""
    job = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": url}).get_json()
    assert client.post(f"/jobs/{job['job_id']}/cancel", headers={"X-Requested-With": "test"}).status_code == 200
    return job["job_id"]


def in_background(dispatcher: Dispatcher) -> threading.Thread:
    """One dispatcher pass on its own thread, as the API runs it."""
    thread = threading.Thread(target=dispatcher.run_once, daemon=True)
    thread.start()
    return thread


def settle(*dispatchers: Dispatcher) -> None:
    for dispatcher in dispatchers:
        assert dispatcher.wait_idle(60)


def delivery_of(client, job_id: str) -> dict:
    [delivery] = client.get(f"/jobs/{job_id}/webhooks").get_json()["deliveries"]
    return delivery


def test_a_huge_response_body_is_not_read_the_connection_is_closed_after_a_few_kib(settings, receiver_process):
    # Given a receiver process that answers 200 with a 256 MB body
    process, port = receiver_process("huge")
    app = hook_app(settings)
    client = app.test_client()
    rss_before = psutil.Process().memory_info().rss

    # When a job's webhook is delivered to it
    job_id = job_with_webhook(client, f"http://127.0.0.1:{port}/hook")
    wait_until(lambda: delivery_of(client, job_id)["status"] != "pending", timeout=60, what="delivery ended")

    # Then it counts as delivered (the status line is all that is needed) ...
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered", delivery
    assert delivery["attempts"][0]["status_code"] == 200
    # ... the receiver could hand no more than the sockets' buffers before the API closed the
    # connection (it was 256 MB, all read into the API's memory, before) ...
    sent = int(process.stdout.readline().split()[1])
    assert sent < 32 * 1024 * 1024, f"the receiver sent {sent} bytes"
    # ... and the API's memory did not grow by the body
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < 64 * 1024 * 1024, f"RSS grew by {growth} bytes"
    app.extensions["webhooks_thread"].stop()


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_delivery_deadline(settings, receiver_process):
    # Given a receiver that sends its status line one byte every 1.5 s (40 bytes: a minute),
    # and a 3 s deadline per delivery
    process, port = receiver_process("drip")
    app = hook_app(settings, WEBHOOK_TIMEOUT=3)
    client = app.test_client()

    # When a job's webhook goes there
    job_id = job_with_webhook(client, f"http://127.0.0.1:{port}/hook")

    # Then the attempt fails at the deadline (a per-read timeout would have waited a minute
    # and called it delivered), saying so
    wait_until(lambda: delivery_of(client, job_id)["status"] == "failed", timeout=40, what="delivery failed")
    [attempt] = delivery_of(client, job_id)["attempts"]
    assert attempt["error"] == "response deadline exceeded after 3 s"
    assert attempt["status_code"] is None
    # Not before the deadline; the upper bound is generous (a loaded machine records late),
    # far below the minute that the whole drip takes
    assert 3000 <= attempt["duration_ms"] < 30000
    # and the connection was closed: the receiver's next bytes found no reader (of 40)
    assert int(process.stdout.readline().split()[1]) < 10
    app.extensions["webhooks_thread"].stop()


def test_a_receiver_host_that_resolves_slowly_fails_the_attempt_within_the_delivery_deadline(settings):
    # Given a 1 s deadline per delivery, and a receiver host whose DNS answer takes 10 s
    app = hook_app(settings, WEBHOOK_TIMEOUT=1, WEBHOOK_MAX_ATTEMPTS=2)
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    job_id = job_with_webhook(client, "http://localhost:9/hook")  # resolved at once when submitted
    released, answered = threading.Event(), []

    def slow_dns(host, port, proto=0):
        released.wait(10)
        answered.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    dispatcher = services(app).webhooks
    dispatcher.resolve = slow_dns

    # When the dispatcher sends its webhook
    dispatcher.run_once()

    # Then the attempt ends while the lookup is still waiting for DNS: a failed attempt within
    # the deadline, saying why, and the delivery is tried again (a slow answer is no refusal)
    assert dispatcher.wait_idle(8)
    assert answered == []
    delivery = delivery_of(client, job_id)
    [attempt] = delivery["attempts"]
    assert attempt["error"] == "webhook_url host 'localhost' did not resolve within 1 s (WEBHOOK_TIMEOUT)"
    assert attempt["duration_ms"] < 8000  # the deadline (1 s), generously; the lookup takes 10 s
    assert delivery["status"] == "pending"
    released.set()


def test_a_slow_receiver_does_not_hold_up_the_deliveries_to_another(settings, held_receiver):
    # Given a receiver that holds every request (until released), with four deliveries due,
    # and a prompt receiver with one delivery due after them
    slow, fast = held_receiver(), held_receiver()
    fast.release.set()
    app = hook_app(settings, WEBHOOK_TIMEOUT=30, WEBHOOK_CONCURRENCY=8, WEBHOOK_HOST_CONCURRENCY=2)
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    slow_jobs = [job_with_webhook(client, f"http://localhost:{slow.port}/hook") for _ in range(4)]
    fast_job = job_with_webhook(client, f"http://127.0.0.1:{fast.port}/hook")
    dispatcher = services(app).webhooks

    # When the dispatcher runs
    runner = in_background(dispatcher)

    # Then the prompt receiver gets its delivery while the slow one still holds its requests,
    wait_until(lambda: delivery_of(client, fast_job)["status"] == "delivered", what="the prompt delivery")
    assert slow.answered == 0
    # and no more than two deliveries to the slow host are in flight: another pass starts none
    runner.join(60)
    wait_until(lambda: len(slow.received) == 2, what="two slow sends")
    assert dispatcher.run_once() == 0
    assert len(slow.received) == 2
    slow.release.set()
    settle(dispatcher)
    for _ in range(3):  # the other two go at the next passes
        dispatcher.run_once()
        settle(dispatcher)
    assert [delivery_of(client, job)["status"] for job in slow_jobs] == ["delivered"] * 4


def test_one_owner_with_many_slow_hosts_cannot_take_every_slot(settings, held_receiver):
    # Given an owner with five deliveries to five slow hosts (as a wildcard DNS name gives),
    # another owner with one delivery after them, and four delivery slots
    slow = [held_receiver(address=f"127.0.0.{n}") for n in range(2, 7)]
    prompt = held_receiver()
    prompt.release.set()
    app = hook_app(
        settings,
        API_KEYS="mallory:key-m,olivia:key-o",
        WEBHOOK_TIMEOUT=30,
        WEBHOOK_CONCURRENCY=4,
        WEBHOOK_OWNER_CONCURRENCY=3,
    )
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    dispatcher = services(app).webhooks
    for receiver in slow:
        client.environ_base["HTTP_AUTHORIZATION"] = "Bearer key-m"
        job_with_webhook(client, receiver.url)
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer key-o"
    olivia_job = job_with_webhook(client, prompt.url)

    # When the dispatcher runs
    in_background(dispatcher).join(60)

    # Then the other owner's delivery is made while the first owner's three are held
    wait_until(lambda: delivery_of(client, olivia_job)["status"] == "delivered", what="the other owner's delivery")
    wait_until(lambda: sum(len(r.received) for r in slow) == 3, what="three slow sends")
    assert dispatcher.run_once() == 0
    for receiver in slow:
        receiver.release.set()
    settle(dispatcher)


def test_a_claim_outlasts_its_delivery_and_a_second_dispatcher_does_not_send_it_again(settings, held_receiver):
    # Given a 120 s deadline per delivery, and a receiver that holds the request
    hook = held_receiver()
    app = hook_app(settings, WEBHOOK_TIMEOUT=120)
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    job_id = job_with_webhook(client, f"http://127.0.0.1:{hook.port}/hook")
    first = services(app).webhooks
    second = Dispatcher(services(app).sessions, secret=None, allow_loopback=True, timeout=120)

    # When one dispatcher is sending it
    runner = in_background(first)
    wait_until(lambda: len(hook.received) == 1, what="the first send")

    # Then its claim lasts at least as long as the delivery may (it was 60 s before)
    with services(app).sessions() as session:
        claimed_until = session.scalar(select(WebhookDelivery.claimed_until))
    assert claimed_until >= utcnow() + timedelta(seconds=115)
    # and a second dispatcher on the same store does not send it again
    assert second.run_once() == 0
    hook.release.set()
    runner.join(60)
    settle(first, second)
    assert len(hook.received) == 1
    assert delivery_of(client, job_id)["status"] == "delivered"
    assert [a["status_code"] for a in delivery_of(client, job_id)["attempts"]] == [200]


def test_a_dispatcher_whose_claim_was_taken_over_records_nothing(settings, held_receiver):
    # Given two dispatchers on one store, and a receiver that holds the first request and
    # then answers it 500, and answers the second one 200 at once
    hook = held_receiver(statuses=[500, 200])
    first_answer = hook.gates[0] = threading.Event()
    hook.release.set()
    app = hook_app(settings, WEBHOOK_TIMEOUT=30, WEBHOOK_MAX_ATTEMPTS=3)
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    job_id = job_with_webhook(client, f"http://127.0.0.1:{hook.port}/hook")
    sessions = services(app).sessions
    stale = services(app).webhooks
    other = Dispatcher(sessions, secret=None, allow_loopback=True, timeout=30)
    stale_runner = in_background(stale)
    wait_until(lambda: len(hook.received) == 1, what="the first send")

    # When the first dispatcher's claim lapses while it waits (as if its process had been
    # paused past it), the other dispatcher delivers the message, and then the first one
    # gets its (late, 500) answer
    with sessions() as session, session.begin():
        session.execute(update(WebhookDelivery).values(claimed_until=utcnow() - timedelta(seconds=1)))
    in_background(other).join(60)
    wait_until(lambda: delivery_of(client, job_id)["status"] == "delivered", what="delivered by the other")
    first_answer.set()
    wait_until(lambda: hook.answered == 2, what="both answered")
    stale_runner.join(60)
    settle(stale, other)

    # Then the stale dispatcher's answer changes nothing: one attempt, delivered
    delivery = delivery_of(client, job_id)
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is True


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204),
        (b"HTTP/1.0 302 Found\r\nLocation: http://10.0.0.1/\r\n\r\n", 302),
        (b"HTTP/1.1 200\r\n", 200),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP/1 status line"),
        (b"", "closed the connection before answering"),
        (b"HTTP/1.1 103 Early Hints\r\n" + b"Link: </x>; rel=preload\r\n" * 400, "in the first 4096 bytes"),
    ],
)
def test_only_the_status_line_is_read_and_odd_answers_are_named(answer, outcome):
    from backend.webhooks.http_post import DeliveryError, post
    from backend.webhooks.ssrf import resolve_webhook_url

    with one_answer(answer) as port:
        target = resolve_webhook_url(f"http://127.0.0.1:{port}/hook", allow_loopback=True)
        if isinstance(outcome, int):
            assert post(target, b"{}", {}, timeout=5) == outcome
        else:
            with pytest.raises(DeliveryError, match=outcome):
                post(target, b"{}", {}, timeout=5)
