"""A run whose end RQ could not record (Redis went away right after its task): the outcome the
worker holds is the job's, handed over by a forking worker's work-horse to its parent
(backend/runner/handover.py), and RQ records it as its worker would have once Redis answers.

Found by a hostile review of the first version, which signalled the handover by the horse's exit
status and reported from the horse: each test shows one of its defects (a task exiting 3 taken for
a completion, a completion lost with the API away too, a dependant never released, RQ failing a
run the store completed). Real Redis, real worker processes, the live API.
"""

from __future__ import annotations

import time

import pytest
from redis import Redis
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.dev.redis_server import EmbeddedRedis
from tests.conftest import TASK_MODULES
from tests.helpers import attempts, get_job, submit, wait_for_status, wait_until
from tests.test_interruptions import _reconciled
from tests.test_reconciler import age

pytestmark = pytest.mark.one_pass(
    store="postgres",
    reason="the worker runtime under a Redis loss; the store applies its reports as any other (both stores)",
)

MODULES = f"{TASK_MODULES},tests.exiting_tasks"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture
def own_redis(settings, tmp_path):
    """A Redis of this test's own (it is shut down and started again), for the app and the workers."""
    server = EmbeddedRedis.start(data_dir=tmp_path / "redis", appendonly=False)
    settings["REDIS_URL"] = server.url
    yield server
    server.stop()


@pytest.fixture
def exiting_tasks(settings):
    settings["TASK_MODULES"] = MODULES
    return {"TASK_MODULES": MODULES}


@pytest.fixture
def api_gate(app, tmp_path):
    """While the returned file exists, the live API answers every worker report 503 (down)."""
    mark = tmp_path / "api-down"
    inner = app.wsgi_app

    def gated(environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/internal/") and mark.exists():
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
            return [b"down"]
        return inner(environ, start_response)

    app.wsgi_app = gated
    yield mark
    app.wsgi_app = inner


def _settle(app, client, job_id: str, timeout: float = 40) -> dict:
    """Reconciler passes (the job aged past the grace each time) until the job is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        age(app, job_id)
        _reconciled(app)
        job = get_job(client, job_id)
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never settled: {get_job(client, job_id)}")


# -- the exit status is a channel any task can write -------------------------------------


@pytest.mark.parametrize("code", [3, 4, 5])
def test_a_task_that_exits_its_work_horse_with_any_status_is_reported_by_the_parent(
    exiting_tasks, client, start_worker, code
):
    # Given a forking worker and a task that ends its process with exit status `code`
    # (os._exit in a task, a C library's exit(3)); no reconciler runs
    job = submit(client, "exit_with", kwargs={"code": code}, max_retries=0)
    start_worker("--name", f"exit-{code}", env=exiting_tasks)

    # Then the parent reports the dead work-horse at once, whatever the status: 5 is reported
    # ("WorkHorseKilled ... exit status 5"); 3 and 4 are taken for "the horse reported its
    # run itself" and nothing is reported: the job stays PROCESSING until a reconciler pass
    done = wait_for_status(client, job["job_id"], TERMINAL, timeout=15)
    assert done["status"] == "FAILED", done
    assert f"exit status {code}" in (done["error"] or ""), done


@pytest.mark.parametrize("code", [3, 5])
def test_a_task_that_exits_3_while_redis_fails_is_never_recorded_completed(
    exiting_tasks,
    own_redis,
    app,
    client,
    start_worker,
    code,
    tmp_path,
):
    # Given a forking worker and a task that crashes its work-horse with exit status 3 just as
    # Redis goes away (a failover at that moment; the task never returned anything)
    job = submit(client, "exit_with", kwargs={"code": code, "kill_redis": str(tmp_path / "killed")}, max_retries=0)
    start_worker("--name", f"crash-{code}", env=exiting_tasks)
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down by the task")

    # When Redis is back (holding the run as started)
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        rq = Redis.from_url(restarted.url)
        rq_job = RQJob.fetch(job["rq_job_id"], connection=rq, serializer=JSONSerializer)
        wait_until(lambda: rq_job.get_status() != "started", timeout=30, what="the worker settled the run in RQ")
        done = _settle(app, client, job["job_id"])
    finally:
        restarted.stop()

    # Then the crashed run is no completion. On the first version the parent took the exit status
    # for "completed and reported", put the RQ id in completed_unrecorded, recorded the run
    # finished in RQ (finish_started) and the reconciler copied it: COMPLETED, result None.
    assert done["status"] != "COMPLETED", (done["status"], done["result"], done["error"])


# -- a forking horse that cannot reach the API for 5 s drops the outcome it holds ---------


@pytest.mark.parametrize("simple", [False, True], ids=["forking", "simple"])
def test_a_run_whose_redis_and_api_go_away_after_the_task_runs_once(
    own_redis,
    api_gate,
    app,
    client,
    start_worker,
    tmp_path,
    simple,
):
    # Given a worker whose task has just returned when Redis goes away, and the API stops
    # answering reports (503) at the same moment, for 6 s: a report queued then is delivered
    # within REPORT_RETRY_SECONDS (10 s; the reporter's backoff sends at ~3.75 s and ~7.75 s)
    job = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.1}, max_retries=1)
    worker = start_worker(
        "--name",
        "both-down",
        *(["--simple"] if simple else []),
        program=("-m", "tests.worker_redis_and_api_die_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "redis-died"), "API_DOWN_MARK": str(api_gate)},
    )
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the task")
    time.sleep(6)
    api_gate.unlink()  # the API answers again

    # When Redis is back too
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        time.sleep(3)
        done = _settle(app, client, job["job_id"])
        time.sleep(2)
        done = get_job(client, job["job_id"])
    finally:
        restarted.stop()

    # Then the one run that ended is the job's: no second run (the simple worker's outbox keeps
    # the held outcome for REPORT_RETRY_SECONDS; the forking work-horse gives up after 5 s and
    # exits 1, its parent holds nothing, RQ fails the run as an orphan: WorkerDied, run again)
    assert (done["status"], done["attempt"], done["interruptions"]) == ("COMPLETED", 1, 0), (
        [(a["outcome"], a.get("error")) for a in attempts(client, job["job_id"])],
        worker.output()[-6000:],
    )
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["COMPLETED"]


# -- the simple worker never records its held completion in completed_unrecorded ----------


def test_a_simple_worker_whose_redis_dies_right_after_the_task_records_the_run_finished_in_rq(
    own_redis,
    app,
    client,
    start_worker,
    tmp_path,
):
    # Given a simple worker whose task has just returned when Redis goes away (the API answers)
    job = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.1}, max_retries=1)
    worker = start_worker(
        "--name",
        "simple-after-task",
        "--simple",
        program=("-m", "tests.worker_redis_and_api_die_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "redis-died"), "API_DOWN_MARK": str(tmp_path / "no-gate")},
    )
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the task")

    # Then the worker reports the outcome it holds
    done = wait_for_status(client, job["job_id"], TERMINAL | {"PENDING"})
    assert (done["status"], done["attempt"], done["result"]) == ("COMPLETED", 1, {"steps": 1}), done
    # and once Redis is back, RQ records the run finished, as 0174cb5 says for both workers
    # ("Forking and simple worker: ... recorded finished in RQ when Redis is back"). The first version's
    # simple worker takes perform_job's non-raising branch (RQ 3 swallows its failed failure
    # bookkeeping: "failed to persist failure"), which never adds to completed_unrecorded, so
    # abandon_orphaned_jobs fails the run in RQ: "WorkerDied" for a COMPLETED job.
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        rq_job = RQJob.fetch(job["rq_job_id"], connection=Redis.from_url(restarted.url), serializer=JSONSerializer)
        wait_until(lambda: rq_job.get_status() != "started", timeout=30, what="the worker settled the run in RQ")
        status, record = rq_job.get_status(), rq_job.latest_result()
    finally:
        restarted.stop()
    assert status == "finished", (status, record and record.exc_string, worker.output()[-3000:])


# -- a horse-only Redis loss: RQ records FAILED a run the store has COMPLETED ---------------


def test_a_run_the_horse_reported_is_not_failed_in_rq_when_the_parent_reads_redis(
    app, client, start_worker, redis_conn, tmp_path
):
    # Given a forking worker whose work-horse loses Redis right after its task returned, while the
    # parent's Redis answers (Redis back by the time the parent reads the run's end)
    job = submit(client, "crawl", kwargs={"steps": 1, "delay": 0.1}, max_retries=1)
    start_worker(
        "--name",
        "horse-only",
        program=("-m", "tests.worker_horse_loses_redis_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "horse-lost")},
    )

    # Then the store has the horse's report of the completed run
    done = wait_for_status(client, job["job_id"], TERMINAL)
    assert (done["status"], done["result"]) == ("COMPLETED", {"steps": 1}), done
    # and RQ agrees (0174cb5's aim): the first version's parent passes exit status 3 to RQ's
    # monitor_work_horse, which fails the job ("Work-horse terminated unexpectedly") in RQ
    rq_job = RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer)
    wait_until(lambda: rq_job.get_status() != "started", timeout=15, what="RQ settled the run")
    latest = rq_job.latest_result()
    assert rq_job.get_status() == "finished", (rq_job.get_status(), latest and latest.exc_string)


# -- finish_started moves no RQ dependants (and frees no concurrency slot) -----------------


def test_a_dependant_of_a_run_recorded_finished_by_finish_started_runs(
    own_redis,
    app,
    client,
    start_worker,
    tmp_path,
):
    # Given a parent running on a forking worker and a dependant submitted while it runs (RQ holds
    # the dependant deferred on the parent's RQ job)
    parent = submit(client, "crawl", kwargs={"steps": 2, "delay": 0.5}, max_retries=1)
    worker = start_worker(
        "--name",
        "parent-runner",
        program=("-m", "tests.worker_redis_dies_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "redis-died")},
    )
    wait_for_status(client, parent["job_id"], {"PROCESSING"})
    child = submit(client, "add", args=[1, 1], depends_on=[parent["job_id"]])

    # When Redis goes away right after the parent's task returned (the horse reports COMPLETED)
    # and comes back holding the parent as started (its end was the write lost)
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the task")
    done = wait_for_status(client, parent["job_id"], TERMINAL)
    assert done["status"] == "COMPLETED", done
    time.sleep(2)  # the parent's own read of the end fails too (Redis still down)
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        rq_parent = RQJob.fetch(
            parent["rq_job_id"], connection=Redis.from_url(restarted.url), serializer=JSONSerializer
        )
        wait_until(lambda: rq_parent.get_status() == "finished", timeout=30, what="RQ recorded the parent finished")
        # Then the dependant runs (reconciler passes included), as after any parent's end
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and get_job(client, child["job_id"])["status"] not in TERMINAL:
            age(app, child["job_id"])
            _reconciled(app)
            time.sleep(0.5)
        late = get_job(client, child["job_id"])
        rq_child = RQJob.fetch(late["rq_job_id"], connection=Redis.from_url(restarted.url), serializer=JSONSerializer)
        rq_child_status = rq_child.get_status()
    finally:
        restarted.stop()
    assert (late["status"], late["result"]) == ("COMPLETED", 2), (
        f"RQ: {rq_child_status}",
        late,
        worker.output()[-2000:],
    )


# -- a task failure or snooze when Redis dies right after: the horse exits 0, nothing held ----


@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        ("flaky", {"failures": 1}, ("FAILED", 1, 0)),  # the task's own failure, no retry left
        ("snooze_once", {"seconds": 1.0}, ("COMPLETED", 2, 0)),  # a snooze, then attempt 2 runs
    ],
    ids=["failure", "snooze"],
)
def test_a_forking_runs_failure_or_snooze_held_when_redis_dies_right_after_the_task(
    own_redis,
    app,
    client,
    start_worker,
    tmp_path,
    task,
    kwargs,
    expected,
):
    # Given a forking worker whose work-horse's task has just failed (or snoozed) when Redis goes away
    if task == "flaky":
        kwargs = {**kwargs, "marker": str(tmp_path / "flaky-runs")}
    job = submit(client, task, kwargs=kwargs, max_retries=0)
    worker = start_worker(
        "--name",
        f"held-{task}",
        program=("-m", "tests.worker_redis_dies_after_task"),
        env={"REDIS_DIES_MARK": str(tmp_path / "redis-died")},
    )
    wait_until(lambda: own_redis.process.poll() is not None, timeout=30, what="Redis shut down after the task")
    time.sleep(3)  # the parent's own read fails too
    restarted = EmbeddedRedis.start(data_dir=own_redis.data_dir, port=own_redis.port, appendonly=False)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            done = get_job(client, job["job_id"])
            if done["status"] in TERMINAL:
                break
            age(app, job["job_id"])
            _reconciled(app)
            time.sleep(0.5)
    finally:
        restarted.stop()

    # Then the run's own end is the job's: the task's failure (no retry left: FAILED, not run
    # again), or its snooze (no interruption counted). The first version's horse holds only a completion:
    # RQ 3 swallows its failed failure bookkeeping ("failed to persist failure"), perform_job
    # returns False, the horse exits 0 with nothing reported, and the run is failed in RQ as an
    # orphan ("WorkerDied"): an interruption, run again at once
    outcomes = [(a["outcome"], a.get("error")) for a in attempts(client, job["job_id"])]
    assert (done["status"], done["attempt"], done["interruptions"]) == expected, (outcomes, worker.output()[-2000:])
