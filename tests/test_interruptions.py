"""A run cut by the infrastructure is an interruption, not a failure (issue 13 item 4).

It runs again at once, without backoff and without spending ``max_retries``; it is counted in
``interruptions``; a job interrupted more than ``max_interruptions`` times (a poison pill)
ends FAILED saying so. A task's own failure keeps its retries and backoff.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from backend.broker.errors import BrokerError
from backend.dev.redis_server import EmbeddedRedis
from tests.helpers import AUTH, attempts, get_job, submit, submit_add, wait_for_status, wait_until
from tests.test_reconciler import age, reconcile_until


@pytest.fixture
def long_backoff(settings):
    """A task failure's first retry waits 120 s (the default), so 'at once' cannot be it."""
    settings["RETRY_BACKOFF_BASE"] = 120.0
    return settings


def _report(client, job: dict, *events: dict) -> list[int]:
    """Send a worker's reports for attempt 1 of ``job``; the status of each answer."""
    reports = [{"job_id": job["job_id"], "attempt": 1, **event} for event in events]
    response = client.post("/internal/reports", json={"reports": reports}, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return [answer["status"] for answer in response.get_json()["results"]]


STARTED = {"event": "started", "worker": "w1"}
LOST_REDIS = {"event": "failed", "error": "WorkerLostRedis: ConnectionError: Connection refused", "interrupted": True}
#: Task errors worded like an interruption: RQ's abandoned-job words, a last line "WorkerDied:", and
#: one worded like the worker's own line for a start the store never confirmed.
LOOKALIKES = ("due to AbandonedJobError", "boom\nWorkerDied: not really", "boom\nStartUnconfirmed: not really")


def test_a_killed_workers_job_without_retries_runs_again_at_once_and_completes(app, client, start_worker):
    # Given a job that may not be retried, running on a worker with a 1 s lease
    job = submit(client, "crawl", kwargs={"steps": 4, "delay": 0.3}, max_retries=0)
    worker = start_worker("--name", "doomed", "--simple")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    # When the worker is SIGKILLed mid-run
    os.kill(worker.process.pid, signal.SIGKILL)
    age(app, job["job_id"])

    # Then the job is queued again at once, its retries untouched (it used to end FAILED "WorkerDied")
    reconcile_until(app, lambda: get_job(client, job["job_id"])["attempt"] == 2)
    back = get_job(client, job["job_id"])
    assert back["status"] == "QUEUED" and back["next_retry_at"] is None
    assert (back["retry_count"], back["interruptions"]) == (0, 1)
    assert back["error"].startswith("WorkerDied:")
    # and another worker completes it
    start_worker("--name", "rescuer", "--simple")
    done = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED"})
    assert (done["status"], done["result"], done["error"]) == ("COMPLETED", {"steps": 4}, None)
    assert (done["retry_count"], done["interruptions"], done["max_interruptions"]) == (0, 1, 3)
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["INTERRUPTED", "COMPLETED"]


def test_a_job_that_kills_its_workers_ends_failed_past_max_interruptions(app, client, start_worker):
    # Given a poison pill: a task that SIGKILLs the worker running it, allowed one interruption
    job = submit(client, "kill_own_worker", max_retries=3, max_interruptions=1)

    # When two workers in turn pick it up and die
    for name in ("first", "second"):
        worker = start_worker("--name", name, "--simple")
        assert worker.wait(timeout=30) == -signal.SIGKILL, worker.output()
        age(app, job["job_id"])
        seen = get_job(client, job["job_id"])["interruptions"]
        reconcile_until(app, lambda seen=seen: get_job(client, job["job_id"])["interruptions"] > seen)

    # Then it ends FAILED, saying why, with none of its retries spent
    failed = get_job(client, job["job_id"])
    assert failed["status"] == "FAILED"
    assert (failed["interruptions"], failed["retry_count"], failed["attempt"]) == (2, 0, 2)
    assert failed["error"] == (
        "Interrupted: the job's run was interrupted 2 times (max_interruptions 1); "
        "last: WorkerDied: worker second stopped while running the job"
    )
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["INTERRUPTED", "INTERRUPTED"]


def test_a_worker_that_lost_redis_mid_run_gets_its_job_queued_at_once(
    long_backoff, client, redis_conn, run_burst_worker
):
    # Given a running job whose task failures would wait 120 s before a retry
    job = submit_add(client, max_retries=1)
    Queue("default", connection=redis_conn).remove(job["rq_job_id"])  # popped by the worker

    # When its worker reports that it lost Redis mid-run
    assert _report(client, job, STARTED, LOST_REDIS) == [200, 200]

    # Then the next attempt is on its queue now, with no backoff and no retry spent
    back = get_job(client, job["job_id"])
    assert (back["status"], back["attempt"], back["next_retry_at"]) == ("QUEUED", 2, None)
    assert (back["retry_count"], back["interruptions"]) == (0, 1)
    assert Queue("default", connection=redis_conn).job_ids == [back["rq_job_id"]]
    run_burst_worker()
    assert get_job(client, job["job_id"])["result"] == 3
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["INTERRUPTED", "COMPLETED"]


def _reconciled(app) -> bool:
    """One reconciler pass; False while the API still takes Redis for down (it was, moments ago)."""
    try:
        services(app).reconciler.run_once()
    except BrokerError:
        return False
    return True


@pytest.fixture
def own_redis(settings, tmp_path):
    """A Redis of this test's own (it is stopped and started again), for the app and the workers."""
    server = EmbeddedRedis.start(data_dir=tmp_path / "redis", appendonly=False)
    settings["REDIS_URL"] = server.url
    yield server
    server.stop()


def test_a_forking_worker_that_loses_redis_under_a_run_reports_the_outcome_its_horse_holds(
    own_redis, long_backoff, app, client, start_worker
):
    # Given a job running on a real (forking) worker, whose task failures would wait 120 s for a retry
    job = submit(client, "crawl", kwargs={"steps": 3, "delay": 0.4}, max_retries=1)
    start_worker("--name", "cut-off")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    # When Redis goes away under the run (RQ cannot record its end: neither the work-horse
    # nor its parent can write or read it)
    own_redis.stop()

    # Then the work-horse reports the outcome it holds: the one run completed the job (before,
    # the parent reported an interruption and the finished task ran again once Redis was back)
    done = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED", "PENDING", "QUEUED"})
    assert (done["status"], done["attempt"], done["interruptions"], done["result"]) == ("COMPLETED", 1, 0, {"steps": 3})
    # and once Redis is back, the reconciler runs nothing again
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        age(app, job["job_id"])
        wait_until(lambda: _reconciled(app), timeout=30, what="a reconciler pass with Redis back")
    finally:
        restarted.stop()
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["COMPLETED"]


def test_a_simple_worker_that_loses_redis_under_a_run_reports_the_outcome_it_holds(own_redis, client, start_worker):
    # Given a job running on a simple worker (its task runs in the worker's own process)
    job = submit(client, "crawl", kwargs={"steps": 3, "delay": 0.4}, max_retries=1)
    start_worker("--name", "holder", "--simple")
    wait_for_status(client, job["job_id"], {"PROCESSING"})

    # When Redis goes away under the run (RQ cannot record its end)
    own_redis.stop()

    # Then the worker reports the outcome it holds: the one run completed the job, nothing re-runs
    done = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED", "PENDING", "QUEUED"})
    assert (done["status"], done["attempt"], done["interruptions"], done["result"]) == ("COMPLETED", 1, 0, {"steps": 3})


def test_a_forking_worker_that_loses_redis_after_its_horse_ended_runs_nothing_again(
    own_redis, app, client, start_worker
):
    # Given a forking worker whose work-horse completes a job and writes its end to Redis
    job = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.1}, max_retries=1)
    start_worker("--name", "after-horse", program=("-m", "tests.worker_redis_dies_after_horse"))

    # When Redis goes away right after the horse ended, before the worker's own next call
    # (a master killed just then: RQ's set_state fails in the worker, not in the horse)
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the horse")
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        # Then, once Redis is back, the run's own outcome is the job's: nothing runs again
        age(app, job["job_id"])
        wait_until(
            lambda: _reconciled(app) and get_job(client, job["job_id"])["status"] in {"COMPLETED", "FAILED"},
            timeout=30,
            what="the job settled",
        )
    finally:
        restarted.stop()
    done = get_job(client, job["job_id"])
    assert (done["status"], done["attempt"], done["interruptions"], done["result"]) == ("COMPLETED", 1, 0, {"steps": 1})
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["COMPLETED"]


def test_a_forking_worker_whose_redis_dies_right_after_the_task_reports_its_outcome(
    own_redis, app, client, start_worker, tmp_path
):
    # Given a forking worker whose work-horse's task has just returned
    job = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.1}, max_retries=1)
    start_worker(
        "--name",
        "after-task",
        program=("-m", "tests.worker_redis_dies_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "redis-died")},
    )

    # When Redis goes away before RQ recorded the run's end (a master killed just then: the
    # work-horse's own write of the end fails, and the parent cannot read it either)
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the task")

    # Then the run's own outcome is the job's, reported by the work-horse while Redis is down
    done = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED", "PENDING", "QUEUED"})
    assert (done["status"], done["attempt"], done["interruptions"], done["result"]) == ("COMPLETED", 1, 0, {"steps": 1})
    # and once Redis is back (holding the run as started: its end was the write lost), the worker
    # records it finished in RQ, not failed as an orphan, and nothing runs it again
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        rq_job = RQJob.fetch(done["rq_job_id"], connection=Redis.from_url(restarted.url), serializer=JSONSerializer)
        wait_until(lambda: rq_job.get_status() == "finished", timeout=30, what="RQ recorded the run finished")
        age(app, job["job_id"])
        wait_until(lambda: _reconciled(app), timeout=30, what="a reconciler pass with Redis back")
        wait_until(lambda: _reconciled(app), timeout=30, what="a second reconciler pass")
    finally:
        restarted.stop()
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["COMPLETED"]
    assert get_job(client, job["job_id"])["attempt"] == 1


def test_a_job_allowed_no_interruption_fails_at_its_first(client):
    job = submit_add(client, max_interruptions=0)

    assert _report(client, job, STARTED, LOST_REDIS) == [200, 200]

    failed = get_job(client, job["job_id"])
    assert (failed["status"], failed["interruptions"], failed["retry_count"]) == ("FAILED", 1, 0)
    assert failed["error"] == (
        "Interrupted: the job's run was interrupted 1 time (max_interruptions 0); last: " + LOST_REDIS["error"]
    )


def test_a_task_failure_still_spends_a_retry_and_waits_its_backoff(long_backoff, client):
    job = submit_add(client, max_retries=1)

    assert _report(client, job, STARTED, {"event": "failed", "error": "ValueError: no"}) == [200, 200]

    retried = get_job(client, job["job_id"])
    assert (retried["attempt"], retried["retry_count"], retried["interruptions"]) == (2, 1, 0)
    wait = datetime.fromisoformat(retried["next_retry_at"]) - datetime.fromisoformat(retried["updated_at"])
    assert wait.total_seconds() > 100  # the 120 s backoff, less its jitter
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["FAILED"]


def test_max_interruptions_out_of_range_or_not_an_integer_is_refused(client):
    for value in (-1, 101, "3", 1.5, True):
        answer = client.post("/tasks/add", json={"args": [1, 2], "max_interruptions": value})

        assert answer.status_code == 422, (value, answer.get_json())
        assert "max_interruptions must be an integer from 0 to 100" in answer.get_json()["error"]["message"]


def test_a_job_shows_its_interruptions_and_their_limit(client):
    default = submit_add(client)
    chosen = submit_add(client, max_interruptions=7)
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1], "max_interruptions": 0}]})
    assert batch.status_code == 202, batch.get_json()
    [item_id] = batch.get_json()["job_ids"]

    shown = [get_job(client, job_id) for job_id in (default["job_id"], chosen["job_id"], item_id)]
    assert [(job["interruptions"], job["max_interruptions"]) for job in shown] == [(0, 3), (0, 7), (0, 0)]
    assert client.get("/jobs").get_json()["jobs"][0]["max_interruptions"] in (3, 7, 0)
    # and a bad batch item is refused like a bad submission
    bad = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1], "max_interruptions": -1}]})
    assert bad.status_code == 422, bad.get_json()


def test_an_idempotency_key_reused_with_another_max_interruptions_is_refused(client):
    submit_add(client, idempotency_key="k", max_interruptions=2)

    again = client.post("/tasks/add", json={"args": [1, 2], "idempotency_key": "k", "max_interruptions": 5})

    assert again.status_code == 422
    assert again.get_json()["error"]["details"]["differs_in"] == ["max_interruptions"]


@pytest.mark.parametrize("kind", ["--simple", "--forking"])
def test_a_task_failure_worded_like_an_interruption_spends_its_retries(client, start_worker, kind):
    # Given tasks that fail with the words of an interruption, allowed no retry
    jobs = [submit(client, "fail", kwargs={"message": text}, max_retries=0, max_interruptions=1) for text in LOOKALIKES]

    # When a worker runs them
    start_worker("--name", f"lookalike{kind}", *(["--simple"] if kind == "--simple" else []))

    # Then each is a failure: FAILED after its one run, no interruption counted, its own error kept
    for job, text in zip(jobs, LOOKALIKES, strict=True):
        done = wait_for_status(client, job["job_id"], {"FAILED"})
        assert (done["attempt"], done["retry_count"], done["interruptions"]) == (1, 0, 0), done
        assert done["error"].endswith(text.splitlines()[-1]) and not done["error"].startswith("Interrupted")
        assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["FAILED"]


def test_a_failed_report_is_an_interruption_only_when_it_says_so(client):
    error = "WorkerDied: worker w1 stopped while running the job"
    plain, flagged = submit_add(client, max_retries=0), submit_add(client, max_retries=0)

    # A failure whose error merely starts like a worker's is the task's: no retry left, FAILED
    assert _report(client, plain, STARTED, {"event": "failed", "error": error}) == [200, 200]
    # The worker's own mark makes it an interruption: queued again at once, no retry spent
    assert _report(client, flagged, STARTED, {"event": "failed", "error": error, "interrupted": True}) == [200, 200]

    failed, back = get_job(client, plain["job_id"]), get_job(client, flagged["job_id"])
    assert (failed["status"], failed["interruptions"], failed["error"]) == ("FAILED", 0, error)
    assert (back["status"], back["attempt"], back["interruptions"], back["retry_count"]) == ("QUEUED", 2, 1, 0)
    # and the mark must be a boolean
    report = {"job_id": plain["job_id"], "attempt": 1, "event": "failed", "error": error, "interrupted": "yes"}
    refused = client.post("/internal/reports", json={"reports": [report]}, headers=AUTH)
    assert refused.status_code == 400
    assert "interrupted must be bool" in refused.get_json()["error"]["message"]


def test_an_unstarted_report_spends_neither_a_retry_nor_an_interruption(client):
    # Given a job allowed no retry and no interruption
    job = submit_add(client, max_retries=0, max_interruptions=0)
    error = f"StartUnconfirmed: no answer to the start check of job {job['job_id']} attempt 1 in 0.0 s"

    # When its worker says it ended the run before the task, the store never having confirmed its start
    assert _report(client, job, STARTED, {"event": "failed", "error": error, "unstarted": True}) == [200, 200]

    # Then the job gets a new attempt, after a short delay, with nothing spent
    back = get_job(client, job["job_id"])
    assert (back["status"], back["attempt"], back["retry_count"], back["interruptions"]) == ("QUEUED", 2, 0, 0)
    assert back["next_retry_at"] is not None
    assert [(a["outcome"], a["error"]) for a in attempts(client, job["job_id"])][0] == ("UNSTARTED", error)
    # and the mark must be a boolean
    report = {"job_id": job["job_id"], "attempt": 2, "event": "failed", "error": error, "unstarted": 1}
    refused = client.post("/internal/reports", json={"reports": [report]}, headers=AUTH)
    assert refused.status_code == 400
    assert "unstarted must be bool" in refused.get_json()["error"]["message"]


def test_the_reconciler_copies_a_task_failure_worded_like_an_interruption_as_a_failure(app, client, start_worker):
    # Given failures RQ recorded (tracebacks ending in an interruption's words) whose reports were lost
    jobs = [submit(client, "fail", kwargs={"message": text}, max_retries=0) for text in LOOKALIKES]
    mute = start_worker(
        "--burst", "--simple", "--name", "mute",
        env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"},
    )  # fmt: skip
    assert mute.wait(timeout=30) == 0, mute.output()
    for job in jobs:
        age(app, job["job_id"])

    # When the reconciler copies their outcomes from RQ
    services(app).reconciler.run_once()

    # Then each is a failure: FAILED, no interruption counted
    last_lines = ("RuntimeError: due to AbandonedJobError", "WorkerDied: not really", "StartUnconfirmed: not really")
    for job, last_line in zip(jobs, last_lines, strict=True):
        done = get_job(client, job["job_id"])
        assert (done["status"], done["interruptions"], done["error"]) == ("FAILED", 0, last_line)
