"""The SSRF guard: what it refuses, and that a webhook connects to the address it checked."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time

import pytest

from backend.api.context import services
from backend.app import create_app
from backend.core.errors import ValidationFailed
from backend.webhooks.http_post import DeliveryError, post
from backend.webhooks.ssrf import check_webhook_url, resolve_webhook_url
from tests.receivers import receivers

# Each one reaches (or may reach) an address that is not on the public internet.
NEVER = [
    "http://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
    "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/hook",  # 6to4 of the metadata address 169.254.169.254
    "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[64:ff9b:1::a00:1]/hook",  # local-use NAT64
    "http://[::7f00:1]/hook",  # IPv4-compatible 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",  # Teredo
    "http://[::ffff:10.0.0.1]/hook",  # IPv4-mapped private
    "http://[::ffff:169.254.169.254]/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://[ff0e::1]/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://192.0.2.10/hook",  # documentation
    "http://198.18.0.1/hook",  # benchmarking
    "http://240.0.0.1/hook",  # reserved
    "http://255.255.255.255/hook",
    "http://[fc00::1]/hook",  # unique local
    "http://[fd00:ec2::254]/hook",  # AWS metadata over IPv6
    "http://example.com:0/hook",  # port 0
    "http://8.8.8.8:0/hook",
    "http://8.8.8.8:65536/hook",
]


def public(host, port, proto=0):
    """A resolver that answers a public address for every name (and an IP literal as itself)."""
    if host.replace(".", "").isdigit() or ":" in host:
        return socket.getaddrinfo(host, port, proto=proto)
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]


@pytest.mark.parametrize("allow_loopback", [False, True])
@pytest.mark.parametrize("url", NEVER)
def test_addresses_that_are_not_globally_routable_are_refused_even_with_loopback_allowed(url, allow_loopback):
    with pytest.raises(ValidationFailed):
        check_webhook_url(url, allow_loopback=allow_loopback, resolve=public)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook"])
def test_loopback_is_refused_unless_allowed(url):
    with pytest.raises(ValidationFailed, match="loopback"):
        check_webhook_url(url, allow_loopback=False)
    assert check_webhook_url(url, allow_loopback=True) == url


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/hook", "https://[2606:4700:4700::1111]:8443/x?y=1", "https://hooks.example.com/hook"]
)
def test_public_addresses_are_accepted(url):
    assert check_webhook_url(url, allow_loopback=False, resolve=public) == url


def test_a_name_is_refused_if_any_of_its_addresses_is_not_global():
    def resolve(host, port, proto=0):
        return public(host, port) + [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", port, 0, 0))]

    with pytest.raises(ValidationFailed, match="embeds 127.0.0.1"):
        check_webhook_url("https://hooks.example.com/hook", allow_loopback=True, resolve=resolve)


@pytest.mark.parametrize("url", ["http://100.64.0.1/hook", "http://[2002:a9fe:a9fe::]/", "http://127.0.0.1:0/hook"])
def test_the_api_refuses_them_with_422_even_with_loopback_allowed(settings, url):
    settings["WEBHOOK_ALLOW_LOOPBACK"] = 1
    client = create_app(settings).test_client()
    response = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": url})
    assert response.status_code == 422
    assert "webhook_url" in response.get_json()["error"]["message"]
    assert client.get("/jobs").get_json()["jobs"] == []


@pytest.fixture
def receiver():
    with receivers(then=204) as make:
        yield make


def test_dns_rebinding_after_the_check_never_reaches_loopback(settings, receiver):
    # Given a job whose webhook names a host, and a real receiver on loopback
    hook = receiver()
    settings.update({"WEBHOOK_ALLOW_LOOPBACK": 1, "WEBHOOK_MAX_ATTEMPTS": 1, "WEBHOOK_TIMEOUT": 2})
    app = create_app(settings)
    client = app.test_client()
    job = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": f"http://localhost:{hook.port}/hook"})
    job_id = job.get_json()["job_id"]
    client.post(f"/jobs/{job_id}/cancel", headers={"X-Requested-With": "test"})

    # When its name resolves to a public address when checked and to 127.0.0.1 afterwards
    answers = []

    def rebinding(host, port, proto=0):
        if answers:
            answers.append("127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        answers.append("public")
        # (an IPv6 address: where there is no IPv6 route nothing leaves the machine)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:4860:4860::8888", port, 0, 0))]

    dispatcher = services(app).webhooks
    dispatcher.allow_loopback = False
    dispatcher.resolve = rebinding
    dispatcher.run_once()
    assert dispatcher.wait_idle(30)

    # Then it was resolved once, and the loopback receiver never got the webhook
    assert answers == ["public"]
    assert hook.hosts == []
    [delivery] = client.get(f"/jobs/{job_id}/webhooks").get_json()["deliveries"]
    assert delivery["status"] == "failed"
    assert "2001:4860:4860::8888" in delivery["attempts"][0]["error"] or "deadline" in delivery["attempts"][0]["error"]


def make_certificate(directory, name: str):
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_context(cert, key) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def to_loopback(host, port, proto=0):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_the_pinned_connection_keeps_the_host_name_for_host_sni_and_the_certificate(tmp_path, receiver):
    # Given a TLS receiver on 127.0.0.1 with a certificate for hooks.test
    cert, key = make_certificate(tmp_path, "hooks.test")
    hook = receiver(context=server_context(cert, key))
    trust = ssl.create_default_context(cafile=str(cert))
    target = resolve_webhook_url(f"https://hooks.test:{hook.port}/hook", allow_loopback=True, resolve=to_loopback)
    assert target.addresses == ("127.0.0.1",)

    # When a webhook is posted to the address that was checked
    status = post(target, b"{}", {"content-type": "application/json"}, timeout=5, ssl_context=trust)

    # Then the server saw the name in SNI and Host, and the certificate was checked against it
    assert status == 204
    assert hook.sni == ["hooks.test"]
    assert hook.hosts == [f"hooks.test:{hook.port}"]


def test_a_certificate_for_another_name_is_refused(tmp_path, receiver):
    cert, key = make_certificate(tmp_path, "other.test")
    hook = receiver(context=server_context(cert, key))
    trust = ssl.create_default_context(cafile=str(cert))
    target = resolve_webhook_url(f"https://hooks.test:{hook.port}/hook", allow_loopback=True, resolve=to_loopback)

    with pytest.raises(DeliveryError, match="certificate verify failed"):
        post(target, b"{}", {}, timeout=5, ssl_context=trust)
    assert hook.hosts == []


class SlowDNS:
    """``socket.getaddrinfo`` for these tests: names under .slow.test answer only when released
    (or after 3 s), names under .example.test at once (a public address for both), other names
    as the system answers them (the test's Redis and store connections)."""

    def __init__(self):
        self.release = threading.Event()
        self.asked: list[str] = []
        self.answered: list[str] = []
        self.system = socket.getaddrinfo

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        if not isinstance(host, str) or not host.endswith((".slow.test", ".example.test")):
            return self.system(host, port, family, type, proto, flags)
        self.asked.append(host)
        if host.endswith(".slow.test"):
            self.release.wait(3)
        self.answered.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]


@pytest.fixture
def slow_dns(monkeypatch):
    dns = SlowDNS()
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    yield dns
    dns.release.set()


def test_a_batch_whose_webhook_host_resolves_slowly_is_answered_422_while_the_lookup_still_runs(settings, slow_dns):
    # Given half a second for one request's webhook lookups, and a host whose DNS answers late
    settings["WEBHOOK_RESOLVE_SECONDS"] = 0.5
    client = create_app(settings).test_client()
    jobs = [{"args": [1, n], "webhook_url": "https://hooks.slow.test/hook"} for n in range(5)]

    # When a batch names it
    response = client.post("/tasks/add/batch", json={"jobs": jobs})

    # Then the request is answered while the lookup is still waiting for DNS (the request's
    # thread did not wait for it), with a 422 naming the host and the budget, nothing recorded
    assert slow_dns.answered == []
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert "'hooks.slow.test' did not resolve within 0.5 s (WEBHOOK_RESOLVE_SECONDS)" in error["message"]
    assert slow_dns.asked == ["hooks.slow.test"]
    assert client.get("/jobs").get_json()["jobs"] == []

    # And once DNS has answered, the client's retry is served from that answer at once
    slow_dns.release.set()
    for _ in range(100):
        if slow_dns.answered:
            break
        time.sleep(0.05)
    assert client.post("/tasks/add/batch", json={"jobs": jobs}).status_code == 202
    assert slow_dns.asked == ["hooks.slow.test"]


def test_a_request_naming_more_distinct_webhook_hosts_than_the_cap_is_422_naming_it(settings, slow_dns):
    # Given at most 3 webhook host names per request
    settings["WEBHOOK_MAX_HOSTS"] = 3
    client = create_app(settings).test_client()

    # When a batch names 3 hosts (20 jobs on one of them), and another names 60
    three = [{"args": [1, 1], "webhook_url": "https://a.example.test/hook"}] * 20 + [
        {"args": [1, 1], "webhook_url": f"https://{name}.example.test/hook"} for name in ("b", "c")
    ]
    accepted = client.post("/tasks/add/batch", json={"jobs": three})
    many = [{"args": [1, 1], "webhook_url": f"https://h{n}.example.test/hook"} for n in range(60)]
    refused = client.post("/tasks/add/batch", json={"jobs": many})

    # Then the first is accepted, each name looked up once; the second is 422 naming the cap,
    # after 3 lookups, not 60
    assert accepted.status_code == 202
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert (
        error["message"]
        == "jobs[3]: one request may name at most 3 distinct webhook_url host names (WEBHOOK_MAX_HOSTS)"
    )
    assert slow_dns.asked == [f"{name}.example.test" for name in ("a", "b", "c", "h0", "h1", "h2")]
    assert len(client.get("/jobs?limit=100").get_json()["jobs"]) == 22


def test_when_every_lookup_thread_is_busy_a_submission_is_answered_503_without_waiting(settings, slow_dns):
    from backend.webhooks.resolver import BoundedResolver

    # Given one lookup thread, taken by a lookup that its request gave up on
    settings["WEBHOOK_RESOLVE_SECONDS"] = 0.2
    app = create_app(settings)
    app.extensions["webhook_resolver"] = BoundedResolver(threads=1)
    client = app.test_client()
    first = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": "https://one.slow.test/hook"})
    assert first.status_code == 422

    # When another submission names another host
    second = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": "https://two.slow.test/hook"})

    # Then it is answered at once, 503 with Retry-After, its name never looked up
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "2"
    assert "webhook_url host lookups" in second.get_json()["error"]["message"]
    assert slow_dns.asked == ["one.slow.test"]
    assert slow_dns.answered == []
    assert client.get("/jobs").get_json()["jobs"] == []


def test_callers_of_one_name_share_its_lookup_and_each_waits_only_its_own_timeout():
    from backend.webhooks.resolver import BoundedResolver, LookupTimeout

    release, calls = threading.Event(), []

    def slow(host, port, proto=0):
        calls.append(host)
        release.wait(5)
        return public(host, port)

    resolver = BoundedResolver(threads=1)
    results = []

    def caller(timeout):
        try:
            results.append(resolver.getaddrinfo("hooks.example.com", 443, timeout=timeout, lookup=slow))
        except LookupTimeout:
            results.append("timeout")

    impatient = threading.Thread(target=caller, args=(0.1,))
    patient = threading.Thread(target=caller, args=(10,))
    impatient.start()
    patient.start()
    impatient.join(5)
    assert results == ["timeout"]  # the impatient caller left; the lookup goes on
    release.set()
    patient.join(5)
    assert results[1][0][4][0] == "93.184.216.34"
    assert calls == ["hooks.example.com"]  # one lookup for both, on the one thread
