"""The worker's Redis round trips per job (issue 17): the pop answers the job's hash, and RQ's IDLE
state, heartbeat and suspension check ride with the pop instead of travelling alone.

Counted on real worker processes (``bench/counted_worker.py`` wraps redis-py, changing nothing),
and ``rq suspend`` checked on real workers: a suspended worker takes no job until ``rq resume``.
"""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from backend.broker.fair_queue import SUSPENDED, FairQueues, Taken
from backend.runner.bookkeeping import LeanBookkeeping
from backend.runner.dequeue import FairDequeue

pytestmark = pytest.mark.one_pass("the worker's Redis round trips and rq suspend: Redis only")


def suspend_workers() -> None:
    """A task that runs ``rq suspend`` (as an operator would while it runs)."""
    from rq import get_current_job

    suspend(get_current_job().connection)


def _queue(connection: Redis) -> Queue:
    return Queue("default", connection=connection, serializer=JSONSerializer)


def _wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


class InProcessWorker(FairDequeue, LeanBookkeeping, SimpleWorker):
    """Our dequeue and bookkeeping on RQ's SimpleWorker, nothing else of ours."""


# -- the pop script ---------------------------------------------------------------------------


def test_a_take_answers_the_jobs_hash_and_the_worker_builds_the_job_fetch_would(redis_conn):
    # Given a job waiting, and a worker whose hash exists
    job = _queue(redis_conn).enqueue("tests.fixtures.add", 1, 2, meta={"x": 1}, job_timeout=77)
    worker = InProcessWorker(["default"], connection=redis_conn, serializer=JSONSerializer)
    worker.register_birth()

    # When it takes the job
    taken, beat = FairQueues(redis_conn).take(["high", "default", "low"], worker)

    # Then the hash came with it, and the job built from it is the one Job.fetch reads
    assert beat
    assert taken == Taken("default", job.id, redis_conn.hgetall(job.key))
    built, queue = worker._start(taken)
    fetched = RQJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
    assert queue.name == "default"
    assert built.to_dict() == fetched.to_dict()
    assert (built.func_name, built.args, built.meta, built.timeout) == ("tests.fixtures.add", [1, 2], {"x": 1}, 77)
    worker.register_death()


def test_a_take_whose_jobs_hash_is_gone_is_skipped(redis_conn):
    redis_conn.rpush("rq:queue:default", "gone-1")  # its hash deleted while it waited
    worker = InProcessWorker(["default"], connection=redis_conn, serializer=JSONSerializer)
    taken, _ = FairQueues(redis_conn).take(["default"], worker)
    assert taken == Taken("default", "gone-1", {})
    assert worker._start(taken) is None


def test_nothing_ready_writes_the_workers_idle_state_and_heartbeat_never_a_partial_hash(redis_conn):
    worker = InProcessWorker(["default"], connection=redis_conn, serializer=JSONSerializer)
    fair = FairQueues(redis_conn)

    # A worker whose hash is gone: nothing written (RQ's own heartbeat follows in the worker)
    assert fair.take(["default"], worker) == (["default"], False)
    assert not redis_conn.exists(worker.key)

    # A live worker, busy as RQ left it after a job with a short timeout
    worker.register_birth()
    redis_conn.hset(worker.key, "state", "busy")
    redis_conn.expire(worker.key, 65)
    assert fair.take(["default"], worker) == (["default"], True)
    assert redis_conn.hget(worker.key, "state") == b"idle"
    assert redis_conn.ttl(worker.key) > 65  # RQ's default TTL again (worker_ttl + 60)
    assert redis_conn.hget(worker.key, "last_heartbeat")
    worker.register_death()


def test_while_rq_suspend_holds_a_take_pops_nothing(redis_conn):
    job = _queue(redis_conn).enqueue("tests.fixtures.add", 1, 2)
    worker = InProcessWorker(["default"], connection=redis_conn, serializer=JSONSerializer)
    suspend(redis_conn)
    assert FairQueues(redis_conn).take(["default"], worker)[0] is SUSPENDED
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [job.id.encode()]
    # The blocking fallback puts back a job it took as the suspension landed
    assert redis_conn.lpop("rq:queue:default") == job.id.encode()
    assert FairQueues(redis_conn).after_blocking_take("default", job.id) is None
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [job.id.encode()]
    resume(redis_conn)
    assert FairQueues(redis_conn).after_blocking_take("default", job.id) == redis_conn.hgetall(job.key)


# -- real workers -------------------------------------------------------------------------------


def _trips(path) -> dict[str, int]:
    """The worker process's main-thread round trips by kind (the commands each carried)."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["role"] != "parent":
            continue
        for thread, names, n in record["trips"]:
            if thread == "MainThread":
                counts[names] = counts.get(names, 0) + n
    return counts


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "fork"])
def test_a_backlog_costs_no_trip_for_the_jobs_hash_the_idle_state_or_a_heartbeat(
    redis_conn, start_worker, tmp_path, simple
):
    # Given 20 jobs waiting
    jobs = 20
    queue = _queue(redis_conn)
    for i in range(jobs):
        queue.enqueue("tests.fixtures.add", i, 1)
    path = tmp_path / "trips.jsonl"

    # When a real burst worker drains them, its round trips counted
    worker = start_worker(
        "--burst", "--name", "counted", "--queues", "default", *(["--simple"] if simple else []),
        env={"BENCH_TRIPS": str(path)}, program=("bench/counted_worker.py", "ours"),
    )  # fmt: skip
    assert worker.wait(timeout=120) == 0, worker.output()
    assert queue.finished_job_registry.count == jobs

    # Then no job cost a trip of its own for its hash (Job.fetch), for RQ's IDLE state after it
    # (before: HSET state, heartbeat and the suspension check in one pipeline) or for a default
    # heartbeat alone: the pop carried them. Start-up may send one of each.
    trips = _trips(path)
    assert trips.get("HGETALL", 0) <= 1, trips
    state_writes = sum(n for names, n in trips.items() if names.startswith("HSET HSET"))
    assert state_writes <= 2, trips
    assert trips.get("HSET EXPIRE EXPIRE", 0) <= 2, trips


def _state(connection: Redis, name: str) -> str | None:
    state = connection.hget(f"rq:worker:{name}", "state")
    return state.decode() if state else None


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "fork"])
def test_rq_suspend_stops_an_idle_worker_taking_jobs_until_rq_resume(redis_conn, start_worker, simple):
    # Given a real worker, idle on an empty queue
    queue = _queue(redis_conn)
    name = f"suspended-{'simple' if simple else 'fork'}"
    start_worker("--name", name, "--queues", "default", *(["--simple"] if simple else []))
    _wait_for(lambda: _state(redis_conn, name) == "idle", "the worker idle")

    # When RQ's workers are suspended and a job comes at once
    suspend(redis_conn)
    job = queue.enqueue("tests.fixtures.add", 2, 3)

    # Then the worker notices (RQ's own check: state "suspended"), and while it keeps checking
    # (its heartbeats move) the job waits in its queue
    _wait_for(lambda: _state(redis_conn, name) == "suspended", "the worker suspended")
    for _ in range(2):
        seen = redis_conn.hget(f"rq:worker:{name}", "last_heartbeat")
        _wait_for(lambda seen=seen: redis_conn.hget(f"rq:worker:{name}", "last_heartbeat") != seen, "a heartbeat")
    assert job.get_status(refresh=True) == "queued"
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [job.id.encode()]

    # And once resumed it runs the job, then shows itself idle again
    resume(redis_conn)
    _wait_for(lambda: job.get_status(refresh=True) == "finished", "the job finished")
    assert job.return_value() == 5
    _wait_for(lambda: _state(redis_conn, name) == "idle", "the worker idle again")


def test_rq_suspend_during_a_job_stops_a_burst_worker_before_the_next(redis_conn, run_burst_worker):
    # Given three jobs, the first of which suspends RQ's workers as it runs
    queue = _queue(redis_conn)
    queue.enqueue("tests.test_worker_trips.suspend_workers")
    later = [queue.enqueue("tests.fixtures.add", 1, 2), queue.enqueue("tests.fixtures.add", 3, 4)]

    # When a real burst worker works
    try:
        run_burst_worker("--queues", "default")
    finally:
        resume(redis_conn)

    # Then it stopped after the first job (RQ's own check, as a burst worker does): the others wait
    assert queue.finished_job_registry.count == 1
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [job.id.encode() for job in later]
