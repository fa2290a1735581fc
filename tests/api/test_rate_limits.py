"""Rate limits per API key and endpoint class, counted in Redis."""

from __future__ import annotations

import pytest

from backend.app import create_app
from tests.conftest import TOKEN


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
            headers={"X-Internal-Token": TOKEN},
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
