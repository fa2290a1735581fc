"""Retries, timeouts, cancellation and idempotency, with real workers."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import requests
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from tests.helpers import AUTH, attempts, submit, wait_for_status

# -- retries ------------------------------------------------------------------------------


def test_a_failing_job_is_retried_with_backoff_then_failed(client, start_worker):
    # Given a job that always fails, with two retries and a 1 s backoff base
    job = submit(client, "fail", kwargs={"message": "nope"}, max_retries=2)

    # When a worker (with RQ's scheduler) runs it
    start_worker("--name", "retrier", "--simple")
    first_retry = wait_for_status(client, job["job_id"], {"QUEUED"}, timeout=20)
    while first_retry["retry_count"] == 0:
        first_retry = client.get(f"/jobs/{job['job_id']}").get_json()

    # Then after the first failure it waits for its retry, scheduled through RQ
    assert first_retry["attempt"] == 2
    assert first_retry["next_retry_at"] is not None
    assert first_retry["error"] == "RuntimeError: nope"
    final = wait_for_status(client, job["job_id"], {"FAILED"}, timeout=30)
    assert final["retry_count"] == 2
    assert final["attempt"] == 3
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["FAILED", "FAILED", "FAILED"]
    gaps = [a["started_at"] for a in attempts(client, job["job_id"])]
    assert gaps == sorted(gaps)


def test_a_retried_job_that_then_succeeds_is_completed(client, start_worker, tmp_path):
    marker = str(tmp_path / "flaky")
    job = submit(client, "flaky", kwargs={"marker": marker, "failures": 1}, max_retries=3)
    start_worker("--name", "flaky", "--simple")
    done = wait_for_status(client, job["job_id"], {"COMPLETED"}, timeout=30)
    assert done["result"] == "ok"
    assert done["retry_count"] == 1
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["FAILED", "COMPLETED"]


def test_post_retry_runs_a_failed_job_again(client, run_burst_worker, tmp_path):
    marker = str(tmp_path / "flaky")
    job = submit(client, "flaky", kwargs={"marker": marker, "failures": 1}, max_retries=0)
    run_burst_worker()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "FAILED"

    response = client.post(f"/jobs/{job['job_id']}/retry", json={})
    assert response.status_code == 202
    assert response.get_json()["status"] == "QUEUED"
    assert response.get_json()["attempt"] == 2
    run_burst_worker()

    done = client.get(f"/jobs/{job['job_id']}").get_json()
    assert done["status"] == "COMPLETED" and done["error"] is None
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["FAILED", "COMPLETED"]


def test_post_retry_of_a_live_or_completed_job_is_409(client, run_burst_worker):
    job = submit(client, "add", args=[1, 2])
    assert client.post(f"/jobs/{job['job_id']}/retry", json={}).status_code == 409
    run_burst_worker()
    response = client.post(f"/jobs/{job['job_id']}/retry", json={})
    assert response.status_code == 409
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"


# -- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_job_over_its_timeout_fails_with_a_timeout_error(client, run_burst_worker, simple):
    job = submit(client, "sleep", kwargs={"seconds": 30, "steps": 30}, timeout=1, max_retries=0)
    started = time.monotonic()

    worker = run_burst_worker(simple=simple, timeout=20)

    failed = client.get(f"/jobs/{job['job_id']}").get_json()
    assert failed["status"] == "FAILED"
    assert "JobTimeoutException" in failed["error"]
    assert time.monotonic() - started < 10
    name = worker.process.args[worker.process.args.index("--name") + 1]
    survivors = [p for p in psutil.process_iter(["cmdline"]) if name in (p.info["cmdline"] or [])]
    assert survivors == [], "a process of the worker outlived it"


# -- cancellation -------------------------------------------------------------------------


def test_a_cancelled_queued_job_leaves_its_queue_and_never_runs(client, redis_conn, run_burst_worker):
    job = submit(client, "add", args=[1, 2])

    response = client.post(f"/jobs/{job['job_id']}/cancel", json={})

    assert response.status_code == 200
    cancelled = response.get_json()
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["cancelled_by"] == "local" and cancelled["cancelled_at"]
    assert Queue("default", connection=redis_conn).job_ids == []
    run_burst_worker()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "CANCELLED"
    assert attempts(client, job["job_id"]) == []


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_job_cancelled_while_a_worker_holds_it_never_runs(client, redis_conn, run_burst_worker, tmp_path, simple):
    # Given a job cancelled while a worker had already popped it from its queue (the worker's
    # copy is played here by putting the RQ job back on the queue after the cancel)
    marker = tmp_path / "ran"
    job = submit(client, "flaky", kwargs={"marker": str(marker), "failures": 0})
    assert client.post(f"/jobs/{job['job_id']}/cancel", json={}).status_code == 200
    queue = Queue("default", connection=redis_conn)
    redis_conn.rpush(queue.key, job["rq_job_id"])

    # When a worker takes it
    run_burst_worker(simple=simple)

    # Then the task never ran, the store still says CANCELLED, and RQ shows the run stopped
    assert not marker.exists()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "CANCELLED"
    assert RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer).get_status() == "stopped"


def test_cancelling_an_ended_job_is_409(client):
    job = submit(client, "add", args=[1, 2])
    client.post(f"/jobs/{job['job_id']}/cancel", json={})
    again = client.post(f"/jobs/{job['job_id']}/cancel", json={})
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "invalid_transition"


def test_a_running_job_is_stopped_and_its_late_reports_change_nothing(client, start_worker, redis_conn):
    # Given a long job running on a forking worker
    job = submit(client, "crawl", kwargs={"steps": 40, "delay": 0.25})
    start_worker("--name", "stopper")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    # When it is cancelled
    response = client.post(f"/jobs/{job['job_id']}/cancel", json={})

    # Then RQ stops it, and nothing the worker says afterwards changes the job
    assert response.status_code == 200
    deadline = time.monotonic() + 10
    while RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer).get_status() != "stopped":
        assert time.monotonic() < deadline, "RQ never stopped the job"
        time.sleep(0.1)
    time.sleep(1)
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert after["status"] == "CANCELLED"
    assert after["progress"] < 100
    assert after["completed_at"] is not None


def test_bulk_cancel_by_ids_and_by_filter(client):
    a = submit(client, "add", args=[1, 1])
    b = submit(client, "add", args=[2, 2])
    c = submit(client, "echo")
    client.post(f"/jobs/{a['job_id']}/cancel", json={})

    by_ids = client.post("/jobs/cancel", json={"job_ids": [a["job_id"], b["job_id"], "job_missing"]}).get_json()
    assert by_ids["cancelled"] == [b["job_id"]]
    assert {s["job_id"]: s["reason"] for s in by_ids["skipped"]} == {
        a["job_id"]: "invalid_transition",
        "job_missing": "not_found",
    }
    by_filter = client.post("/jobs/cancel", json={"task": "echo", "status": "QUEUED"}).get_json()
    assert by_filter["cancelled"] == [c["job_id"]]
    assert client.post("/jobs/cancel", json={}).status_code == 422
    assert client.post("/jobs/cancel", json={"status": "COMPLETED"}).status_code == 422


# -- idempotency --------------------------------------------------------------------------


def test_concurrent_submissions_with_one_key_make_exactly_one_job(client, live_server):
    answers = []

    def post():
        answers.append(
            requests.post(f"{live_server}/tasks/add", json={"args": [1, 2]}, headers={"Idempotency-Key": "same"})
        )

    threads = [threading.Thread(target=post) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a.status_code for a in answers) == [200] * 11 + [202]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert len(client.get("/jobs").get_json()["jobs"]) == 1


def test_a_key_is_free_again_once_its_job_ended(client, run_burst_worker):
    first = submit(client, "add", args=[1, 2], idempotency_key="nightly")
    run_burst_worker()
    second = submit(client, "add", args=[1, 2], idempotency_key="nightly")
    assert second["job_id"] != first["job_id"]


def test_the_same_key_for_another_owner_is_another_job(settings):
    from backend.app import create_app

    settings["API_KEYS"] = "alice:ka,bob:kb"
    client = create_app(settings).test_client()
    a = client.post("/tasks/echo", json={"idempotency_key": "k"}, headers={"Authorization": "Bearer ka"})
    b = client.post("/tasks/echo", json={"idempotency_key": "k"}, headers={"Authorization": "Bearer kb"})
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.get_json()["job_id"] != b.get_json()["job_id"]


# -- races the review found ---------------------------------------------------------------


def test_a_repeated_failure_report_never_makes_two_new_attempts(client, app):
    job = submit(client, "add", args=[1, 2], max_retries=3)
    manager = services(app).jobs
    manager.mark_started(job["job_id"], attempt=1, worker="w")
    manager.mark_failed(job["job_id"], attempt=1, error="boom")

    response = client.post(f"/internal/jobs/{job['job_id']}/failed", json={"attempt": 1, "error": "boom"}, headers=AUTH)

    assert response.status_code == 409
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 2


def test_a_failure_report_after_a_cancel_leaves_it_cancelled(client):
    job = submit(client, "add", args=[1, 2], max_retries=3)
    client.post(f"/internal/jobs/{job['job_id']}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    client.post(f"/jobs/{job['job_id']}/cancel", json={})

    response = client.post(f"/internal/jobs/{job['job_id']}/failed", json={"attempt": 1, "error": "boom"}, headers=AUTH)

    assert response.status_code == 409
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["status"], after["attempt"]) == ("CANCELLED", 1)


def test_a_job_cancelled_after_a_worker_popped_it_does_not_run(client, redis_conn, run_burst_worker, tmp_path):
    # Given a job cancelled in the store while its RQ job is still waiting to be run
    marker = tmp_path / "ran"
    job = submit(client, "flaky", kwargs={"marker": str(marker), "failures": 0})
    client.post(f"/jobs/{job['job_id']}/cancel", json={})
    rq_job = RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer)
    Queue("default", connection=redis_conn, serializer=JSONSerializer).enqueue_job(rq_job)

    # When a worker takes it anyway
    run_burst_worker()

    # Then the API refuses its start, the task never runs, and RQ shows it stopped
    assert not marker.exists()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "CANCELLED"
    assert rq_job.get_status(refresh=True) == "stopped"


def test_a_simple_worker_stops_a_cancelled_task_at_its_next_progress_report(client, start_worker, redis_conn):
    job = submit(client, "crawl", kwargs={"steps": 40, "delay": 0.25})
    start_worker("--name", "simple-stopper", "--simple")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    client.post(f"/jobs/{job['job_id']}/cancel", json={})

    deadline = time.monotonic() + 10
    while RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer).get_status() != "stopped":
        assert time.monotonic() < deadline, "the task kept running"
        time.sleep(0.1)
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "CANCELLED"


def test_a_worker_survives_an_unreadable_job_and_runs_the_next(client, redis_conn, start_worker):
    redis_conn.rpush("rq:queue:default", "garbage-1")
    redis_conn.hset("rq:job:garbage-1", mapping={"data": b"\x00not zlib", "status": "queued", "origin": "default"})
    job = submit(client, "add", args=[2, 2])
    start_worker("--name", "sturdy", "--simple")
    assert wait_for_status(client, job["job_id"], {"COMPLETED"}, timeout=30)["result"] == 4


def test_nan_in_a_body_is_400(client):
    response = client.post("/tasks/echo", data='{"args": [NaN]}', content_type="application/json")
    assert response.status_code == 400
    assert client.get("/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize("raw", ["9999-12-31T23:59:59-14:00|x", "0001-01-01T00:00:00+14:00|x", "2020-01-01T00:00:00|x"])
def test_a_forged_cursor_is_422(client, raw):
    import base64

    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    assert client.get(f"/jobs?cursor={cursor}").status_code == 422
