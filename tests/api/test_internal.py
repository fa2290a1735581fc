"""The internal endpoints: only workers with the token, and only forward moves."""

from __future__ import annotations

import pytest

from tests.helpers import AUTH, submit_add


@pytest.fixture
def job(client):
    # As GET shows it (a submission's answer does not read Redis for the waiting fields).
    return client.get(f"/jobs/{submit_add(client)['job_id']}").get_json()


@pytest.mark.parametrize("headers", [{}, {"X-Internal-Token": "wrong"}, {"X-Internal-Token": ""}])
def test_missing_or_wrong_token_is_401_and_changes_nothing(client, job, headers):
    for event, body in [
        ("started", {"attempt": 1, "worker": "w"}),
        ("progress", {"attempt": 1, "progress": 50}),
        ("completed", {"attempt": 1, "result": 3}),
        ("failed", {"attempt": 1, "error": "x"}),
    ]:
        response = client.post(f"/internal/jobs/{job['job_id']}/{event}", json=body, headers=headers)
        assert response.status_code == 401, event
        assert response.get_json()["error"]["code"] == "unauthorized"
    assert client.get(f"/jobs/{job['job_id']}").get_json() == job


def test_without_a_configured_token_every_report_is_refused(settings):
    from backend.app import create_app

    settings["INTERNAL_SERVICE_TOKEN"] = None
    client = create_app(settings).test_client()
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    response = client.post(
        f"/internal/jobs/{job['job_id']}/started", json={"attempt": 1, "worker": "w"}, headers={"X-Internal-Token": ""}
    )
    assert response.status_code == 401


def test_a_backwards_transition_is_refused_with_409(client, job):
    url = f"/internal/jobs/{job['job_id']}"
    assert client.post(f"{url}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH).status_code == 200
    assert client.post(f"{url}/completed", json={"attempt": 1, "result": 3}, headers=AUTH).status_code == 200
    before = client.get(f"/jobs/{job['job_id']}").get_json()

    for event, body in [("failed", {"attempt": 1, "error": "late"}), ("progress", {"attempt": 1, "progress": 10})]:
        response = client.post(f"{url}/{event}", json=body, headers=AUTH)
        assert response.status_code == 409, event
        assert response.get_json()["error"]["code"] == "invalid_transition"
    assert client.get(f"/jobs/{job['job_id']}").get_json() == before


def test_a_repeated_report_is_accepted_and_changes_nothing(client, job):
    url = f"/internal/jobs/{job['job_id']}"
    client.post(f"{url}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    client.post(f"{url}/completed", json={"attempt": 1, "result": 3}, headers=AUTH)
    before = client.get(f"/jobs/{job['job_id']}").get_json()

    again = client.post(f"{url}/completed", json={"attempt": 1, "result": 99}, headers=AUTH)

    assert again.status_code == 200
    assert client.get(f"/jobs/{job['job_id']}").get_json() == before


def test_a_report_for_another_attempt_is_refused(client, job):
    response = client.post(f"/internal/jobs/{job['job_id']}/started", json={"attempt": 2, "worker": "w"}, headers=AUTH)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "stale_attempt"
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"


@pytest.mark.parametrize("value", [-1, 101, "50", None])
def test_progress_outside_0_to_100_is_400(client, job, value):
    url = f"/internal/jobs/{job['job_id']}"
    client.post(f"{url}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    response = client.post(f"{url}/progress", json={"attempt": 1, "progress": value}, headers=AUTH)
    assert response.status_code == 400
    assert client.get(f"/jobs/{job['job_id']}").get_json()["progress"] == 0


def test_report_for_unknown_job_is_404(client):
    response = client.post("/internal/jobs/job_nope/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    assert response.status_code == 404
