"""Polling a finished job: served from the process's cache without a store read, and still right.

Why: a client polling a COMPLETED job (issue 17's polling target) paid a store round trip per
request. A COMPLETED job with no webhook owed can only be deleted (retention), so its body is
served as built, the store asked again once it is ``FINAL_RECHECK`` seconds old. These tests show
what that must keep: the owner's check on every request, a prune seen within the recheck, and
every job that can still change (a webhook owed, a FAILED job retried) read afresh.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, update

from backend.api.context import services
from backend.app import create_app, stop_background
from backend.service import job_reads
from backend.store import clock
from backend.store.engine import transaction
from backend.store.models import Job
from tests.helpers import AUTH, bearer, submit

KEYS = "alice:alice-key,bob:bob-key,ops:ops-key:admin"
HOOK = "http://127.0.0.1:9/hook"  # never called: WEBHOOK_INTERVAL is 0


def ended(client, status: str, headers: dict | None = None, **body) -> str:
    """A job of task add ended as ``status`` by its worker's reports; its id."""
    job_id = submit(client, "add", args=[1, 2], max_retries=0, headers=headers, **body)["job_id"]
    url = f"/internal/jobs/{job_id}"
    assert client.post(f"{url}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH).status_code == 200
    report = {"attempt": 1, "result": 3} if status == "COMPLETED" else {"attempt": 1, "error": "boom"}
    assert client.post(f"{url}/{status.lower()}", json=report, headers=AUTH).status_code == 200
    return job_id


class StampReads:
    """Counts the store reads behind GET /jobs/<id> (the stamp read every poll used to make)."""

    def __init__(self, app, monkeypatch):
        self.count = 0
        stamps = services(app).job_reader._stamps
        real = stamps.read

        def counted(job_id):
            self.count += 1
            return real(job_id)

        monkeypatch.setattr(stamps, "read", counted)


@pytest.fixture
def keyed_app(settings):
    settings["API_KEYS"] = KEYS
    app = create_app(settings)
    yield app
    stop_background(app)


def test_a_completed_job_is_served_without_reading_the_store_and_its_prune_shows_within_the_recheck(
    app, client, monkeypatch
):
    # Given a COMPLETED job, polled once
    job_id = ended(client, "COMPLETED")
    first = client.get(f"/jobs/{job_id}")
    assert first.status_code == 200 and first.get_json()["status"] == "COMPLETED"
    reads = StampReads(app, monkeypatch)
    # When it is polled again and again within the recheck time
    monkeypatch.setattr(job_reads, "FINAL_RECHECK", 60.0)
    answers = [client.get(f"/jobs/{job_id}") for _ in range(20)]
    # Then each gets the same body, and the store was not asked
    assert all(a.status_code == 200 and a.get_data() == first.get_data() for a in answers)
    assert reads.count == 0
    # When retention deletes it (as a prune on any host does), Then it answers 404 once its body is
    # FINAL_RECHECK old, and the store is asked once for that
    with transaction(services(app).sessions) as session:
        session.execute(delete(Job).where(Job.id == job_id))
    monkeypatch.setattr(job_reads, "FINAL_RECHECK", 0.05)
    time.sleep(0.06)
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert reads.count == 2


def test_a_cached_finished_job_is_still_404_for_another_tenant(keyed_app, monkeypatch):
    # Given Alice's COMPLETED job, polled by Alice (its body now served from the cache)
    client = keyed_app.test_client()
    monkeypatch.setattr(job_reads, "FINAL_RECHECK", 60.0)
    alice, bob, ops = bearer("alice-key"), bearer("bob-key"), bearer("ops-key")
    job_id = ended(client, "COMPLETED", headers=alice)
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200
    reads = StampReads(keyed_app, monkeypatch)
    # When Bob and an admin poll it, Then Bob gets 404 as for a missing job, the admin the job
    other = client.get(f"/jobs/{job_id}", headers=bob)
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/jobs/{job_id}", headers=ops).get_json()["job_id"] == job_id
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200
    assert reads.count == 0


def test_a_completed_job_that_still_owes_its_webhook_is_read_every_time(settings, monkeypatch):
    # Given a COMPLETED job whose webhook is not delivered yet, polled once
    settings.update(WEBHOOK_ALLOW_LOOPBACK=1, WEBHOOK_SECRET="s" * 32)
    app = create_app(settings)
    try:
        client = app.test_client()
        monkeypatch.setattr(job_reads, "FINAL_RECHECK", 60.0)
        job_id = ended(client, "COMPLETED", webhook_url=HOOK)
        assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is None
        # When the dispatcher records the delivery (as store/deliveries.py writes it)
        with transaction(services(app).sessions) as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(webhook_delivered=True, updated_at=clock.now(session))
            )
        # Then the next poll shows it at once
        assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is True
        # And from then on the job can only be deleted: it is served without a store read
        reads = StampReads(app, monkeypatch)
        assert client.get(f"/jobs/{job_id}").get_json()["webhook_delivered"] is True
        assert reads.count == 0
    finally:
        stop_background(app)


def test_a_failed_job_retried_shows_its_new_attempt_at_once(client, monkeypatch):
    # Given a FAILED job, polled (a retry can still change it: it is read every time)
    monkeypatch.setattr(job_reads, "FINAL_RECHECK", 60.0)
    job_id = ended(client, "FAILED")
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "FAILED"
    # When a client retries it, Then the next poll shows the new attempt
    assert client.post(f"/jobs/{job_id}/retry", json={}).status_code == 202
    again = client.get(f"/jobs/{job_id}").get_json()
    assert again["status"] in ("PENDING", "QUEUED") and again["attempt"] == 2
