"""A managed Redis's failover behind one DNS name, as the service meets it: the server it is
connected to turns read-only (demoted). That is an outage (the "Redis down" paths), and the
connection is dropped, so the next command connects afresh. Also the maxmemory-policy checks."""

from __future__ import annotations

import logging

import pytest
from redis import Redis

from backend.app import create_app
from backend.broker.connection import connect
from backend.broker.errors import BrokerUnreachable
from backend.dev.redis_server import free_port
from tests.helpers import wait_for_status, wait_until
from tests.sentinels import start_redis

pytestmark = pytest.mark.sqlite_only(reason="about Redis; the store plays no part")


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, to demote and to configure."""
    server = start_redis(tmp_path)
    yield server
    server.stop()


def demote(server) -> None:
    """Make ``server`` a replica of a master that does not exist: it answers reads, refuses writes."""
    Redis(port=server.port).replicaof("127.0.0.1", free_port())


def test_a_demoted_master_is_an_outage_and_its_connection_is_dropped(own_redis):
    client = connect(own_redis.url)
    client.set("k", "1")
    first = client.client_id()

    demote(own_redis)
    with pytest.raises(BrokerUnreachable, match="read only"):
        client.set("k", "2")

    Redis(port=own_redis.port).replicaof("NO", "ONE")  # the name points at a master again
    client.set("k", "3")
    assert client.get("k") == b"3"
    assert client.client_id() != first  # a new connection: the demoted one was not kept


def test_submit_and_cancel_take_the_redis_down_paths_on_a_read_only_redis(own_redis, settings):
    client = create_app({**settings, "REDIS_URL": own_redis.url}).test_client()
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()

    demote(own_redis)
    cancel = client.post(f"/jobs/{job['job_id']}/cancel", json={})
    submit = client.post("/tasks/add", json={"args": [1, 2]})

    assert cancel.status_code == 503 and cancel.headers["Retry-After"]
    assert submit.status_code == 202 and submit.get_json()["status"] in ("PENDING", "QUEUED")


@pytest.fixture
def on_own_redis(settings, own_redis) -> dict:
    """The settings of the app and workers a test asks for after this: on ``own_redis``."""
    settings["REDIS_URL"] = own_redis.url
    return settings


def test_a_worker_waits_out_a_read_only_redis_and_goes_on(own_redis, on_own_redis, client, start_worker):
    worker = start_worker("--name", "waits-out-readonly", "--simple")
    first = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    wait_for_status(client, first["job_id"], {"COMPLETED"})

    before = len(worker.output())
    demote(own_redis)  # the idle worker's blocking read is cut, its next writes refused

    # Promoted back only once the worker's work loop has met the read-only Redis (its log says
    # so; the lease thread's "lease not renewed" does not count: it meets it whatever the loop does).
    def met_read_only() -> bool:
        lines = worker.output()[before:].splitlines()
        return any("read only replica" in line and "backend.broker.leases" not in line for line in lines)

    try:
        wait_until(met_read_only, timeout=30, what="READONLY")
    except AssertionError:
        raise AssertionError(f"the worker never met the read-only Redis:\n{worker.output()[before:][-4000:]}") from None
    Redis(port=own_redis.port).replicaof("NO", "ONE")
    second = client.post("/tasks/add", json={"args": [2, 2]}).get_json()

    assert wait_for_status(client, second["job_id"], {"COMPLETED"}, timeout=30)["result"] == 4
    assert worker.process.poll() is None  # it waited; it did not exit


def test_a_policy_other_than_noeviction_is_warned_about_at_start_and_in_health(own_redis, settings, caplog):
    Redis(port=own_redis.port).config_set("maxmemory-policy", "volatile-lru")
    with caplog.at_level(logging.WARNING):
        client = create_app({**settings, "REDIS_URL": own_redis.url}).test_client()
    assert "maxmemory-policy is 'volatile-lru', not noeviction" in caplog.text

    redis = client.get("/monitoring/health").get_json()["checks"]["redis"]
    assert redis["ok"] is True and redis["maxmemory_policy"] == "volatile-lru"
    assert "noeviction" in redis["warning"]

    Redis(port=own_redis.port).config_set("maxmemory-policy", "noeviction")
    assert client.get("/monitoring/health").get_json()["checks"]["redis"] == {
        "ok": True,
        "maxmemory_policy": "noeviction",
    }


def test_a_redis_that_refuses_config_get_is_reported_as_unchecked(tmp_path, settings, caplog):
    server = start_redis(tmp_path, "--rename-command", "CONFIG", "")  # as managed Redis services do
    try:
        with caplog.at_level(logging.WARNING):
            client = create_app({**settings, "REDIS_URL": server.url}).test_client()
        redis = client.get("/monitoring/health").get_json()["checks"]["redis"]
    finally:
        server.stop()
    assert "maxmemory-policy could not be checked" in caplog.text
    assert redis["ok"] is True and redis["maxmemory_policy"] is None and "could not be checked" in redis["warning"]


READ_AND_WRITE_ROUTES = [
    ("GET", "/jobs"),
    ("GET", "/jobs/{job}"),
    ("GET", "/jobs/{job}/attempts"),
    ("POST", "/jobs/{job}/retry"),
    ("POST", "/jobs/cancel"),
    ("POST", "/tasks/add/batch"),
    ("GET", "/monitoring/health"),
    ("GET", "/monitoring/queue/stats"),
    ("GET", "/monitoring/queue/workers"),
    ("GET", "/monitoring/queue/failed"),
    ("POST", "/monitoring/queue/failed"),
    ("GET", "/metrics"),
    ("GET", "/rq/"),
    ("GET", "/dashboard"),
]


def test_no_route_answers_a_server_error_other_than_503_on_a_read_only_redis(own_redis, settings):
    # Given the API on a Redis that a failover demoted (reads answer, writes are refused)
    client = create_app({**settings, "REDIS_URL": own_redis.url}).test_client()
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    demote(own_redis)

    # When a client calls routes that read from or write to Redis
    bodies = {"/jobs/cancel": {"job_ids": [job]}, "/tasks/add/batch": {"jobs": [{"args": [1, 2]}]}}
    answers = {}
    for method, path in READ_AND_WRITE_ROUTES:
        path = path.format(job=job)
        response = client.open(path, method=method, json=bodies.get(path, {}) if method == "POST" else None)
        answers[f"{method} {path}"] = (response.status_code, response.headers.get("Retry-After"))

    # Then none answers a server error but 503 with Retry-After
    bad = {route: answer for route, answer in answers.items() if answer[0] >= 500 and answer != (503, answer[1])}
    bad |= {route: answer for route, answer in answers.items() if answer[0] == 503 and not answer[1]}
    assert not bad, answers
