"""POST /tasks/<name>: a job is recorded and queued, and every bad input is refused
with a clear JSON error, recording nothing and enqueueing nothing."""

from __future__ import annotations

import json
import zlib

import pytest
from rq import Queue

from tests.helpers import queued_count, stored_jobs


def test_submit_answers_202_with_a_queued_job(client, redis_conn):
    response = client.post("/tasks/echo", json={"args": [1, "two"], "kwargs": {"three": 3}, "priority": "high"})

    assert response.status_code == 202
    job = response.get_json()
    assert job["job_id"].startswith("job_")
    assert job["status"] == "QUEUED"
    assert job["priority"] == "high"
    assert job["attempt"] == 1 and job["retry_count"] == 0 and job["max_retries"] == 3
    assert job["created_at"].endswith("Z")
    assert response.headers["Location"].endswith(f"/jobs/{job['job_id']}")
    assert Queue("high", connection=redis_conn).job_ids == [job["rq_job_id"]]


def test_jobs_are_stored_in_redis_as_json_not_pickle(client, redis_conn):
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    data = zlib.decompress(redis_conn.hget(f"rq:job:{job['rq_job_id']}", "data"))
    func, _instance, args, kwargs = json.loads(data)
    assert (func, args, kwargs) == ("tests.fixtures.add", [1, 2], {})


def test_get_tasks_lists_them_with_their_parameters(client):
    tasks = {task["name"]: task for task in client.get("/tasks").get_json()["tasks"]}
    assert {"echo", "sleep", "fail", "word_count"} <= set(tasks)
    params = {p["name"]: p for p in tasks["word_count"]["parameters"]}
    assert params["text"]["required"] is True
    assert params["top"] == {
        "name": "top",
        "kind": "positional_or_keyword",
        "required": False,
        "default": 10,
        "type": "int",
    }


BAD_INPUTS = [
    # (what, request kwargs, path, status, code)
    ("malformed JSON", {"data": "{not json", "content_type": "application/json"}, "/tasks/echo", 400, "bad_request"),
    (
        "not JSON",
        {"data": "a=1", "content_type": "application/x-www-form-urlencoded"},
        "/tasks/echo",
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"data": "{}"}, "/tasks/echo", 415, "unsupported_media_type"),
    ("a JSON list", {"json": [1, 2]}, "/tasks/echo", 400, "bad_request"),
    (
        "deep nesting",
        {"data": "[" * 50 + "]" * 50, "content_type": "application/json"},
        "/tasks/echo",
        400,
        "bad_request",
    ),
    (
        "very deep nesting",
        {"data": '{"a":' * 100000 + "1" + "}" * 100000, "content_type": "application/json"},
        "/tasks/echo",
        400,
        "bad_request",
    ),
    ("unknown task", {"json": {}}, "/tasks/nope", 404, "not_found"),
    ("a dotted path as task", {"json": {}}, "/tasks/os.system", 404, "not_found"),
    ("missing argument", {"json": {"kwargs": {}}}, "/tasks/word_count", 422, "validation_failed"),
    (
        "unexpected argument",
        {"json": {"kwargs": {"text": "a", "nope": 1}}},
        "/tasks/word_count",
        422,
        "validation_failed",
    ),
    ("too many positional", {"json": {"args": [1, 2, 3]}}, "/tasks/add", 422, "validation_failed"),
    ("args not a list", {"json": {"args": "x"}}, "/tasks/echo", 422, "validation_failed"),
    ("kwargs not an object", {"json": {"kwargs": [1]}}, "/tasks/echo", 422, "validation_failed"),
    ("unknown priority", {"json": {"priority": "urgent"}}, "/tasks/echo", 422, "validation_failed"),
    ("zero timeout", {"json": {"timeout": 0}}, "/tasks/echo", 422, "validation_failed"),
    ("string timeout", {"json": {"timeout": "10"}}, "/tasks/echo", 422, "validation_failed"),
    ("negative retries", {"json": {"max_retries": -1}}, "/tasks/echo", 422, "validation_failed"),
    ("unknown field", {"json": {"colour": "red"}}, "/tasks/echo", 422, "validation_failed"),
    ("empty idempotency key", {"json": {"idempotency_key": ""}}, "/tasks/echo", 422, "validation_failed"),
    ("wrong method", {"json": {}}, "/tasks", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("what", "request_kwargs", "path", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_refused_and_records_nothing(client, redis_conn, what, request_kwargs, path, status, code):
    response = client.post(path, **request_kwargs)

    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert stored_jobs(client) == []
    assert queued_count(redis_conn) == 0


def test_body_over_the_size_cap_is_413(settings, redis_conn):
    from backend.app import create_app

    settings["MAX_CONTENT_LENGTH"] = 1024
    client = create_app(settings).test_client()
    response = client.post("/tasks/echo", json={"args": ["x" * 2048]})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert stored_jobs(client) == []
    assert queued_count(redis_conn) == 0


def test_error_names_the_bad_value(client):
    response = client.post("/tasks/echo", json={"priority": "urgent"})
    assert "'urgent'" in response.get_json()["error"]["message"]


def test_idempotency_key_returns_the_live_job(client, redis_conn):
    first = client.post("/tasks/echo", json={"idempotency_key": "k1"})
    again = client.post("/tasks/echo", json={}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert len(stored_jobs(client)) == 1
    assert queued_count(redis_conn) == 1
