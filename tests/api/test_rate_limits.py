"""Rate limits per API key and endpoint class, counted in Redis."""

from __future__ import annotations

import pytest

from backend.app import create_app
from tests.helpers import AUTH


@pytest.fixture
def limited(settings):
    settings.update({"RATE_LIMIT_ENABLED": 1, "API_KEYS": "alice:ka,bob:kb"})
    return settings


def test_the_eleventh_submission_in_a_minute_is_429_with_the_headers(limited):
    client = create_app(limited).test_client()
    alice = {"Authorization": "Bearer ka"}

    answers = [client.post("/tasks/add", json={"args": [1, 1]}, headers=alice) for _ in range(11)]

    assert [a.status_code for a in answers] == [202] * 10 + [429]
    first, last = answers[0], answers[-1]
    assert first.headers["X-RateLimit-Limit"] == "10"
    assert first.headers["X-RateLimit-Remaining"] == "9"
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    assert last.get_json()["error"]["code"] == "too_many_requests"
    assert int(last.headers["Retry-After"]) > 0
    assert last.headers["X-RateLimit-Remaining"] == "0"
    # the refused submission recorded nothing
    assert len(client.get("/jobs", headers=alice).get_json()["jobs"]) == 10


def test_limits_are_per_key_and_per_endpoint_class_and_hold_across_api_processes(limited):
    first_api = create_app(limited).test_client()
    second_api = create_app(limited).test_client()
    alice, bob = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    for i in range(10):
        api = first_api if i % 2 else second_api
        assert api.post("/tasks/add", json={"args": [1, 1]}, headers=alice).status_code == 202

    assert second_api.post("/tasks/add", json={"args": [1, 1]}, headers=alice).status_code == 429
    assert first_api.post("/tasks/add", json={"args": [1, 1]}, headers=bob).status_code == 202
    listing = first_api.get("/jobs", headers=alice)
    assert listing.status_code == 200
    assert listing.headers["X-RateLimit-Limit"] == "100"


def test_workers_internal_calls_are_never_limited(limited):
    limited["RATE_LIMIT_DEFAULT"] = "2/minute"
    client = create_app(limited).test_client()
    job = client.post("/tasks/add", json={"args": [1, 1]}, headers={"Authorization": "Bearer ka"}).get_json()
    for _ in range(5):
        response = client.post(
            f"/internal/jobs/{job['job_id']}/progress",
            json={"attempt": 1, "progress": 10},
            headers=AUTH,
        )
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers


def test_batches_have_their_own_limit(limited):
    limited["RATE_LIMIT_BATCH"] = "1/minute"
    client = create_app(limited).test_client()
    alice = {"Authorization": "Bearer ka"}
    assert client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}]}, headers=alice).status_code == 202
    assert client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}]}, headers=alice).status_code == 429
    assert client.post("/tasks/add", json={"args": [1, 1]}, headers=alice).status_code == 202


def test_retries_and_requeues_count_against_the_submit_limit(limited):
    # Before: a retry counted only against the 100/minute default, so a tenant could start
    # as many runs per minute as it liked by cancelling and retrying one job.
    limited["API_KEYS"] = "alice:ka,root:kr:admin"
    limited["RATE_LIMIT_SUBMIT"] = "3/minute"
    client = create_app(limited).test_client()
    alice = {"Authorization": "Bearer ka", "X-Requested-With": "test"}
    job_id = client.post("/tasks/add", json={"args": [1, 1]}, headers=alice).get_json()["job_id"]

    answers = []
    for _ in range(3):
        assert client.post(f"/jobs/{job_id}/cancel", headers=alice).status_code == 200
        answers.append(client.post(f"/jobs/{job_id}/retry", headers=alice))

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[-1].get_json()["error"]["code"] == "too_many_requests"
    # the refused retry started nothing: the job is still cancelled, on its third attempt
    job = client.get(f"/jobs/{job_id}", headers=alice).get_json()
    assert (job["status"], job["attempt"]) == ("CANCELLED", 3)
    # an admin's requeue counts against the admin's own submit budget, the same way
    root = {"Authorization": "Bearer kr"}
    requeues = [client.post("/monitoring/queue/failed", json={"job_id": job_id}, headers=root) for _ in range(4)]
    assert requeues[0].status_code == 202
    assert requeues[-1].status_code == 429


def test_creating_and_running_schedules_count_against_the_submit_limit(limited):
    # Before: both counted only against the 100/minute default.
    limited["RATE_LIMIT_SUBMIT"] = "3/minute"
    client = create_app(limited).test_client()
    alice = {"Authorization": "Bearer ka", "X-Requested-With": "test"}
    body = {"name": "often", "task": "add", "cron": "* * * * *", "args": [1, 1]}
    created = client.post("/scheduled-jobs", json=body, headers=alice)
    assert created.status_code == 201
    schedule_id = created.get_json()["id"]

    runs = [client.post(f"/scheduled-jobs/{schedule_id}/run", headers=alice) for _ in range(3)]

    assert [r.status_code for r in runs] == [202, 202, 429]
    assert runs[-1].get_json()["error"]["code"] == "too_many_requests"
    assert client.post("/scheduled-jobs", json={**body, "name": "other"}, headers=alice).status_code == 429
    assert len(client.get(f"/scheduled-jobs/{schedule_id}/jobs", headers=alice).get_json()["jobs"]) == 2
    # another key's budget is its own
    bob = {"Authorization": "Bearer kb", "X-Requested-With": "test"}
    assert client.post("/tasks/add", json={"args": [1, 1]}, headers=bob).status_code == 202
