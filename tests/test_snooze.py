"""Snooze: a task asks to run again later (``raise Snooze(seconds, reason)``), no failure counted.

First the API's side (a worker's ``snoozed`` report, as a worker sends it), then real workers.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from rq import Queue

from backend.core.settings import QUEUE_NAMES
from tests.helpers import AUTH, attempts, get_job, submit, submit_add


def _report(client, *reports):
    response = client.post("/internal/reports", json={"sent_at": time.time(), "reports": list(reports)}, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return [answer["status"] for answer in response.get_json()["results"]]


def _started(job_id, attempt):
    return {"job_id": job_id, "attempt": attempt, "event": "started", "worker": "w", "at": time.time()}


def _snoozed(job_id, attempt, seconds, reason):
    return {"job_id": job_id, "attempt": attempt, "event": "snoozed", "seconds": seconds, "reason": reason}


def _scheduled(redis_conn) -> set[str]:
    """The RQ job ids waiting in RQ's scheduler, on every queue of the service."""
    return {
        rq_id
        for name in QUEUE_NAMES
        for rq_id in Queue(name, connection=redis_conn).scheduled_job_registry.get_job_ids()
    }


def test_a_snooze_queues_a_new_attempt_later_without_spending_a_retry(client, redis_conn):
    # Given a running job
    job = submit_add(client)
    job_id = job["job_id"]
    assert _report(client, _started(job_id, 1)) == [200]

    # When its worker reports that the task snoozed for 30 s
    assert _report(client, _snoozed(job_id, 1, 30, "rate limited by the provider")) == [200]

    # Then the job waits QUEUED on attempt 2, in RQ's scheduler, with no retry spent
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["interruptions"]) == ("QUEUED", 2, 0, 0)
    assert (after["snoozes"], after["max_snoozes"], after["error"]) == (1, 100, None)
    wait = datetime.fromisoformat(after["next_retry_at"]) - datetime.fromisoformat(after["updated_at"])
    assert timedelta(seconds=29) < wait <= timedelta(seconds=30)
    assert f"{job_id}-2" in _scheduled(redis_conn)
    # And its history shows the snooze and why
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts(client, job_id)] == [
        (1, "SNOOZED", "rate limited by the provider")
    ]


def test_the_snooze_past_max_snoozes_ends_the_job_failed_with_a_clear_error(client):
    # Given a job that may snooze once
    job_id = submit_add(client, max_snoozes=1)["job_id"]
    assert get_job(client, job_id)["max_snoozes"] == 1
    _report(client, _started(job_id, 1), _snoozed(job_id, 1, 1, "busy"))

    # When its second attempt snoozes too
    assert _report(client, _started(job_id, 2), _snoozed(job_id, 2, 1, "still busy")) == [200, 200]

    # Then the job has FAILED, saying why, and both attempts show their snooze
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["snoozes"]) == ("FAILED", 2, 0, 2)
    assert after["error"] == "snoozed more than max_snoozes (1) times; last reason: still busy"
    assert [(a["outcome"], a["error"]) for a in attempts(client, job_id)] == [
        ("SNOOZED", "busy"),
        ("SNOOZED", after["error"]),
    ]


def test_max_snoozes_zero_fails_the_first_snooze_and_a_stale_snooze_is_refused(client):
    job_id = submit_add(client, max_snoozes=0)["job_id"]

    # A snooze for an attempt the job is not on changes nothing
    assert _report(client, _snoozed(job_id, 2, 5, "stale")) == [409]
    assert get_job(client, job_id)["status"] == "QUEUED"

    # A NUL in the reason (PostgreSQL's text cannot hold one) is replaced, not a failed batch
    assert _report(client, _snoozed(job_id, 1, 5, "no\x00way")) == [200]
    assert get_job(client, job_id)["status"] == "FAILED"
    assert attempts(client, job_id)[0]["error"].endswith("last reason: no\ufffdway")


def test_max_snoozes_outside_0_to_the_limit_is_a_clear_422(client):
    for value in [-1, 10_001, "3", True, 1.5]:
        body = submit(client, "add", status=422, args=[1, 2], max_snoozes=value)
        assert "max_snoozes must be an integer from 0 to 10000" in body["error"]["message"], value


def test_max_snoozes_is_taken_by_batches_too(client):
    response = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 2], "max_snoozes": 7}]})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_ids"][0]
    assert get_job(client, job_id)["max_snoozes"] == 7
