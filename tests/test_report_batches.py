"""A worker's batch of reports applied by the API: jobs written together, and a row that changed
since the batch read it (a cancel racing the reports) settled one by one, on both stores."""

from __future__ import annotations

from sqlalchemy import event

from backend.api.context import services
from backend.store.report_writes import ReportWrites
from tests.conftest import TOKEN
from tests.helpers import attempts, get_job, submit_add

HEADERS = {"X-Internal-Token": TOKEN}


def _starts_and_ends(job_ids: list[str]) -> list[dict]:
    reports = []
    for job_id in job_ids:
        reports.append({"job_id": job_id, "attempt": 1, "event": "started", "worker": "w"})
        reports.append({"job_id": job_id, "attempt": 1, "event": "completed", "result": 3})
    return reports


def test_a_batch_of_starts_and_ends_updates_its_jobs_in_one_statement(app, client):
    # Given ten queued jobs
    job_ids = [submit_add(client)["job_id"] for _ in range(10)]
    updates = []
    listener = lambda conn, cursor, sql, params, context, many: updates.append(many)  # noqa: E731
    event.listen(services(app).engine, "before_cursor_execute", _only_job_updates(listener))

    # When a worker reports each one's start and end in one batch
    answer = client.post("/internal/reports", json={"reports": _starts_and_ends(job_ids)}, headers=HEADERS)

    # Then every report is taken, and the jobs were written by one statement (an executemany)
    assert answer.status_code == 200
    assert [result["status"] for result in answer.get_json()["results"]] == [200] * 20
    assert updates == [True]
    assert {get_job(client, job_id)["status"] for job_id in job_ids} == {"COMPLETED"}


def _only_job_updates(listener):
    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            listener(conn, cursor, statement, parameters, context, executemany)

    return on_execute


def test_a_job_cancelled_after_the_batch_read_it_is_refused_and_the_others_land_once(app, client, monkeypatch):
    # Given four queued jobs, and a client cancelling the third just after the batch read them
    job_ids = [submit_add(client)["job_id"] for _ in range(4)]
    read = ReportWrites.read
    raced: list[str] = []

    def read_then_cancel(self, ids):
        rows = read(self, ids)
        if not raced:
            raced.append(job_ids[2])
            services(app).jobs.cancel_job(job_ids[2], owner=None, by="test")
        return rows

    monkeypatch.setattr(ReportWrites, "read", read_then_cancel)
    write_many = ReportWrites.write_many
    written: list[tuple[int, bool]] = []

    def spied(self, writes):
        written.append((len(writes), write_many(self, writes)))
        return written[-1][1]

    monkeypatch.setattr(ReportWrites, "write_many", spied)

    # When a worker reports each one's start and end in one batch
    answer = client.post("/internal/reports", json={"reports": _starts_and_ends(job_ids)}, headers=HEADERS)

    # Then the cancelled job's reports are refused and it stays CANCELLED; the others completed
    assert answer.status_code == 200
    statuses = [result["status"] for result in answer.get_json()["results"]]
    assert statuses == [200, 200, 200, 200, 409, 409, 200, 200]
    assert [get_job(client, job_id)["status"] for job_id in job_ids] == ["COMPLETED"] * 2 + ["CANCELLED", "COMPLETED"]
    # And the four written together met the race: rolled back, read again, written one by one
    assert written == [(4, False), (1, True), (1, True), (1, True)]
    # And nothing of the write that met the race stayed: one attempt row each, counts moved once
    for job_id in (job_ids[0], job_ids[1], job_ids[3]):
        assert [(a["attempt"], a["outcome"]) for a in attempts(client, job_id)] == [(1, "COMPLETED")]
    counts = client.get("/monitoring/queue/stats").get_json()["jobs"]
    assert counts.get("COMPLETED") == 3 and counts.get("CANCELLED") == 1 and not counts.get("QUEUED")
