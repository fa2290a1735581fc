"""POST /jobs/cancel and POST /jobs/retry by the search filters of GET /jobs (issue 16 item 2):
what they act on, dry_run, the per-request cap, the owner rule and bad bodies."""

from __future__ import annotations

import pytest

from backend.api.context import services
from backend.app import create_app
from tests.helpers import bearer, get_job

KEYS = "alice:alice-key,bob:bob-key,ops:ops-key:admin"


def submit(client, headers=None, **kwargs) -> str:
    response = client.post("/tasks/echo", json={"kwargs": kwargs}, headers=headers or {})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["job_id"]


def test_a_cancel_by_kwargs_cancels_the_matching_live_jobs_oldest_first(client):
    tagged = [submit(client, document_id=7) for _ in range(3)]
    other = submit(client, document_id=8)

    dry = client.post("/jobs/cancel", json={"kwargs": {"document_id": 7}, "dry_run": True})
    assert dry.get_json() == {"matched": 3, "more": False, "dry_run": True}
    assert {get_job(client, job_id)["status"] for job_id in tagged} == {"QUEUED"}

    response = client.post("/jobs/cancel", json={"kwargs": {"document_id": "7"}, "task": "echo"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"cancelled": tagged, "skipped": [], "more": False}
    assert {get_job(client, job_id)["status"] for job_id in tagged} == {"CANCELLED"}
    assert get_job(client, other)["status"] == "QUEUED"
    # Ended jobs are not matched again.
    again = client.post("/jobs/cancel", json={"kwargs": {"document_id": 7}, "dry_run": True})
    assert again.get_json()["matched"] == 0


def test_a_bulk_action_takes_at_most_its_cap_and_says_more(settings):
    settings["BULK_CANCEL_MAX_IDS"] = "2"
    client = create_app(settings).test_client()
    made = [submit(client, batch="b1") for _ in range(3)]

    assert client.post("/jobs/cancel", json={"kwargs": {"batch": "b1"}, "dry_run": True}).get_json() == {
        "matched": 2,
        "more": True,
        "dry_run": True,
    }
    first = client.post("/jobs/cancel", json={"kwargs": {"batch": "b1"}}).get_json()
    assert first == {"cancelled": made[:2], "skipped": [], "more": True}
    second = client.post("/jobs/cancel", json={"kwargs": {"batch": "b1"}}).get_json()
    assert second == {"cancelled": made[2:], "skipped": [], "more": False}


def test_a_retry_by_filter_runs_the_failed_and_cancelled_jobs_again(app, client):
    manager = services(app).jobs
    failed = [submit(client, run="r1") for _ in range(2)]
    cancelled = submit(client, run="r1")
    live = submit(client, run="r1")
    other = submit(client, run="r2")
    for job_id in (*failed, other):
        manager.end_job(job_id, error="boom")
    assert client.post(f"/jobs/{cancelled}/cancel", json={}).status_code == 200

    assert client.post("/jobs/retry", json={"kwargs": {"run": "r1"}, "dry_run": True}).get_json() == {
        "matched": 3,
        "more": False,
        "dry_run": True,
    }
    only_failed = client.post("/jobs/retry", json={"kwargs": {"run": "r1"}, "status": "FAILED", "dry_run": True})
    assert only_failed.get_json()["matched"] == 2

    response = client.post("/jobs/retry", json={"kwargs": {"run": "r1"}})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"retried": [*failed, cancelled], "skipped": [], "more": False}
    for job_id in (*failed, cancelled):
        job = get_job(client, job_id)
        assert (job["status"], job["attempt"]) == ("QUEUED", 2)
    assert get_job(client, live)["attempt"] == 1
    assert get_job(client, other)["status"] == "FAILED"


def test_a_bulk_retry_passes_over_jobs_at_max_attempts(settings):
    """A job that has had MAX_ATTEMPTS_PER_JOB attempts is not picked (nor counted by dry_run):
    the "send again while more" loop reaches the newer jobs instead of skipping the same ones."""
    settings["BULK_CANCEL_MAX_IDS"] = "2"
    settings["MAX_ATTEMPTS_PER_JOB"] = "2"
    app = create_app(settings)
    client, manager = app.test_client(), services(app).jobs
    worn = [submit(client, run="r") for _ in range(2)]
    for job_id in worn:  # attempt 1 failed, retried by hand, attempt 2 failed: at the cap
        manager.end_job(job_id, error="boom")
        manager.retry_job(job_id)
        manager.end_job(job_id, error="boom again")
    fresh = submit(client, run="r")
    manager.end_job(fresh, error="boom")

    dry = client.post("/jobs/retry", json={"kwargs": {"run": "r"}, "dry_run": True}).get_json()
    assert dry == {"matched": 1, "more": False, "dry_run": True}
    body = client.post("/jobs/retry", json={"kwargs": {"run": "r"}}).get_json()
    assert body == {"retried": [fresh], "skipped": [], "more": False}
    assert get_job(client, fresh)["status"] == "QUEUED"
    assert [get_job(client, job_id)["status"] for job_id in worn] == ["FAILED", "FAILED"]


@pytest.mark.parametrize(
    "path, body, says",
    [
        ("/jobs/retry", {}, "send a filter to retry by"),
        ("/jobs/retry", {"dry_run": True}, "send a filter to retry by"),
        ("/jobs/cancel", {"dry_run": True}, "send a filter to cancel by"),
        ("/jobs/retry", {"status": "COMPLETED"}, "status must be one of ['FAILED', 'CANCELLED'] to retry"),
        ("/jobs/cancel", {"status": "FAILED"}, "to cancel"),
        ("/jobs/cancel", {"task": "echo", "colour": "red"}, "unknown fields ['colour']"),
        ("/jobs/cancel", {"job_ids": [], "task": "echo"}, "send job_ids or a filter, not both"),
        ("/jobs/retry", {"task": "echo", "dry_run": "yes"}, "dry_run must be true or false"),
        ("/jobs/retry", {"kwargs": {"x": [1]}}, "kwargs.x must be a string, number, boolean or null"),
        ("/jobs/retry", {"kwargs": {"1x": 1}}, "a kwargs filter names a keyword argument"),
        ("/jobs/retry", {"kwargs": {}}, "kwargs must be an object"),
        ("/jobs/retry", {"q": "ab"}, "q must be 3 to 200 characters"),
        ("/jobs/retry", {"task": 5}, "task must be a non-empty string"),
        ("/jobs/cancel", {"created_after": "soon"}, "created_after must be an ISO 8601 time"),
    ],
)
def test_bad_bulk_bodies_are_422(client, path, body, says):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert says in response.get_json()["error"]["message"]


def test_a_tenant_acts_on_its_own_jobs_only(settings):
    settings["API_KEYS"] = KEYS
    client = create_app(settings).test_client()
    alice, bob, ops = bearer("alice-key"), bearer("bob-key"), bearer("ops-key")
    alices = submit(client, alice, document_id=1)
    bobs = submit(client, bob, document_id=1)

    refused = client.post("/jobs/cancel", json={"owner": "bob", "task": "echo"}, headers=alice)
    assert refused.status_code == 403
    # A tenant's filter is its own jobs, whatever else it names.
    assert client.post("/jobs/cancel", json={"owner": "alice"}, headers=alice).get_json()["cancelled"] == [alices]
    assert client.post("/jobs/retry", json={"kwargs": {"document_id": 1}}, headers=bob).get_json()["retried"] == []
    assert get_job(client, bobs, headers=bob)["status"] == "QUEUED"
    assert client.post("/jobs/cancel", json={"owner": "bob"}, headers=ops).get_json()["cancelled"] == [bobs]


def test_the_old_cancel_forms_still_work(client):
    job = submit(client)
    assert client.post("/jobs/cancel", json={"status": "QUEUED", "task": "echo"}).get_json() == {
        "cancelled": [job],
        "skipped": [],
        "more": False,
    }
    assert client.post("/jobs/cancel", json={"job_ids": [job]}).get_json()["skipped"][0]["job_id"] == job
