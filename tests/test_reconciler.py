"""The reconciler settles every difference between the store and Redis."""

from __future__ import annotations

import os
import signal
import time

import pytest
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from backend.api.payloads import JobRequest
from backend.app import create_app, start_background
from backend.core.states import JobStatus
from backend.dev.redis_server import EmbeddedRedis, free_port
from backend.recovery.reconciler import LOCK_KEY
from backend.store import counts
from backend.tasks import get_task
from tests.helpers import wait_for_status


def reconcile_until(app, predicate, timeout: float = 20.0):
    """Run reconciler passes until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services(app).reconciler.run_once()
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("the reconciler never settled the job")


def age(app, job_id: str, seconds: float = 5) -> None:
    """Make a job look older than the reconciler's grace period."""
    from datetime import timedelta

    from sqlalchemy import update

    from backend.store.models import Job, utcnow

    with services(app).sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def test_a_pending_job_that_never_reached_a_queue_is_enqueued(app, client, redis_conn):
    # Given a job recorded PENDING (in a batch, or with dependencies) by an API that died
    # before enqueueing it
    request = JobRequest(task=get_task("add"), args=[1, 2], kwargs={}, priority="default", timeout=60, max_retries=0)
    job, _ = services(app).jobs.create_job(request, owner="local")
    age(app, job.id)

    report = services(app).reconciler.run_once()

    assert report.enqueued == [job.id]
    assert client.get(f"/jobs/{job.id}").get_json()["status"] == "QUEUED"
    assert Queue("default", connection=redis_conn).job_ids == [job.rq_job_id]


def test_a_job_recorded_queued_by_an_api_that_died_before_enqueueing_it_runs(app, client, run_burst_worker):
    # Given a single submission recorded QUEUED (its one write) whose enqueue never happened
    request = JobRequest(task=get_task("add"), args=[4, 5], kwargs={}, priority="default", timeout=60, max_retries=0)
    job, _ = services(app).jobs.create_job(request, owner="local", status=JobStatus.QUEUED)
    age(app, job.id)

    report = services(app).reconciler.run_once()

    assert report.requeued == [job.id]
    run_burst_worker()
    assert client.get(f"/jobs/{job.id}").get_json()["result"] == 9


def test_a_queued_job_whose_hash_was_deleted_is_requeued_and_runs(app, client, redis_conn, run_burst_worker):
    job = client.post("/tasks/add", json={"args": [2, 3]}).get_json()
    redis_conn.delete(RQJob.key_for(job["rq_job_id"]))
    age(app, job["job_id"])

    report = services(app).reconciler.run_once()

    assert report.requeued == [job["job_id"]]
    requeued = client.get(f"/jobs/{job['job_id']}").get_json()
    assert requeued["status"] == "QUEUED" and requeued["attempt"] == 2
    run_burst_worker()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["result"] == 5


def test_a_job_lost_between_pop_and_start_is_requeued(app, client, redis_conn):
    # Given a job whose id a worker popped from the list before dying (the LPOP gap)
    job = client.post("/tasks/add", json={"args": [2, 3]}).get_json()
    redis_conn.lrem("rq:queue:default", 0, job["rq_job_id"])
    age(app, job["job_id"])

    report = services(app).reconciler.run_once()

    assert report.requeued == [job["job_id"]]
    assert Queue("default", connection=redis_conn).job_ids == [f"{job['job_id']}-2"]


def test_jobs_held_back_by_a_concurrency_limit_are_left_waiting(app, client, run_burst_worker):
    # Given three jobs of a task that runs one at a time: RQ holds two back, behind the first
    jobs = [client.post("/tasks/one_at_a_time", json={"kwargs": {"seconds": 0}}).get_json() for _ in range(3)]
    for job in jobs:
        age(app, job["job_id"])

    # Then the reconciler leaves them be: waiting is not lost
    report = services(app).reconciler.run_once()
    assert not report, report.as_dict()
    run_burst_worker()
    after = [client.get(f"/jobs/{job['job_id']}").get_json() for job in jobs]
    assert [(j["status"], j["attempt"]) for j in after] == [("COMPLETED", 1)] * 3


def test_a_healthy_queued_job_is_left_alone(app, client):
    job = client.post("/tasks/add", json={"args": [2, 3]}).get_json()
    age(app, job["job_id"])
    report = services(app).reconciler.run_once()
    assert not report
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 1


# A killed worker's job running again at once (an interruption, no retry spent): tests/test_interruptions.py


def test_a_killed_workers_job_allowed_no_interruption_fails_and_frees_its_key(app, client, start_worker, redis_conn):
    body = {"kwargs": {"steps": 20, "delay": 0.5}, "max_interruptions": 0, "idempotency_key": "k"}
    job = client.post("/tasks/crawl", json=body).get_json()
    worker = start_worker("--name", "doomed", "--simple")
    wait_for_status(client, job["job_id"], {"PROCESSING"})
    os.kill(worker.process.pid, signal.SIGKILL)
    age(app, job["job_id"])

    # When the reconciler finds its worker dead, the job fails (no interruption allowed)
    reconcile_until(app, lambda: client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "FAILED")
    dead = client.get(f"/jobs/{job['job_id']}").get_json()
    assert "WorkerDied" in dead["error"]

    # and its idempotency key is free again
    again = client.post("/tasks/crawl", json={"kwargs": {"steps": 1, "delay": 0}, "idempotency_key": "k"})
    assert again.status_code == 202
    assert again.get_json()["job_id"] != job["job_id"]
    rq_job = RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.get_status() == "failed"


def test_an_outcome_whose_report_was_lost_is_copied_from_rq(app, client, settings, start_worker):
    # Given a worker that cannot reach the API at all
    job = client.post("/tasks/add", json={"args": [20, 22]}).get_json()
    worker = start_worker(
        "--burst",
        "--simple",
        "--name",
        "mute",
        env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"},
    )
    assert worker.wait(timeout=30) == 0
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"
    age(app, job["job_id"])

    report = services(app).reconciler.run_once()

    assert report.copied == [job["job_id"]]
    done = client.get(f"/jobs/{job['job_id']}").get_json()
    assert done["status"] == "COMPLETED" and done["result"] == 42
    # and the attempt names the worker that ran it, with its start, as RQ recorded them
    [attempt] = client.get(f"/jobs/{job['job_id']}/attempts").get_json()["attempts"]
    assert (attempt["worker"], attempt["outcome"]) == ("mute", "COMPLETED")
    assert attempt["started_at"] <= attempt["ended_at"] == done["completed_at"]


@pytest.fixture
def tiny_result_cap(settings):
    """An API whose result cap is 1 byte; the workers keep their own (the default 256 KiB)."""
    settings["MAX_RESULT_BYTES"] = 1
    return settings


def test_an_outcome_copied_from_rq_gets_the_caps_a_report_gets(tiny_result_cap, app, client, start_worker):
    # Given a job whose worker finished it in RQ but never reached the API
    job = client.post("/tasks/add", json={"args": [20, 22], "max_retries": 0}).get_json()
    worker = start_worker(
        "--burst", "--simple", "--name", "mute",
        env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"},
    )  # fmt: skip
    assert worker.wait(timeout=30) == 0
    age(app, job["job_id"])

    # When the reconciler copies its outcome from RQ
    services(app).reconciler.run_once()

    # Then the result over the API's cap is not stored: the attempt failed, naming the cap
    done = client.get(f"/jobs/{job['job_id']}").get_json()
    assert done["status"] == "FAILED" and done["result"] is None
    assert done["error"] == "ResultTooLarge: the result is 2 bytes, over MAX_RESULT_BYTES of 1 bytes"


@pytest.mark.sqlite_only(reason="the Redis lock leads on SQLite; PostgreSQL's leadership: tests/test_leadership.py")
def test_one_reconciler_acts_at_a_time(app, redis_conn):
    redis_conn.set(LOCK_KEY, "held-by-another-api-process", px=5000)
    assert services(app).reconciler.run_once() is None


def test_the_api_reconciles_on_its_own_at_start(settings, client):
    job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    from redis import Redis

    Redis.from_url(settings["REDIS_URL"]).delete(RQJob.key_for(job["rq_job_id"]))
    settings.update({"RECONCILE_INTERVAL": 0.5, "RECONCILE_GRACE": 0})
    second_api = start_background(create_app(settings))
    try:
        deadline = time.monotonic() + 10
        while client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] != 2:
            assert time.monotonic() < deadline, "the API's reconciler never requeued the job"
            time.sleep(0.1)
    finally:
        second_api.extensions["reconciler_thread"].stop()


# -- Redis outages ----------------------------------------------------------------------


def test_while_redis_is_down_jobs_are_recorded_pending_and_health_says_so(settings):
    settings["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(settings)
    client = app.test_client()

    response = client.post("/tasks/add", json={"args": [1, 2]})

    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "PENDING"
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "PENDING"
    with services(app).sessions() as session:  # the counts behind the stats agree
        assert {s: n for s, n in counts.by_status(session).items() if n} == {"PENDING": 1}
    health = client.get("/monitoring/health")
    assert health.status_code == 503
    assert health.get_json()["failing"] == ["redis", "workers"]
    assert health.headers["Retry-After"]

    # and a cancel is refused until Redis is back (no fence could keep a worker from the job)
    cancel = client.post(f"/jobs/{job['job_id']}/cancel", json={})
    assert cancel.status_code == 503 and cancel.headers["Retry-After"]
    assert cancel.get_json()["error"]["code"] == "service_unavailable"
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "PENDING"


def test_a_worker_waits_for_redis_instead_of_exiting(settings, client, start_worker, tmp_path):
    # Given a worker started while its Redis is down
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = start_worker("--name", "patient", "--simple", env={"REDIS_URL": url})
    time.sleep(2)
    assert worker.process.poll() is None, worker.output()

    # When Redis comes up and a job arrives there
    server = EmbeddedRedis.start(data_dir=tmp_path / "late-redis", port=port, appendonly=False)
    try:
        settings["REDIS_URL"] = url
        late_client = create_app(settings).test_client()
        job = late_client.post("/tasks/add", json={"args": [1, 2]}).get_json()
        # Then the worker runs it (its report reaches the live server of ``client``'s app,
        # so the late app's store sees nothing: check RQ, the worker's side)
        deadline = time.monotonic() + 20
        from redis import Redis

        connection = Redis.from_url(url)
        while (
            RQJob.fetch(job["rq_job_id"], connection=connection, serializer=JSONSerializer).get_status() != "finished"
        ):
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.2)
    finally:
        worker.stop()
        server.stop()


@pytest.mark.sqlite_only(reason="takes the store down by deleting its file (F14 stops PostgreSQL)")
def test_when_the_store_is_down_too_a_submission_is_503_with_retry_after(settings, tmp_path):
    import shutil

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    settings["DATABASE_URL"] = f"sqlite:///{store_dir / 'jobs.db'}"
    app = create_app(settings)
    client = app.test_client()
    services(app).engine.dispose()
    shutil.rmtree(store_dir)

    response = client.post("/tasks/add", json={"args": [1, 2]})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "service_unavailable"
    assert response.headers["Retry-After"]
    assert client.get("/jobs/job_x").status_code == 503


@pytest.mark.sqlite_only(reason="the Redis lock leads on SQLite; PostgreSQL's leadership: tests/test_leadership.py")
def test_a_lock_this_reconciler_left_behind_does_not_lock_it_out(app, redis_conn):
    # Given the lock of a pass that Redis cut short (and restored from its AOF)
    reconciler = services(app).reconciler
    redis_conn.set(LOCK_KEY, reconciler._lock_token, px=15000)

    # Then the next pass of the same reconciler runs, and frees the lock
    assert reconciler.run_once() is not None
    assert redis_conn.get(LOCK_KEY) is None
