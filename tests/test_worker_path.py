"""The worker's per-job path: RQ's bookkeeping in fewer Redis round trips, the start report held.

Issue 17 asks the worker to pay for its reports with a leaner path than RQ's own. These tests pin
what that path promises: RQ's heartbeat and state writes batched (never a job's TTL left on the
worker's key once the job ended), and a start report that waits for its attempt's end instead of
waking the sender thread while the task starts, yet is never lost (sent alone after a moment, or at
once by a flush).
"""

from __future__ import annotations

import time

import pytest
from redis import ConnectionPool, Redis
from redis.connection import Connection
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from backend.runner.bookkeeping import LeanBookkeeping
from backend.runner.reporter import START_HOLD_SECONDS, Reporter

pytestmark = pytest.mark.one_pass(reason="the worker runtime; no store involved")


class _Answer:
    status_code = 200

    def __init__(self, reports: list[dict]):
        self._results = [{"status": 200} for _ in reports]

    def json(self) -> dict:
        return {"results": self._results}


class RecordingReporter(Reporter):
    """A reporter whose batches are recorded (when, which events) instead of posted."""

    def __init__(self):
        super().__init__("http://127.0.0.1:9", "token")
        self.sent: list[tuple[float, list[str]]] = []

    def _post_batch(self, reports: list[dict]):
        if reports:
            self.sent.append((time.monotonic(), [report["event"] for report in reports]))
        return _Answer(reports)


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_fast_jobs_start_waits_for_its_end_and_both_go_in_one_request():
    # Given a reporter told of a start
    reporter = RecordingReporter()
    reporter.started("job-1", 1, "w")

    # When the attempt ends soon after
    time.sleep(START_HOLD_SECONDS / 3)
    assert reporter.sent == []  # the start alone did not wake the sender
    reporter.completed("job-1", 1, "done")

    # Then start and end travel together, at once
    _wait_for(lambda: reporter.sent)
    reporter.close()
    assert reporter.sent[0][1] == ["started", "completed"]


def test_a_start_alone_is_sent_after_its_hold_and_a_flush_sends_it_at_once():
    # Given a long job's start, nothing after it
    reporter = RecordingReporter()
    queued = time.monotonic()
    reporter.started("job-1", 1, "w")

    # Then it goes alone once held for START_HOLD_SECONDS (never lost, never much later)
    _wait_for(lambda: reporter.sent)
    waited = reporter.sent[0][0] - queued
    assert START_HOLD_SECONDS * 0.8 <= waited < START_HOLD_SECONDS + 1.0
    assert reporter.sent[0][1] == ["started"]

    # And a flush (the worker stopping) does not wait for a hold
    reporter.started("job-2", 1, "w")
    began = time.monotonic()
    assert reporter.flush(timeout=5)
    assert time.monotonic() - began < START_HOLD_SECONDS * 0.8
    assert reporter.sent[-1][1] == ["started"]
    reporter.close()


class CountingConnection(Connection):
    """Counts what is sent to Redis: one packed send is one round trip (a pipeline is one)."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


class LeanSimpleWorker(LeanBookkeeping, SimpleWorker):
    """RQ's SimpleWorker with our bookkeeping and nothing else of ours."""


def _trips_to_drain(redis_url: str, worker_class, jobs: int) -> int:
    connection = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    queue = Queue(f"lean-{worker_class.__name__}", connection=connection, serializer=JSONSerializer)
    for _ in range(jobs):
        queue.enqueue("tests.fixtures.add", 1, 2)
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer)
    CountingConnection.sends = 0
    worker.work(burst=True)
    sent = CountingConnection.sends
    assert queue.finished_job_registry.count == jobs
    return sent


def test_rqs_heartbeats_and_states_cost_one_round_trip_per_job_not_nine(redis_url):
    # Given the same jobs drained by RQ's SimpleWorker, and by it with our bookkeeping
    jobs = 20
    raw = _trips_to_drain(redis_url, SimpleWorker, jobs)
    lean = _trips_to_drain(redis_url, LeanSimpleWorker, jobs)

    # Then ours sends at least 10 fewer round trips per job (RQ: 3 heartbeats of 3 trips, 2 states,
    # its suspension check and the job's heartbeat after the task)
    assert lean <= raw - 10 * jobs, (raw, lean)


def suspend_workers() -> None:
    """A task that runs ``rq suspend`` (as an operator would while it runs)."""
    from rq import get_current_job
    from rq.suspension import suspend

    suspend(get_current_job().connection)


def test_rq_suspend_during_a_job_stops_the_worker_before_the_next(redis_url):
    # Given three jobs, the first of which suspends RQ's workers as it runs
    connection = Redis.from_url(redis_url)
    queue = Queue("lean-suspend", connection=connection, serializer=JSONSerializer)
    queue.enqueue("tests.test_worker_path.suspend_workers")
    queue.enqueue("tests.fixtures.add", 1, 2)
    queue.enqueue("tests.fixtures.add", 3, 4)

    # When a burst worker with our bookkeeping works
    try:
        LeanSimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
    finally:
        from rq.suspension import resume

        resume(connection)

    # Then it stopped after the first job, as RQ's own check makes it: the other two still wait
    assert queue.finished_job_registry.count == 1
    assert queue.count == 2


def test_the_worker_key_keeps_the_default_ttl_and_state_once_a_job_ended(redis_url):
    # Given a worker with our bookkeeping, and a job whose timeout sets a short TTL as it runs
    connection = Redis.from_url(redis_url)
    queue = Queue("lean-ttl", connection=connection, serializer=JSONSerializer)
    job = queue.enqueue("tests.fixtures.add", 1, 2, job_timeout=5)
    worker = LeanSimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    worker.register_birth()
    worker.set_state("idle")

    # When it runs the job, then RQ's loop heartbeats as after every job
    worker.execute_job(job, queue)
    worker.heartbeat()

    # Then the key shows it idle, with RQ's default TTL again (the job's was 5 + 60 s)
    assert connection.hget(worker.key, "state") == b"idle"
    assert connection.ttl(worker.key) > worker.worker_ttl
    assert connection.hget(job.key, "status") == b"finished"
    worker.register_death()
