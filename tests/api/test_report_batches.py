"""POST /internal/reports: a worker's reports in one request, applied in order, one answer each."""

from __future__ import annotations

import time
from datetime import datetime

from backend.api.context import services
from tests.helpers import AUTH, submit_add


def _batch(client, reports, *, sent_at=None, headers=AUTH):
    body = {"sent_at": sent_at or time.time(), "reports": reports}
    return client.post("/internal/reports", json=body, headers=headers)


def test_a_start_and_an_end_in_one_batch_complete_the_job_with_both_times(client):
    job = submit_add(client)
    now = time.time()
    reports = [
        {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "w1", "at": now - 2.0},
        {"job_id": job["job_id"], "attempt": 1, "event": "progress", "progress": 50, "message": "half", "at": now - 1},
        {"job_id": job["job_id"], "attempt": 1, "event": "completed", "result": 3, "at": now - 0.5},
    ]

    response = _batch(client, reports, sent_at=now)

    assert response.status_code == 200
    assert response.get_json()["results"] == [{"status": 200}] * 3
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["status"], after["result"], after["progress"], after["worker"]) == ("COMPLETED", 3, 100, "w1")
    started, completed = (datetime.fromisoformat(after[k]) for k in ("started_at", "completed_at"))
    # Times come from the worker's own clock differences: the run took 1.5 s.
    assert 1.3 < (completed - started).total_seconds() < 1.7
    attempts = client.get(f"/jobs/{job['job_id']}/attempts").get_json()["attempts"]
    assert [(a["attempt"], a["worker"], a["outcome"]) for a in attempts] == [(1, "w1", "COMPLETED")]
    stats = client.get("/monitoring/queue/stats").get_json()
    assert stats["jobs"]["COMPLETED"] == 1 and stats["jobs"].get("QUEUED", 0) == 0


def test_each_report_gets_its_own_answer_and_the_others_still_apply(client):
    first, second = submit_add(client), submit_add(client)
    reports = [
        {"job_id": first["job_id"], "attempt": 1, "event": "started", "worker": "w"},
        {"job_id": "job_nosuch", "attempt": 1, "event": "started", "worker": "w"},
        {"job_id": second["job_id"], "attempt": 2, "event": "completed", "result": 1},
        {"job_id": second["job_id"], "attempt": 1, "event": "started", "worker": "w"},
        {"job_id": second["job_id"], "attempt": 1, "event": "started", "worker": "w"},
    ]

    answers = _batch(client, reports).get_json()["results"]

    assert [answer["status"] for answer in answers] == [200, 404, 409, 200, 200]
    assert "attempt 2" in answers[2]["error"]
    assert client.get(f"/jobs/{first['job_id']}").get_json()["status"] == "PROCESSING"
    assert client.get(f"/jobs/{second['job_id']}").get_json()["status"] == "PROCESSING"


def test_reports_after_the_end_are_refused_and_change_nothing(client):
    job = submit_add(client)
    _batch(client, [{"job_id": job["job_id"], "attempt": 1, "event": "completed", "result": 3}])
    before = client.get(f"/jobs/{job['job_id']}").get_json()

    answers = _batch(
        client,
        [
            {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "late"},
            {"job_id": job["job_id"], "attempt": 1, "event": "progress", "progress": 5},
            {"job_id": job["job_id"], "attempt": 1, "event": "failed", "error": "late"},
            {"job_id": job["job_id"], "attempt": 1, "event": "completed", "result": 99},
        ],
    ).get_json()["results"]

    assert [answer["status"] for answer in answers] == [409, 409, 409, 200]
    assert client.get(f"/jobs/{job['job_id']}").get_json() == before


def test_a_failure_with_retries_left_starts_the_next_attempt(client):
    job = submit_add(client, max_retries=1)
    answers = _batch(
        client,
        [
            {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "w"},
            {"job_id": job["job_id"], "attempt": 1, "event": "failed", "error": "ValueError: no"},
        ],
    ).get_json()["results"]

    assert [answer["status"] for answer in answers] == [200, 200]
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["attempt"], after["retry_count"], after["error"]) == (2, 1, "ValueError: no")
    assert after["status"] in ("PENDING", "QUEUED")


def test_a_job_with_a_webhook_gets_its_delivery_row(settings):
    from backend.app import create_app

    settings.update({"WEBHOOK_ALLOW_LOOPBACK": 1, "WEBHOOK_SECRET": "whsec_" + "a" * 32})
    client = create_app(settings).test_client()
    job = client.post("/tasks/add", json={"args": [1, 2], "webhook_url": "http://127.0.0.1:9/hook"}).get_json()
    assert job["status"] == "QUEUED", job
    _batch(client, [{"job_id": job["job_id"], "attempt": 1, "event": "completed", "result": 3}])

    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"
    deliveries = client.get(f"/jobs/{job['job_id']}/webhooks").get_json()["deliveries"]
    assert len(deliveries) == 1


def test_a_malformed_batch_is_400_and_changes_nothing(client):
    # As GET shows it (a submission's answer does not read Redis for the waiting fields).
    job = client.get(f"/jobs/{submit_add(client)['job_id']}").get_json()
    good = {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "w"}
    for reports, fault in [
        ([good, {"job_id": job["job_id"], "attempt": 1, "event": "exploded"}], "reports[1].event"),
        ([good, {"job_id": job["job_id"], "attempt": "1", "event": "started", "worker": "w"}], "reports[1].attempt"),
        ([good, {"job_id": job["job_id"], "attempt": 1, "event": "progress", "progress": 101}], "reports[1].progress"),
        ([good, {"job_id": job["job_id"], "attempt": 1, "event": "started"}], "reports[1].worker"),
        ([good, {"job_id": 5, "attempt": 1, "event": "started", "worker": "w"}], "reports[1].job_id"),
        ([good, {**good, "colour": "red"}], "reports[1].colour"),
        ([good, "started"], "reports[1]"),
        ([good] * 1001, "at most 1000"),
    ]:
        response = _batch(client, reports)
        assert response.status_code == 400, fault
        assert fault in response.get_json()["error"]["message"], (fault, response.get_json())
    huge = {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "w", "at": 10**400}
    for body in [
        {"reports": "x"},
        {"sent_at": "now", "reports": [good]},
        [good],
        {"sent_at": 10**400, "reports": [good]},
        {"sent_at": -5, "reports": [good]},
        {"sent_at": 1.0, "reports": [huge]},
    ]:
        assert client.post("/internal/reports", json=body, headers=AUTH).status_code == 400, body
    assert client.get(f"/jobs/{job['job_id']}").get_json() == job


def test_a_batch_without_the_token_is_401_and_changes_nothing(client):
    job = client.get(f"/jobs/{submit_add(client)['job_id']}").get_json()
    reports = [{"job_id": job["job_id"], "attempt": 1, "event": "completed", "result": 3}]
    for headers in [{}, {"X-Internal-Token": "wrong"}]:
        assert _batch(client, reports, headers=headers).status_code == 401
    assert client.get(f"/jobs/{job['job_id']}").get_json() == job


def test_an_empty_batch_checks_the_token(client):
    assert _batch(client, []).get_json()["results"] == []
    assert _batch(client, [], headers={}).status_code == 401


def test_text_that_is_not_valid_unicode_is_stored_with_a_replacement(client):
    job = submit_add(client, max_retries=0)
    error = "OSError: cannot open b\udcffd.txt"  # a file name decoded with surrogateescape

    answers = _batch(client, [{"job_id": job["job_id"], "attempt": 1, "event": "failed", "error": error}])

    assert answers.status_code == 200 and answers.get_json()["results"] == [{"status": 200}]
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert after["status"] == "FAILED" and after["error"] == "OSError: cannot open b?d.txt"


def test_a_dependants_reports_are_stored_after_its_parents_end_in_the_same_batch(app, client, monkeypatch):
    # Given a parent (its end releases dependants: the job manager applies it) and its child
    parent = submit_add(client)
    child = submit_add(client, depends_on=[parent["job_id"]])
    manager = services(app).jobs
    child_when_parent_ends = []

    def mark_completed(job_id, **kwargs):
        child_when_parent_ends.append(client.get(f"/jobs/{child['job_id']}").get_json()["status"])
        return type(manager).mark_completed(manager, job_id, **kwargs)

    monkeypatch.setattr(manager, "mark_completed", mark_completed)
    reports = [
        {"job_id": parent["job_id"], "attempt": 1, "event": "started", "worker": "w"},
        {"job_id": parent["job_id"], "attempt": 1, "event": "completed", "result": 3},
        {"job_id": child["job_id"], "attempt": 1, "event": "started", "worker": "w"},
        {"job_id": child["job_id"], "attempt": 1, "event": "completed", "result": 4},
    ]

    # When one worker's batch holds the parent's end and then the child's whole run
    answers = _batch(client, reports).get_json()["results"]

    # Then the parent's end was stored first: never a child COMPLETED under a live parent
    assert answers == [{"status": 200}] * 4
    assert child_when_parent_ends == ["QUEUED"]
    after = [client.get(f"/jobs/{job['job_id']}").get_json() for job in (parent, child)]
    assert [(job["status"], job["result"]) for job in after] == [("COMPLETED", 3), ("COMPLETED", 4)]
