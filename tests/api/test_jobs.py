"""GET /jobs/<id> and GET /jobs: owners, admins, filters and cursor pagination."""

from __future__ import annotations

import pytest

from backend.app import create_app

KEYS = "alice:alice-key,bob:bob-key,ops:ops-key:admin"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


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
