"""Inputs that used to be accepted wrongly or answered with the wrong status: non-finite
numbers, falsy priorities, query integers that only Python's int() reads as numbers, chunked
bodies over the size cap, a reused idempotency key and an unbounded bulk cancel."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from rq import Queue

from backend.config import QUEUE_NAMES

AJAX = {"X-Requested-With": "test"}


def stored_jobs(client) -> list:
    return client.get("/jobs").get_json()["jobs"]


def queued_count(redis_conn) -> int:
    return sum(Queue(name, connection=redis_conn).count for name in QUEUE_NAMES)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/tasks/echo", b'{"args": [1e400]}'),
        ("/tasks/echo", b'{"kwargs": {"deep": {"er": [-1E999]}}}'),
        ("/tasks/echo", b'{"args": [1], "timeout": 1e400}'),
        ("/tasks/echo/batch", b'{"jobs": [{"args": [2.5e308]}]}'),
        ("/scheduled-jobs", b'{"name": "n", "task": "echo", "cron": "* * * * *", "args": [1e400]}'),
    ],
)
def test_a_number_that_is_not_finite_is_400_anywhere_in_a_body(client, redis_conn, path, raw):
    response = client.post(path, data=raw, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert "finite" in error["message"]
    assert stored_jobs(client) == []
    assert client.get("/scheduled-jobs").get_json()["scheduled_jobs"] == []
    assert queued_count(redis_conn) == 0


def test_large_but_finite_numbers_are_kept(client):
    response = client.post("/tasks/echo", data=b'{"args": [1.7e308, -2.5e-320]}', content_type="application/json")
    assert response.status_code == 202
    assert client.get(f"/jobs/{response.get_json()['job_id']}").get_json()["args"] == [1.7e308, -2.5e-320]


@pytest.mark.parametrize("priority", [0, False, "", [], {}, "HIGH"])
def test_a_falsy_or_unknown_priority_is_422_not_the_default(client, redis_conn, priority):
    response = client.post("/tasks/echo", json={"priority": priority})
    assert response.status_code == 422
    assert "priority must be one of" in response.get_json()["error"]["message"]
    assert stored_jobs(client) == []
    assert queued_count(redis_conn) == 0


def test_a_null_priority_is_the_default(client):
    response = client.post("/tasks/echo", json={"priority": None})
    assert response.status_code == 202
    assert response.get_json()["priority"] == "default"


@pytest.mark.parametrize("limit", ["1_0", "\uff11\uff10", " 10", "10 ", "+10", "1e1", "0x10", "\u0661\u0660"])
def test_a_query_integer_must_be_ascii_digits(client, limit):
    response = client.get("/jobs", query_string={"limit": limit})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "ASCII digits" in response.get_json()["error"]["message"]


def test_ascii_query_integers_still_work(client):
    for _ in range(3):
        client.post("/tasks/echo", json={})
    assert len(client.get("/jobs?limit=2").get_json()["jobs"]) == 2
    assert client.get("/jobs?limit=0").status_code == 422
    assert client.get("/jobs?limit=" + "9" * 40).status_code == 422


def _chunked_post(base_url: str, path: str, chunks: list[bytes]) -> tuple[int, dict]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for chunk in chunks:
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_chunked_body_over_the_size_cap_is_413(app, live_server, redis_conn):
    cap = app.config["MAX_CONTENT_LENGTH"]
    body = json.dumps({"args": ["x" * (cap + 1000)]}).encode()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    status, answer = _chunked_post(live_server, "/tasks/echo", chunks)
    assert status == 413, answer
    assert answer["error"]["code"] == "request_entity_too_large"
    assert app.test_client().get("/jobs").get_json()["jobs"] == []
    assert queued_count(redis_conn) == 0


def test_a_chunked_body_under_the_cap_is_taken(app, live_server):
    body = json.dumps({"args": ["x" * 1000]}).encode()
    status, answer = _chunked_post(live_server, "/tasks/echo", [body[:500], body[500:]])
    assert status == 202, answer
    assert answer["args"] == ["x" * 1000]
