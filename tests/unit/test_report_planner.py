"""The report planner on its own: what a batch's reports do to one job row, with no store."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime, timedelta

from backend.core.protocol import MAX_AGE_SECONDS, Report
from backend.service.worker_reports import attempt_rows, count_moves, plan

Row = namedtuple("Row", "id status attempt task created_at started_at webhook_url has_dependants")
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CREATED = NOW - timedelta(minutes=5)
OK = {"status": 200}


def row(status: str = "QUEUED", *, attempt: int = 1, started_at=None, webhook_url=None, has_dependants=False) -> Row:
    return Row("job_1", status, attempt, "add", CREATED, started_at, webhook_url, has_dependants)


def started(attempt: int = 1, *, age: float = 0.0, worker: str = "w1") -> Report:
    return Report("job_1", attempt, "started", age, worker=worker)


def progress(attempt: int = 1, *, percent: int = 50, message: str | None = "half") -> Report:
    return Report("job_1", attempt, "progress", progress=percent, message=message)


def completed(attempt: int = 1, *, age: float = 0.0, result: object = 3) -> Report:
    return Report("job_1", attempt, "completed", age, result=result)


def failed(attempt: int = 1) -> Report:
    return Report("job_1", attempt, "failed", error="ValueError: no")


def test_a_start_moves_a_queued_job_to_processing_at_the_workers_time():
    job = plan(row("QUEUED"), [started(age=2.0)], NOW)

    at = NOW - timedelta(seconds=2)
    assert job.answers == [OK]
    assert job.values == {"status": "PROCESSING", "started_at": at, "worker": "w1"}
    assert job.start == ("w1", at) and job.end is None
    assert attempt_rows([job]) == (
        [{"job_id": "job_1", "attempt": 1, "worker": "w1", "started_at": at, "ended_at": None, "outcome": None,
          "error": None}],
        [],
    )  # fmt: skip
    assert count_moves([job]) == {("add", "QUEUED", "PROCESSING"): 1}


def test_a_start_progress_and_end_of_one_attempt_become_one_write():
    job = plan(row("PENDING"), [started(age=2.0), progress(), completed(age=0.5)], NOW)

    started_at, ended_at = NOW - timedelta(seconds=2), NOW - timedelta(seconds=0.5)
    assert job.answers == [OK, OK, OK]
    assert job.values == {
        "status": "COMPLETED", "started_at": started_at, "worker": "w1", "progress": 100, "progress_message": "half",
        "completed_at": ended_at, "result": 3, "error": None, "idempotency_key": None,
    }  # fmt: skip
    opened, ended = attempt_rows([job])
    assert opened == []
    assert ended == [
        {"job_id": "job_1", "attempt": 1, "worker": "w1", "started_at": started_at, "ended_at": ended_at,
         "outcome": "COMPLETED", "error": None}
    ]  # fmt: skip
    assert count_moves([job]) == {("add", "PENDING", "COMPLETED"): 1}


def test_progress_of_a_waiting_job_writes_progress_but_moves_no_status():
    job = plan(row("QUEUED"), [progress(percent=20, message=None)], NOW)

    assert job.answers == [OK]
    assert job.values == {"progress": 20, "progress_message": None}
    assert attempt_rows([job]) == ([], [])
    assert count_moves([job]) == {}


def test_a_failure_is_left_to_the_manager_whatever_came_before():
    assert plan(row("QUEUED"), [started(), failed()], NOW) is None
    assert plan(row("QUEUED"), [failed(attempt=7)], NOW) is None


def test_an_end_that_owes_a_webhook_or_releases_dependants_is_left_to_the_manager():
    assert plan(row("PROCESSING", webhook_url="http://example.test/hook"), [completed()], NOW) is None
    assert plan(row("PROCESSING", has_dependants=True), [completed()], NOW) is None
    # a start alone needs neither
    assert plan(row("QUEUED", has_dependants=True), [started()], NOW).answers == [OK]


def test_a_report_for_another_attempt_is_refused_and_writes_nothing():
    job = plan(row("QUEUED", attempt=2), [started(attempt=1), completed(attempt=3), progress(attempt=1)], NOW)

    assert [answer["status"] for answer in job.answers] == [409, 409, 409]
    assert job.answers[0]["error"] == "attempt 1 is not the job's current attempt 2"
    assert job.answers[1]["error"] == "attempt 3 is not the job's current attempt 2"
    assert job.values == {}


def test_a_repeated_report_is_accepted_and_written_once():
    twice = plan(row("QUEUED"), [started(age=1.0), started(age=0.5, worker="w2")], NOW)
    assert twice.answers == [OK, OK]
    assert twice.values == {"status": "PROCESSING", "started_at": NOW - timedelta(seconds=1), "worker": "w1"}

    again = plan(row("COMPLETED"), [completed(result=99)], NOW)
    assert again.answers == [OK] and again.values == {}
    already = plan(row("PROCESSING", started_at=NOW), [started()], NOW)
    assert already.answers == [OK] and already.values == {}


def test_reports_after_the_end_are_refused():
    job = plan(row("CANCELLED"), [started(), progress(), completed()], NOW)

    assert job.answers == [
        {"status": 409, "error": "cannot move from CANCELLED to PROCESSING"},
        {"status": 409, "error": "job has ended (CANCELLED)"},
        {"status": 409, "error": "cannot move from CANCELLED to COMPLETED"},
    ]
    assert job.values == {}


def test_out_of_order_an_end_before_its_start_wins_and_the_late_start_is_refused():
    job = plan(row("QUEUED"), [completed(), started(), progress()], NOW)

    assert job.answers == [
        OK,
        {"status": 409, "error": "cannot move from COMPLETED to PROCESSING"},
        {"status": 409, "error": "job has ended (COMPLETED)"},
    ]
    assert job.values["status"] == "COMPLETED" and "started_at" not in job.values
    assert count_moves([job]) == {("add", "QUEUED", "COMPLETED"): 1}


def test_an_end_never_comes_before_its_start_whatever_the_workers_clock_says():
    # the end's own time is earlier than the start's (two clocks, or a skewed one)
    job = plan(row("QUEUED"), [started(age=1.0), completed(age=3.0)], NOW)

    assert job.values["completed_at"] == job.values["started_at"] == NOW - timedelta(seconds=1)


def test_a_reports_age_is_clamped_to_zero_and_to_the_oldest_allowed():
    assert plan(row(), [started(age=-30.0)], NOW).values["started_at"] == NOW
    oldest = NOW - timedelta(seconds=MAX_AGE_SECONDS)
    assert plan(row(), [started(age=10 * MAX_AGE_SECONDS)], NOW).values["started_at"] == oldest


def test_the_counts_add_up_the_jobs_that_moved_alike():
    plans = [plan(row("QUEUED"), [started()], NOW) for _ in range(3)]
    plans.append(plan(row("PENDING"), [started(), completed()], NOW))
    plans.append(plan(row("QUEUED"), [progress()], NOW))

    assert count_moves(plans) == {("add", "QUEUED", "PROCESSING"): 3, ("add", "PENDING", "COMPLETED"): 1}
