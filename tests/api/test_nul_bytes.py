"""A NUL character (0x00) anywhere a client can put a string is answered like any other odd
input, on either store: PostgreSQL's text columns refuse NUL where SQLite keeps it, and
schemathesis found it answered 500 there (GET /jobs, POST /jobs/cancel, POST /internal/reports)."""

from __future__ import annotations

import pytest

from tests.conftest import TOKEN

INTERNAL = {"X-Internal-Token": TOKEN}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/jobs?task=a%00b", None),
        ("GET", "/jobs?status=QUEUED&task=%00", None),
        ("GET", "/jobs/job_%00x", None),
        ("POST", "/jobs/job_%00x/cancel", None),
        ("POST", "/jobs/cancel", {"job_ids": ["job_\x00x"]}),
        ("POST", "/tasks/add", {"args": [1, 2], "idempotency_key": "key\x00"}),
        ("POST", "/tasks/echo", {"args": ["a\x00b"], "kwargs": {"k\x00": "v\x00"}}),
        ("POST", "/tasks/echo/batch", {"jobs": [{"args": ["\x00"]}]}),
        ("POST", "/scheduled-jobs", {"name": "n\x00", "task": "echo", "cron": "* * * * *"}),
    ],
)
def test_a_nul_in_a_string_is_answered_without_a_server_error(client, method, path, body):
    # When a client sends a NUL character in a path, a query or a body
    response = client.open(path, method=method, json=body, headers=INTERNAL)

    # Then the answer is JSON, and not a 5xx
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json


def test_a_worker_report_naming_a_job_with_a_nul_is_answered_without_a_server_error(client):
    # When a worker's batch names a job id holding a NUL
    report = {"job_id": "job_\x00", "attempt": 1, "event": "completed", "worker": "w", "result": None}
    response = client.post("/internal/reports", json={"reports": [report], "sent_at": 0}, headers=INTERNAL)

    # Then the API answers it (unknown job, or refused), not 500
    assert response.status_code < 500, response.get_data(as_text=True)


@pytest.mark.parametrize("query", ["task=a%00b", "status=QUEUED&task=%00"])
def test_a_task_filter_with_a_nul_matches_no_job_on_either_store(client, query):
    # Given a job on the books
    assert client.post("/tasks/add", json={"args": [1, 2]}).status_code == 202

    # When a client lists jobs by a task name holding a NUL (no task's name can)
    response = client.get(f"/jobs?{query}")

    # Then the filter matches nothing, as any other unknown task name does (schemathesis counts
    # a 400 for a value the schema allows as a rejected valid request)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["jobs"] == []


def test_a_bulk_cancel_naming_an_id_with_a_nul_answers_as_for_any_unknown_id_on_either_store(client):
    # When a client cancels by ids, one of which holds a NUL (no job's id can)
    response = client.post("/jobs/cancel", json={"job_ids": ["job_\x00x"]})

    # Then it is answered as an unknown id is (schemathesis counts a 400 there as a rejected valid request)
    unknown = client.post("/jobs/cancel", json={"job_ids": ["job_nosuchjob"]})
    assert (response.status_code, response.get_json().keys()) == (unknown.status_code, unknown.get_json().keys())


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/internal/reports", {"reports": [{"job_id": "job_\x00x", "attempt": 1, "event": "progress"}]}),
        (
            "POST",
            "/internal/reports",
            {"reports": [{"job_id": "\x00", "attempt": 9, "event": "progress"}, {"job_id": "I", "event": "completed"}]},
        ),
        ("POST", "/internal/jobs/job_%00x/progress", {"attempt": 1, "progress": 5}),
        ("GET", "/jobs/job_%00x/attempts", None),
        ("GET", "/jobs/job_%00x/webhooks", None),
        ("POST", "/jobs/job_%00x/retry", None),
        ("GET", "/batches/bat_%00x", None),
        ("GET", "/scheduled-jobs/sch_%00x", None),
        ("GET", "/jobs?schedule_id=sch_%00x", None),
        ("POST", "/tasks/echo", {"args": [1], "depends_on": ["job_\x00x"]}),
    ],
)
def test_an_id_holding_a_nul_is_answered_as_any_unknown_id_on_either_store(client, method, path, body):
    # When a client or a worker names an id holding a NUL (no id the service makes can)
    response = client.open(path, method=method, json=body, headers=INTERNAL)

    # Then it is answered exactly as the same id without the NUL, which names no job either
    # (schemathesis counts a 400 there as a rejected valid request)
    unknown = client.open(path.replace("%00", ""), method=method, json=_without_nul(body), headers=INTERNAL)
    assert response.status_code == unknown.status_code, response.get_data(as_text=True)
    assert _shape(response.get_json()) == _shape(unknown.get_json())


def _shape(body):
    """The error's code, or the body's keys: the id itself appears in some messages."""
    return body["error"]["code"] if "error" in body else sorted(body)


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    return value
