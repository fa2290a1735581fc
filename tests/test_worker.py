"""Real worker processes run jobs submitted over HTTP and report back to the API."""

from __future__ import annotations

import signal
import time

import pytest
from flask import request

from tests.helpers import submit, wait_for_status

pytestmark = pytest.mark.one_pass(reason="the worker runtime; the store's side of its reports is tested on both stores")

STATUS_ORDER = ["PENDING", "QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]


def test_lifecycle_queued_processing_with_rising_progress_then_completed(client, start_worker):
    # Given a sleep job submitted over HTTP
    job = submit(client, "sleep", kwargs={"seconds": 2, "steps": 8})
    assert job["status"] == "QUEUED"

    # When a real worker runs it, and the client polls meanwhile
    worker = start_worker("--name", "lifecycle", "--burst")
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = client.get(f"/jobs/{job['job_id']}").get_json()
        seen.append((polled["status"], polled["progress"]))
        if polled["status"] == "COMPLETED":
            break
        time.sleep(0.05)
    assert worker.wait() == 0, worker.output()

    # Then the client saw QUEUED, PROCESSING with rising progress, then COMPLETED with the result
    statuses = [status for status, _ in seen]
    assert statuses[0] == "QUEUED"
    assert "PROCESSING" in statuses
    assert statuses[-1] == "COMPLETED"
    ranks = [STATUS_ORDER.index(status) for status in statuses]
    assert ranks == sorted(ranks), f"status went backwards: {statuses}"
    progress = [value for status, value in seen if status == "PROCESSING"]
    assert len(set(progress)) >= 2 and progress == sorted(progress), progress
    final = client.get(f"/jobs/{job['job_id']}").get_json()
    assert final["result"] == {"slept": 2}
    assert final["progress"] == 100
    assert final["worker"] == "lifecycle"
    assert final["created_at"] <= final["started_at"] <= final["completed_at"]
    attempts = client.get(f"/jobs/{job['job_id']}/attempts").get_json()["attempts"]
    assert [(a["attempt"], a["outcome"], a["worker"]) for a in attempts] == [(1, "COMPLETED", "lifecycle")]


def test_failing_task_ends_failed_with_its_error(client, run_burst_worker):
    job = submit(client, "fail", kwargs={"message": "disk on fire"}, max_retries=0)

    run_burst_worker()

    failed = client.get(f"/jobs/{job['job_id']}").get_json()
    assert failed["status"] == "FAILED"
    assert failed["error"] == "RuntimeError: disk on fire"
    assert failed["completed_at"] is not None
    attempts = client.get(f"/jobs/{job['job_id']}/attempts").get_json()["attempts"]
    assert attempts[0]["outcome"] == "FAILED" and "disk on fire" in attempts[0]["error"]


def test_parameters_named_like_rq_options_reach_the_task(client, run_burst_worker):
    # Given a task whose parameters are named job_id, timeout, ttl, description, meta, retry
    kwargs = {
        "job_id": "mine-123",
        "timeout": 7,
        "ttl": 9,
        "description": "a description",
        "meta": {"k": "v"},
        "retry": 2,
        "depends_on": "nothing",
        "result_ttl": 5,
    }
    job = submit(client, "reserved_names", kwargs=kwargs)

    # When a real (forking) worker runs it
    run_burst_worker(simple=False)

    # Then every one of them arrived unchanged
    done = client.get(f"/jobs/{job['job_id']}").get_json()
    assert done["status"] == "COMPLETED", done
    assert done["result"] == kwargs


def test_task_gets_its_job_id_through_the_context(client, run_burst_worker):
    job = submit(client, "whoami")
    run_burst_worker()
    done = client.get(f"/jobs/{job['job_id']}").get_json()
    assert done["result"]["job_id"] == job["job_id"]
    assert done["result"]["attempt"] == 1


def test_forking_worker_runs_tasks_in_a_child_process(client, run_burst_worker):
    jobs = [submit(client, "whoami") for _ in range(2)]
    worker = run_burst_worker(simple=False)
    pids = {client.get(f"/jobs/{j['job_id']}").get_json()["result"]["pid"] for j in jobs}
    assert worker.process.pid not in pids
    assert len(pids) == 2


def test_queues_are_taken_in_priority_order(client, run_burst_worker):
    # Jobs that run ~20 ms each: started_at has millisecond resolution, and no-op jobs taken one
    # after the other could start within the same millisecond.
    low = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.02}, priority="low")
    default = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.02})
    high = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.02}, priority="high")

    run_burst_worker()

    started = {
        name: client.get(f"/jobs/{job['job_id']}").get_json()["started_at"]
        for name, job in {"low": low, "default": default, "high": high}.items()
    }
    assert started["high"] < started["default"] < started["low"]


def test_sigterm_lets_the_running_job_finish(client, start_worker):
    # Given a worker busy with a job
    job = submit(client, "crawl", kwargs={"steps": 4, "delay": 0.5})
    worker = start_worker("--name", "warm")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    # When it gets SIGTERM
    worker.process.send_signal(signal.SIGTERM)

    # Then it finishes the job before it exits
    assert worker.wait(timeout=30) == 0, worker.output()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"


def test_progress_reports_are_coalesced(client, run_burst_worker, app):
    # Given a task that reports progress 50 times within about half a second
    calls = []

    def count_progress_reports():
        if request.path == "/internal/reports":
            calls.extend(1 for report in request.get_json()["reports"] if report["event"] == "progress")
        elif request.path.endswith("/progress"):
            calls.append(1)

    app.before_request(count_progress_reports)
    job = submit(client, "sleep", kwargs={"seconds": 0.5, "steps": 50})

    run_burst_worker()

    # Then far fewer progress reports reached the API, and the job still completed
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"
    assert 1 <= len(calls) <= 6, len(calls)
