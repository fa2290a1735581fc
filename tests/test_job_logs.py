"""Per-job logs: the lines a task logged, kept capped per job, at ``GET /jobs/<job_id>/logs``.

First the API's side (``log`` reports as a worker sends them), then real workers.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select

from backend.api.context import services
from backend.core.long_tasks import MAX_LOG_BYTES_PER_JOB, MAX_LOG_LINE_BYTES, MAX_LOG_LINES_PER_JOB
from backend.store.models import Job, JobLog
from tests.helpers import AUTH, bearer, submit, submit_add
from tests.test_snooze import store_tasks  # noqa: F401 (a fixture)


def _lines(job_id, attempt, messages, level="INFO"):
    lines = [{"at": time.time(), "level": level, "message": message} for message in messages]
    return {"job_id": job_id, "attempt": attempt, "event": "log", "lines": lines}


def _report(client, *reports):
    response = client.post("/internal/reports", json={"sent_at": time.time(), "reports": list(reports)}, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return [answer["status"] for answer in response.get_json()["results"]]


def _logs(client, job_id, query="", headers=None):
    response = client.get(f"/jobs/{job_id}/logs{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_logged_lines_are_read_in_order_a_page_at_a_time(client):
    # Given a job whose attempts logged five lines, some after it ended
    job_id = submit_add(client)["job_id"]
    started = {"job_id": job_id, "attempt": 1, "event": "started", "worker": "w"}
    failed = {"job_id": job_id, "attempt": 1, "event": "failed", "error": "boom"}
    assert _report(client, started, _lines(job_id, 1, ["one", "two"], "WARNING"), failed) == [200, 200, 200]
    assert _report(client, _lines(job_id, 1, ["late"]), _lines(job_id, 2, ["again", "done"])) == [200, 200]

    # When a client reads them two at a time
    first = _logs(client, job_id, "?limit=2")
    second = _logs(client, job_id, f"?limit=2&after={first['next_after']}")
    third = _logs(client, job_id, f"?limit=2&after={second['next_after']}")

    # Then it gets every line once, in order, with its attempt and level
    lines = first["lines"] + second["lines"] + third["lines"]
    assert [(line["attempt"], line["level"], line["message"]) for line in lines] == [
        (1, "WARNING", "one"),
        (1, "WARNING", "two"),
        (1, "INFO", "late"),
        (2, "INFO", "again"),
        (2, "INFO", "done"),
    ]
    assert [line["seq"] for line in lines] == sorted({line["seq"] for line in lines})
    assert lines[0]["at"].endswith("Z")
    assert (third["next_after"], third["truncated"], third["job_id"]) == (None, False, job_id)
    assert _logs(client, job_id, f"?after={lines[-1]['seq']}")["lines"] == []


def test_a_job_keeps_at_most_the_cap_of_lines_and_one_marker_says_so(client):
    job_id = submit_add(client)["job_id"]
    messages = [f"line {n}" for n in range(MAX_LOG_LINES_PER_JOB + 5)]
    reports = [_lines(job_id, 1, messages[i : i + 200]) for i in range(0, len(messages), 200)]

    assert set(_report(client, *reports)) == {200}
    assert _report(client, _lines(job_id, 2, ["after the cut"])) == [200]

    first = _logs(client, job_id, "?limit=1000")
    assert [line["message"] for line in first["lines"]] == messages[:MAX_LOG_LINES_PER_JOB]
    rest = _logs(client, job_id, f"?after={first['next_after']}")
    assert (first["truncated"], rest["truncated"], rest["next_after"]) == (True, True, None)
    [marker] = rest["lines"]
    assert (marker["level"], marker["attempt"]) == ("WARNING", 1)
    assert marker["message"].startswith("[log cut: ")


def test_a_job_keeps_at_most_the_cap_of_bytes(client):
    job_id = submit_add(client)["job_id"]
    fit = MAX_LOG_BYTES_PER_JOB // MAX_LOG_LINE_BYTES
    big = ["é" * (MAX_LOG_LINE_BYTES // 2)] * (fit + 3)  # two UTF-8 bytes each: a full line

    assert _report(client, _lines(job_id, 1, big)) == [200]

    body = _logs(client, job_id, "?limit=1000")
    assert body["truncated"] is True
    assert len(body["lines"]) == fit + 1
    assert body["lines"][-1]["message"].startswith("[log cut: ")


def test_lines_for_no_job_are_404_and_bad_paging_is_400(client):
    job_id = submit_add(client)["job_id"]
    assert _report(client, _lines("job_nosuch", 1, ["x"]), _lines(job_id, 1, ["y\x00z"])) == [404, 200]
    # A NUL (PostgreSQL's text cannot hold one) comes back as a replacement character.
    assert [line["message"] for line in _logs(client, job_id)["lines"]] == ["y\ufffdz"]
    assert client.get("/jobs/job_nosuch/logs").status_code == 404
    for query in ["?after=-1", "?after=x", "?limit=0", "?limit=1001", "?limit=", "?after=1e3"]:
        response = client.get(f"/jobs/{job_id}/logs{query}")
        assert (response.status_code, response.is_json) == (400, True), query


def test_a_log_report_with_an_attempt_no_store_can_hold_is_a_400_not_a_500(client):
    job_id = submit_add(client)["job_id"]
    line = {"at": time.time(), "level": "INFO", "message": "m"}

    # The one-report route (a work-horse's), and a batch holding such a report
    one = client.post(f"/internal/jobs/{job_id}/log", json={"attempt": 10**30, "lines": [line]}, headers=AUTH)
    batch = client.post(
        "/internal/reports",
        json={
            "sent_at": time.time(),
            "reports": [{"job_id": job_id, "attempt": 10**30, "event": "log", "lines": [line]}],
        },
        headers=AUTH,
    )

    for response in (one, batch):
        assert (response.status_code, response.is_json) == (400, True), response.get_data()[:300]
        assert "attempt must be an integer from 0 to 999999999" in response.get_json()["error"]["message"]
    assert _logs(client, job_id)["lines"] == []


def test_another_owners_job_logs_are_404(settings):
    from backend.app import create_app

    settings["API_KEYS"] = "alice:alice-key,bob:bob-key"
    client = create_app(settings).test_client()
    job_id = client.post("/tasks/add", json={"args": [1, 2]}, headers=bearer("alice-key")).get_json()["job_id"]
    _report(client, _lines(job_id, 1, ["secret"]))

    assert _logs(client, job_id, headers=bearer("alice-key"))["lines"][0]["message"] == "secret"
    assert client.get(f"/jobs/{job_id}/logs", headers=bearer("bob-key")).status_code == 404
    assert client.get(f"/jobs/{job_id}/logs").status_code == 401


def test_deleting_a_job_deletes_its_log_lines(client, app):
    job_id = submit_add(client)["job_id"]
    _report(client, _lines(job_id, 1, ["a", "b"]))
    sessions = services(app).sessions

    with sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == job_id))

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobLog).where(JobLog.job_id == job_id)) == 0


# -- real workers -------------------------------------------------------------------------


def test_a_task_that_logs_past_the_cap_keeps_the_first_lines_and_a_marker(store_tasks, client, start_worker):  # noqa: F811
    # Given a task that logs ten lines more than a job keeps
    job_id = submit(client, "log_many", kwargs={"count": MAX_LOG_LINES_PER_JOB + 10})["job_id"]

    # When a real worker runs it
    worker = start_worker("--burst", "--simple", "--name", "logger", env=store_tasks)
    assert worker.wait(timeout=60) == 0, worker.output()

    # Then the job's log holds its first lines, then one marker, and says it was cut
    first = _logs(client, job_id, "?limit=1000")
    rest = _logs(client, job_id, f"?after={first['next_after']}")
    lines = first["lines"] + rest["lines"]
    assert [line["message"] for line in lines[:-1]] == [f"line {n}" for n in range(MAX_LOG_LINES_PER_JOB)], (
        worker.output()
    )
    assert (lines[-1]["level"], lines[-1]["message"][:10]) == ("WARNING", "[log cut: ")
    assert (first["truncated"], rest["next_after"]) == (True, None)
