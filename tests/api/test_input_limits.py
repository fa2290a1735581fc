"""Inputs that used to be accepted wrongly or answered with the wrong status: non-finite
numbers, falsy priorities, query integers that only Python's int() reads as numbers, chunked
bodies over the size cap, a reused idempotency key and an unbounded bulk cancel."""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit

import pytest
from sqlalchemy import event

from backend.api.context import services
from tests.helpers import queued_count, stored_jobs


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


@pytest.mark.parametrize("depends_on", [False, 0, "", {}])
def test_a_falsy_depends_on_is_422_not_none(client, depends_on):
    response = client.post("/tasks/echo", json={"depends_on": depends_on})
    assert response.status_code == 422
    assert "depends_on must be a list" in response.get_json()["error"]["message"]
    assert stored_jobs(client) == []


def test_a_null_priority_is_the_default(client):
    response = client.post("/tasks/echo", json={"priority": None})
    assert response.status_code == 202
    assert response.get_json()["priority"] == "default"


@pytest.mark.parametrize("limit", ["", "1_0", "\uff11\uff10", " 10", "10 ", "+10", "1e1", "0x10", "\u0661\u0660"])
def test_a_query_integer_must_be_ascii_digits(client, limit):
    response = client.get("/jobs", query_string={"limit": limit})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "ASCII digits" in response.get_json()["error"]["message"]


def test_a_query_parameter_given_twice_is_422_not_its_first_value(client):
    response = client.get("/jobs?limit=5&limit=500")
    assert response.status_code == 422
    assert "'limit' is given more than once" in response.get_json()["error"]["message"]
    assert client.get("/jobs?status=QUEUED&status=FAILED").status_code == 422


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


def test_an_idempotency_key_with_the_same_request_returns_the_first_job(client, redis_conn):
    first = client.post("/tasks/add", json={"args": [1, 2]}, headers={"Idempotency-Key": "k"})
    # The same request, with its defaults spelled out this time.
    again = client.post(
        "/tasks/add",
        json={"args": [1, 2], "kwargs": {}, "priority": "default", "timeout": 600, "max_retries": 3},
        headers={"Idempotency-Key": "k"},
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert queued_count(redis_conn) == 1


@pytest.mark.parametrize(
    ("path", "body", "differs"),
    [
        ("/tasks/add", {"args": [1, 3]}, "args"),
        ("/tasks/echo", {"args": [1, 2]}, "task"),
        ("/tasks/add", {"args": [1, 2], "priority": "high"}, "priority"),
        ("/tasks/add", {"kwargs": {"a": 1, "b": 2}}, "args, kwargs"),
        ("/tasks/add", {"args": [1, 2], "max_retries": 0}, "max_retries"),
    ],
)
def test_an_idempotency_key_reused_with_another_request_is_422(client, redis_conn, path, body, differs):
    first = client.post("/tasks/add", json={"args": [1, 2]}, headers={"Idempotency-Key": "k"}).get_json()
    response = client.post(path, json=body, headers={"Idempotency-Key": "k"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert f"differs in {differs}" in error["message"]
    assert error["details"]["job_id"] == first["job_id"]
    assert [job["job_id"] for job in stored_jobs(client)] == [first["job_id"]]
    assert queued_count(redis_conn) == 1


def test_a_bulk_cancel_over_the_cap_is_422_naming_it(client, redis_conn):
    job = client.post("/tasks/echo", json={}).get_json()
    cap = 1000
    response = client.post("/jobs/cancel", json={"job_ids": [job["job_id"]] + [f"job_{i}" for i in range(cap)]})
    assert response.status_code == 422
    assert "BULK_CANCEL_MAX_IDS" in response.get_json()["error"]["message"]
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"


def test_a_bulk_cancel_of_unknown_ids_costs_one_lookup(app, client):
    job = client.post("/tasks/echo", json={}).get_json()
    statements: list[str] = []
    me = threading.get_ident()

    def count(conn, cursor, statement, *args):
        if threading.get_ident() == me:  # this request's (the test client runs it here), not housekeeping's
            statements.append(statement)

    engine = services(app).engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.post("/jobs/cancel", json={"job_ids": [f"job_unknown_{i}" for i in range(999)]})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["cancelled"] == [] and len(answer["skipped"]) == 999
    assert {s["reason"] for s in answer["skipped"]} == {"not_found"}
    # One SELECT for all 999 ids, instead of one (or more) per id.
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"


def test_a_bulk_cancel_by_filter_takes_at_most_the_cap_and_says_more(settings, redis_conn):
    from backend.app import create_app

    settings["BULK_CANCEL_MAX_IDS"] = 2
    client = create_app(settings).test_client()
    ids = [client.post("/tasks/echo", json={"args": [i]}).get_json()["job_id"] for i in range(3)]
    first = client.post("/jobs/cancel", json={"task": "echo"}).get_json()
    assert (first["cancelled"], first["more"]) == (ids[:2], True)
    second = client.post("/jobs/cancel", json={"task": "echo"}).get_json()
    assert (second["cancelled"], second["more"]) == (ids[2:], False)


@pytest.mark.parametrize(
    "body",
    [
        {"job_ids": ["job_x"], "task": "echo"},
        {"status": ""},
        {"task": ""},
        {"status": "COMPLETED"},
        {},
    ],
)
def test_a_bulk_cancel_takes_ids_or_a_filter(client, body):
    client.post("/tasks/echo", json={})
    response = client.post("/jobs/cancel", json=body)
    assert response.status_code == 422
    assert [job["status"] for job in stored_jobs(client)] == ["QUEUED"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/scheduled-jobs", b'{"name": "\\ud800", "task": "echo", "cron": "* * * * *"}'),
        ("/tasks/echo", b'{"idempotency_key": "\\ud800"}'),
        ("/tasks/echo", b'{"depends_on": ["\\udfff"]}'),
        ("/tasks/echo", b'{"kwargs": {"\\ud800": 1}}'),
        ("/jobs/cancel", b'{"job_ids": ["\\ud800"]}'),
        ("/monitoring/queue/failed", b'{"job_id": "\\ud800"}'),
    ],
)
def test_a_string_that_is_not_unicode_text_is_400_not_500(client, redis_conn, path, raw):
    # An unpaired surrogate escape is valid JSON but no text: it failed as a 500 wherever the
    # string met UTF-8 (a store parameter, a Redis key).
    response = client.post(path, data=raw, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "not Unicode text" in response.get_json()["error"]["message"]
    assert stored_jobs(client) == []
    assert queued_count(redis_conn) == 0


def test_a_surrogate_pair_is_text(client):
    response = client.post("/tasks/echo", data=b'{"args": ["\\ud83d\\ude00"]}', content_type="application/json")
    assert response.status_code == 202
    assert response.get_json()["args"] == ["\U0001f600"]
