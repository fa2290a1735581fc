"""GET /jobs/<id> and GET /jobs: owners, admins, filters and cursor pagination."""

from __future__ import annotations

import pytest

from backend.app import create_app
from tests.helpers import AUTH, bearer

KEYS = "alice:alice-key,bob:bob-key,ops:ops-key:admin"


@pytest.fixture
def keyed_client(settings):
    settings["API_KEYS"] = KEYS
    return create_app(settings).test_client()


def test_unknown_job_is_404(client):
    response = client.get("/jobs/job_nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_a_key_never_sees_another_owners_job(keyed_client):
    job = keyed_client.post("/tasks/echo", json={}, headers=bearer("alice-key")).get_json()

    assert keyed_client.get(f"/jobs/{job['job_id']}", headers=bearer("alice-key")).status_code == 200
    other = keyed_client.get(f"/jobs/{job['job_id']}", headers=bearer("bob-key"))
    assert other.status_code == 404
    assert keyed_client.get("/jobs", headers=bearer("bob-key")).get_json()["jobs"] == []
    assert keyed_client.get(f"/jobs/{job['job_id']}", headers=bearer("ops-key")).status_code == 200
    assert len(keyed_client.get("/jobs", headers=bearer("ops-key")).get_json()["jobs"]) == 1


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic abc"}])
def test_without_a_valid_key_the_api_answers_401_and_records_nothing(keyed_client, headers):
    response = keyed_client.post("/tasks/echo", json={}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert keyed_client.get("/jobs", headers=bearer("ops-key")).get_json()["jobs"] == []


def test_without_keys_only_loopback_clients_are_served(client):
    assert client.get("/jobs").status_code == 200
    response = client.get("/jobs", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 403
    assert "loopback" in response.get_json()["error"]["message"]


def test_list_is_newest_first_and_paginates_with_a_cursor(client):
    ids = [client.post("/tasks/add", json={"args": [i, i]}).get_json()["job_id"] for i in range(5)]

    page1 = client.get("/jobs?limit=2").get_json()
    page2 = client.get(f"/jobs?limit=2&cursor={page1['next_cursor']}").get_json()
    page3 = client.get(f"/jobs?limit=2&cursor={page2['next_cursor']}").get_json()

    listed = [job["job_id"] for page in (page1, page2, page3) for job in page["jobs"]]
    assert listed == list(reversed(ids))
    assert page3["next_cursor"] is None


def test_list_filters_by_status_and_task(client):
    client.post("/tasks/add", json={"args": [1, 2]})
    client.post("/tasks/echo", json={})

    assert [j["task"] for j in client.get("/jobs?task=add").get_json()["jobs"]] == ["add"]
    assert len(client.get("/jobs?status=queued").get_json()["jobs"]) == 2
    assert client.get("/jobs?status=COMPLETED").get_json()["jobs"] == []


@pytest.mark.parametrize("query", ["status=DONE", "limit=0", "limit=abc", "limit=100000", "cursor=!!!"])
def test_bad_list_queries_are_422(client, query):
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "validation_failed"


# -- polling the same job: every change shows at once -------------------------------------


def test_repeated_polls_see_every_change_of_the_job(client, app):
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    url = f"/internal/jobs/{job['job_id']}"
    seen = [client.get(f"/jobs/{job['job_id']}").get_json()]
    for event, body in [
        ("started", {"attempt": 1, "worker": "w"}),
        ("progress", {"attempt": 1, "progress": 40, "message": "m"}),
        ("completed", {"attempt": 1, "result": 3}),
    ]:
        assert client.post(f"{url}/{event}", json=body, headers=AUTH).status_code == 200
        again = client.get(f"/jobs/{job['job_id']}").get_json()
        assert again == client.get(f"/jobs/{job['job_id']}").get_json()
        seen.append(again)
    assert [(j["status"], j["progress"]) for j in seen] == [
        ("QUEUED", 0),
        ("PROCESSING", 0),
        ("PROCESSING", 40),
        ("COMPLETED", 100),
    ]
    assert seen[-1]["result"] == 3


def test_a_waiting_job_shows_its_parent_ending(client):
    parent = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    child = client.post("/tasks/add", json={"args": [1, 2], "depends_on": [parent["job_id"]]}).get_json()
    assert client.get(f"/jobs/{child['job_id']}").get_json()["waiting_for"] == [parent["job_id"]]

    client.post(f"/internal/jobs/{parent['job_id']}/completed", json={"attempt": 1, "result": 3}, headers=AUTH)

    assert client.get(f"/jobs/{child['job_id']}").get_json()["waiting_for"] == []


# -- attempts: a cap on retries, and pages bounded in bytes -------------------------------

RETRY = {"X-Requested-With": "test"}


def fail_attempt(client, job_id: str, attempt: int, error: str) -> None:
    """What a worker reports when an attempt of the job raised ``error``."""
    started = client.post(f"/internal/jobs/{job_id}/started", json={"attempt": attempt, "worker": "w"}, headers=AUTH)
    assert started.status_code == 200, started.get_json()
    failed = client.post(f"/internal/jobs/{job_id}/failed", json={"attempt": attempt, "error": error}, headers=AUTH)
    assert failed.status_code == 200, failed.get_json()


def test_a_retry_past_max_attempts_per_job_is_409_naming_the_cap(settings):
    # Before: every retry was 202, so a loop of retries grew the job's attempts without end
    # (560 retries in a minute made an 8.5 MB GET /jobs/<id>/attempts).
    settings["MAX_ATTEMPTS_PER_JOB"] = 3
    client = create_app(settings).test_client()
    job_id = client.post("/tasks/add", json={"args": [1, 1], "max_retries": 0}).get_json()["job_id"]
    for attempt in (1, 2):
        fail_attempt(client, job_id, attempt, "boom")
        assert client.post(f"/jobs/{job_id}/retry", headers=RETRY).status_code == 202
    fail_attempt(client, job_id, 3, "boom")

    refused = client.post(f"/jobs/{job_id}/retry", headers=RETRY)

    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "conflict" and "MAX_ATTEMPTS_PER_JOB" in error["message"]
    assert error["details"]["setting"] == "MAX_ATTEMPTS_PER_JOB" and error["details"]["limit"] == 3
    job = client.get(f"/jobs/{job_id}").get_json()
    assert (job["status"], job["attempt"]) == ("FAILED", 3)
    assert len(client.get(f"/jobs/{job_id}/attempts").get_json()["attempts"]) == 3


def test_attempts_come_in_pages_bounded_in_bytes_and_by_limit(settings):
    # Before: GET /jobs/<id>/attempts answered every attempt with its whole error in one body.
    settings["JOBS_PAGE_MAX_BYTES"] = 40_000
    client = create_app(settings).test_client()
    job_id = client.post("/tasks/add", json={"args": [1, 1], "max_retries": 0}).get_json()["job_id"]
    for attempt in range(1, 6):
        fail_attempt(client, job_id, attempt, f"attempt {attempt} " + "x" * 15_000)
        if attempt < 5:
            assert client.post(f"/jobs/{job_id}/retry", headers=RETRY).status_code == 202

    first = client.get(f"/jobs/{job_id}/attempts")
    assert first.status_code == 200
    assert len(first.data) <= 40_000 + 1_000
    page = first.get_json()
    assert [a["attempt"] for a in page["attempts"]] == [1, 2]
    assert page["attempts"][0]["error"].startswith("attempt 1 ")
    seen = [a["attempt"] for a in page["attempts"]]
    while page["next_cursor"] is not None:
        page = client.get(f"/jobs/{job_id}/attempts?cursor={page['next_cursor']}").get_json()
        seen += [a["attempt"] for a in page["attempts"]]
    assert seen == [1, 2, 3, 4, 5]

    one = client.get(f"/jobs/{job_id}/attempts?limit=1&cursor=3").get_json()
    assert ([a["attempt"] for a in one["attempts"]], one["next_cursor"]) == ([4], "4")
    for bad in ("limit=0", "limit=x", "cursor=-1", "cursor=1_0", "cursor=9999999999"):
        answer = client.get(f"/jobs/{job_id}/attempts?{bad}")
        assert answer.status_code == 422, bad
        assert answer.get_json()["error"]["code"] == "validation_failed"
