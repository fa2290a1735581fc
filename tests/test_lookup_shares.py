"""One tenant's slow DNS must not fail the other tenants' webhooks, nor their submissions.

Webhook host names are looked up on shared pools of threads (one for the dispatcher, one per
API process for submissions), and a lookup whose caller gave up keeps its thread until the
system resolver gives up. Each owner's lookups hold at most a share of a pool, counted until
they really end; and a delivery that finds no lookup thread free is put off, not counted as an
attempt. Real receiver threads and the app's real dispatcher; only DNS is the test's.
"""

from __future__ import annotations

import socket
import threading

import pytest

from backend.api.context import services
from backend.app import create_app, stop_webhooks
from tests.helpers import wait_until
from tests.receivers import Receiver
from tests.test_webhook_delivery import delivery_of, hook_app, job_with_webhook

PUBLIC = "93.184.216.34"


class HangingDNS:
    """Names under .slow.test hang until ``release`` (then fail as a timed-out DNS server does);
    ok.test is the local receiver; other names as the system answers them."""

    def __init__(self):
        self.release = threading.Event()
        self.system = socket.getaddrinfo
        self.asked: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host.endswith(".slow.test"):
            self.asked.append(host)
            self.release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "ok.test":
            return self.system("127.0.0.1", port, family, type, proto, flags)
        return self.system(host, port, family, type, proto, flags)


def at_once(host, port, family=0, type=0, proto=0, flags=0, *, system=socket.getaddrinfo):
    """Submission-time DNS: .slow.test names answer a public address at once, ok.test loopback."""
    if isinstance(host, str) and host.endswith(".slow.test"):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]
    if host == "ok.test":
        return system("127.0.0.1", port, family, type, proto, flags)
    return system(host, port, family, type, proto, flags)


@pytest.fixture
def hanging_dns():
    dns = HangingDNS()
    yield dns
    dns.release.set()


def submit_as(client, key: str, url: str) -> str:
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return job_with_webhook(client, url)


def run_passes_until(dispatcher, predicate, what: str, timeout: float = 60.0) -> None:
    def one_pass():
        dispatcher.run_once()
        dispatcher.wait_idle(30)
        return predicate()

    wait_until(one_pass, timeout=timeout, what=what)


def lookups_busy_attempts(delivery: dict) -> list[str]:
    return [a["error"] for a in delivery["attempts"] if a["error"] and "host lookups" in a["error"]]


def test_one_owners_slow_dns_leaves_another_owners_webhook_delivered(settings, monkeypatch, hanging_dns):
    # Given two owners, and a receiver that answers at once
    prompt = Receiver(hold=True)
    prompt.release.set()
    monkeypatch.setattr(socket, "getaddrinfo", at_once)
    app = hook_app(
        settings,
        API_KEYS="mallory:key-m,olivia:key-o",
        WEBHOOK_TIMEOUT=1,
        WEBHOOK_INTERVAL=0,
        WEBHOOK_MAX_ATTEMPTS=3,
        WEBHOOK_BACKOFF_SECONDS=0.01,
    )
    client = app.test_client()
    dispatcher = services(app).webhooks
    dispatcher.resolve = hanging_dns
    try:
        # When mallory's 16 webhooks (the dispatcher's lookup pool is 16 threads) name
        # distinct hosts whose DNS never answers, and each has been tried
        mallory = [submit_as(client, "key-m", f"http://m{n}.slow.test/hook") for n in range(16)]
        for _ in range(6):  # 4 of hers in flight a pass (WEBHOOK_OWNER_CONCURRENCY): each tried
            dispatcher.run_once()
            dispatcher.wait_idle(30)
        # and then olivia's webhook names a host that resolves, its receiver up
        olivia = submit_as(client, "key-o", f"http://ok.test:{prompt.port}/olivia")
        run_passes_until(dispatcher, lambda: delivery_of(client, olivia)["status"] != "pending", "olivia's delivery")

        # Then olivia's webhook is delivered on its first attempt (before: every attempt
        # failed "too many webhook_url host lookups are running" and the delivery failed)
        delivery = delivery_of(client, olivia)
        assert delivery["status"] == "delivered", delivery
        assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(200, None)]
        assert len(prompt.received) == 1  # one request, to the receiver that was up
        # and mallory's lookups hold only their share of the pool: her deliveries that found
        # it full were put off, no attempt of theirs recorded for a busy pool
        assert len(set(hanging_dns.asked)) == dispatcher.resolver.per_owner == 4
        client.environ_base["HTTP_AUTHORIZATION"] = "Bearer key-m"  # her jobs are hers to read
        for job in mallory:
            assert lookups_busy_attempts(delivery_of(client, job)) == []
    finally:
        hanging_dns.release.set()
        stop_webhooks(app, wait=False)
        prompt.close()


def test_a_delivery_that_finds_every_lookup_thread_busy_is_put_off_not_counted(settings, monkeypatch, hanging_dns):
    # Given four owners whose slow-DNS webhooks fill the whole lookup pool (4 x their share of 4)
    prompt = Receiver(hold=True)
    prompt.release.set()
    monkeypatch.setattr(socket, "getaddrinfo", at_once)
    owners = ["a", "b", "c", "d"]
    app = hook_app(
        settings,
        API_KEYS=",".join(f"{o}:key-{o}" for o in [*owners, "olivia"]),
        WEBHOOK_TIMEOUT=1,
        WEBHOOK_INTERVAL=0,
        WEBHOOK_MAX_ATTEMPTS=2,
        WEBHOOK_BACKOFF_SECONDS=0.01,
    )
    client = app.test_client()
    dispatcher = services(app).webhooks
    dispatcher.resolve = hanging_dns
    try:
        for owner in owners:
            for n in range(4):
                submit_as(client, f"key-{owner}", f"http://{owner}{n}.slow.test/hook")
        run_passes_until(dispatcher, lambda: len(set(hanging_dns.asked)) == 16, "the pool filled")

        # When olivia's webhook is tried many times while the pool stays full
        olivia = submit_as(client, "key-olivia", f"http://ok.test:{prompt.port}/olivia")
        for _ in range(8):
            dispatcher.run_once()
            dispatcher.wait_idle(30)

        # Then it is still pending, with no attempt recorded (before: a failed attempt "too
        # many webhook_url host lookups are running" was recorded, counted toward
        # WEBHOOK_MAX_ATTEMPTS though the receiver was never asked)
        delivery = delivery_of(client, olivia)
        assert (delivery["status"], delivery["attempts"]) == ("pending", [])
        assert prompt.received == []

        # And once the slow lookups end, it is delivered
        hanging_dns.release.set()
        run_passes_until(dispatcher, lambda: delivery_of(client, olivia)["status"] != "pending", "olivia's delivery")
        delivery = delivery_of(client, olivia)
        assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(200, None)]
        assert len(prompt.received) == 1  # one request, to the receiver that was up
    finally:
        hanging_dns.release.set()
        stop_webhooks(app, wait=False)
        prompt.close()


def test_one_owners_slow_dns_leaves_another_owners_submission_accepted(settings, monkeypatch, hanging_dns):
    # Given two owners, a quarter of a second for one request's lookups, and the API's
    # submission lookup pool of 16 threads
    monkeypatch.setattr(socket, "getaddrinfo", hanging_dns)
    settings.update(API_KEYS="mallory:key-m,olivia:key-o", WEBHOOK_RESOLVE_SECONDS=0.25, WEBHOOK_ALLOW_LOOPBACK=1)
    app = create_app(settings)
    client = app.test_client()

    # When mallory submits 16 jobs whose webhooks name distinct hosts whose DNS never answers
    mallory = []
    for n in range(16):
        response = client.post(
            "/tasks/add",
            json={"args": [1, 1], "webhook_url": f"https://m{n}.slow.test/hook"},
            headers={"Authorization": "Bearer key-m"},
        )
        mallory.append((response.status_code, response.get_json()["error"]["message"]))

    # Then her first 4 wait for DNS and are 422; the rest are answered 503 at once naming
    # her share, their names never looked up (before: all 16 were looked up and held the pool)
    assert [status for status, _ in mallory] == [422] * 4 + [503] * 12
    assert mallory[4][1] == (
        "4 webhook_url host lookups of this owner are still running (slow DNS), the most one owner may hold;"
        " try again shortly"
    )
    assert len(hanging_dns.asked) == 4

    # And olivia's submission, its webhook host resolving, is accepted (before: 503)
    response = client.post(
        "/tasks/add",
        json={"args": [1, 1], "webhook_url": "http://ok.test:8080/hook"},
        headers={"Authorization": "Bearer key-o"},
    )
    assert response.status_code == 202, response.get_json()

    # And once her lookups really end (DNS gave up), her share is hers again
    hanging_dns.release.set()
    resolver = app.extensions["webhook_resolver"]
    wait_until(lambda: resolver.held("mallory") == 0, what="mallory's lookups ended")
    response = client.post(
        "/tasks/add",
        json={"args": [1, 1], "webhook_url": "http://ok.test:8080/hook"},
        headers={"Authorization": "Bearer key-m"},
    )
    assert response.status_code == 202, response.get_json()
