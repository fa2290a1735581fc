"""A job's success recorded in one Redis round trip (backend/runner/success.py), its dependents
released as RQ releases them: never lost, never twice.

RQ's ``handle_job_success`` WATCHes the job's dependents set and reads it before its MULTI..EXEC:
three round trips for a set that is nearly always empty. Ours reads the set inside that MULTI and
runs RQ's own release only when it held ids. These tests count the round trips on a real Redis,
compare what Redis holds after ours with what it holds after RQ's own (a copy of RQ's method must
not drift from it), and show a child submitted over the API while its parent runs released by
RQ's path as the parent ends, by real workers of both kinds.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import time
from pathlib import Path

import pytest
from redis import ConnectionPool, Redis
from redis.connection import Connection
from redis.exceptions import WatchError
from rq import Queue, SimpleWorker, Worker, get_current_job
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.runner.forking import JobServiceWorker
from backend.runner.success import OneTripSuccess
from backend.runner.worker import JobServiceSimpleWorker
from backend.tasks import task
from tests.conftest import TASK_MODULES
from tests.helpers import get_job, submit, wait_for_status, wait_until

THIS_MODULE = __name__

#: The RQ method ``OneTripSuccess.handle_job_success`` copies, as this test last read it: a
#: different hash means RQ changed it, and the copy must be read against RQ's new one (then the
#: hash updated). The state comparison below checks the copy's writes whatever the hash says.
RQ_HANDLE_JOB_SUCCESS_SHA256 = "9dda7c7d3ca18ee6a479dca753e4363799a16369bff2dbe66bad732190124556"  # rq 3.0.0


class CountingConnection(Connection):
    """Counts what is sent to Redis: one packed send is one round trip (a pipeline is one)."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


def _counting_success(worker_class):
    """``worker_class`` recording the round trips each ``handle_job_success`` sent."""

    class Counted(worker_class):
        success_trips: list[int] = []

        def handle_job_success(self, *args, **kwargs):
            before = CountingConnection.sends
            try:
                return super().handle_job_success(*args, **kwargs)
            finally:
                Counted.success_trips.append(CountingConnection.sends - before)

    Counted.success_trips = []
    return Counted


class OneTripSimpleWorker(OneTripSuccess, SimpleWorker):
    """RQ's SimpleWorker with our success and nothing else of ours."""


def _connection(redis_url: str) -> Redis:
    return Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))


def _drain(connection: Redis, worker_class, queue: Queue, name: str = "w1"):
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer, name=name)
    worker.work(burst=True)
    return worker


# -- round trips ----------------------------------------------------------------------------


def test_a_success_without_dependents_is_one_round_trip_not_three(redis_url):
    # Given the same jobs drained by RQ's SimpleWorker and by it with our success
    connection = _connection(redis_url)
    jobs = 10
    trips = {}
    for worker_class in (SimpleWorker, OneTripSimpleWorker):
        counted = _counting_success(worker_class)
        queue = Queue(f"trips-{worker_class.__name__}", connection=connection, serializer=JSONSerializer)
        for _ in range(jobs):
            queue.enqueue("tests.fixtures.add", 1, 2)
        _drain(connection, counted, queue)
        assert queue.finished_job_registry.count == jobs
        trips[worker_class] = counted.success_trips

    # Then RQ's success is WATCH, SMEMBERS and MULTI..EXEC; ours one script (after the first
    # success of the worker's connection, which may load it)
    assert trips[SimpleWorker] == [3] * jobs
    assert trips[OneTripSimpleWorker][1:] == [1] * (jobs - 1)


@pytest.mark.parametrize("kind", ["simple", "fork"])
def test_our_workers_record_each_success_in_the_one_multi(client, start_worker, tmp_path, kind):
    # Given jobs submitted over the API, drained by a real worker of each kind whose round trips
    # are counted (bench/counted_worker.py wraps redis-py's sends, a work-horse's too)
    jobs = 8
    for n in range(jobs):
        submit(client, "add", args=[n, 1])
    trips_file = tmp_path / "trips.jsonl"
    counted = ("bench/counted_worker.py", "ours")
    args = ["--burst", "--name", f"counted-{kind}", *(["--simple"] if kind == "simple" else [])]
    process = start_worker(*args, program=counted, env={"BENCH_TRIPS": str(trips_file)})
    assert process.wait(timeout=60) == 0, process.output()

    # Then no success WATCHed the dependents set or went as RQ's MULTI..EXEC: each was the one
    # script (the few lone SMEMBERS left are the worker's start-up and registry cleaning)
    sent: dict[str, int] = {}
    for line in trips_file.read_text().splitlines():
        for _thread, names, n in json.loads(line)["trips"]:
            sent[names] = sent.get(names, 0) + n
    assert sent.get("WATCH", 0) == 0, sent
    assert not [names for names in sent if names.startswith("MULTI HINCRBY")], sent


def test_both_of_our_workers_record_a_success_through_it():
    for worker_class in (JobServiceSimpleWorker, JobServiceWorker):
        assert worker_class.handle_job_success is OneTripSuccess.handle_job_success, worker_class


# -- the same record as RQ's ----------------------------------------------------------------

#: Fields whose values are times, process facts or random ids: compared by presence only.
VOLATILE = re.compile(
    rb"created_at|enqueued_at|started_at|ended_at|last_heartbeat|birth|death|pid|ip_address|"
    rb"total_working_time|execution_id|execution_started_at|execution_ended_at"
)


def _snapshot(connection: Redis) -> dict:
    """What Redis holds, with times and random ids blanked (TTLs to the nearest 10 s)."""
    held = {}
    for key in sorted(connection.keys("*")):
        kind = connection.type(key).decode()
        ttl = connection.ttl(key)
        if kind == "hash":
            value = {f: (b"*" if VOLATILE.fullmatch(f) else v) for f, v in connection.hgetall(key).items()}
        elif kind == "zset":
            value = sorted(connection.zrange(key, 0, -1))
        elif kind == "set":
            value = sorted(connection.smembers(key))
        elif kind == "list":
            value = connection.lrange(key, 0, -1)
        elif kind == "stream":
            value = [
                {f: (b"*" if VOLATILE.fullmatch(f) else v) for f, v in fields.items()}
                for _, fields in connection.xrange(key)
            ]
        else:
            value = connection.get(key)
        held[key] = (kind, -1 if ttl < 0 else round(ttl, -1), value)
    return held


def _scenario(connection: Redis, worker_class) -> dict:
    """A parent with two children (one also waiting for a job that has not run), drained."""
    connection.flushall()
    queue = Queue("same", connection=connection, serializer=JSONSerializer)
    other = Queue("other", connection=connection, serializer=JSONSerializer)
    parent = queue.enqueue("tests.fixtures.add", 1, 2, job_id="parent")
    later = other.enqueue("tests.fixtures.add", 5, 5, job_id="later")
    queue.enqueue("tests.fixtures.add", 2, 3, job_id="child", depends_on=parent)
    queue.enqueue("tests.fixtures.add", 3, 4, job_id="both", depends_on=[parent, later])
    queue.enqueue("tests.fixtures.add", 4, 5, job_id="plain")
    _drain(connection, worker_class, queue)
    return _snapshot(connection)


def test_redis_holds_after_our_success_what_it_holds_after_rqs(redis_url):
    # Given the same jobs (a parent, its children, one of them also waiting for a job on a queue
    # no worker reads) drained by RQ's SimpleWorker and by it with our success
    connection = Redis.from_url(redis_url)
    rqs = _scenario(connection, SimpleWorker)
    ours = _scenario(connection, OneTripSimpleWorker)

    # Then Redis holds the same: statuses, results, registries, counts, the child still deferred
    assert ours == rqs
    assert RQJob.fetch("child", connection=connection).get_status() == "finished"
    assert RQJob.fetch("both", connection=connection).get_status() == "deferred"


def test_the_copied_rq_method_is_the_one_the_copy_was_read_against():
    # ``OneTripSuccess.handle_job_success`` copies RQ's body: when RQ's changes, read both again.
    source = inspect.getsource(Worker.handle_job_success)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == RQ_HANDLE_JOB_SUCCESS_SHA256, "RQ's handle_job_success changed: read success.py's copy against it"


# -- dependents: never lost, never twice ----------------------------------------------------


def add_a_child_of_myself(marker: str) -> str:
    """A task that enqueues a dependent of its own job while it runs (as the API does)."""
    job = get_current_job()
    queue = Queue(job.origin, connection=job.connection, serializer=JSONSerializer)
    child = queue.enqueue("tests.fixtures.add", 20, 22, job_id=f"{job.id}-child", depends_on=job.id)
    Path(marker).write_text(child.get_status())
    return child.id


def test_dependents_are_released_once_each_whenever_they_were_added(redis_url, tmp_path):
    # Given a parent whose child waits from before it runs, one added while it runs, a child
    # that also waits for a second parent, and that second parent
    connection = _connection(redis_url)
    queue = Queue("deps", connection=connection, serializer=JSONSerializer)
    marker = tmp_path / "status"
    parent = queue.enqueue(f"{THIS_MODULE}.add_a_child_of_myself", str(marker), job_id="p")
    early = queue.enqueue("tests.fixtures.add", 1, 1, job_id="early", depends_on=parent)
    second = Queue("deps-later", connection=connection, serializer=JSONSerializer)
    other = second.enqueue("tests.fixtures.add", 0, 0, job_id="other")
    both = queue.enqueue("tests.fixtures.add", 2, 2, job_id="both", depends_on=[parent, other])

    # When our success records the parent (the second parent not run yet)
    counted = _counting_success(OneTripSimpleWorker)
    _drain(connection, counted, queue)

    # Then the children waiting on it alone ran, once each; the other still waits for its parent
    assert marker.read_text() == "deferred"  # added while the parent ran: in its dependents set
    for job_id, value in (("early", 2), ("p-child", 42)):
        job = RQJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        assert job.get_status() == "finished" and job.return_value() == value
        assert len(job.results()) == 1
    assert both.get_status() == "deferred"
    assert early.get_status() == "finished"
    # (a success with dependents is RQ's own, after the script that wrote nothing)
    assert counted.success_trips[0] > 1 and counted.success_trips[1:] == [1] * (len(counted.success_trips) - 1)

    # And when the second parent ends, the last child runs, once
    _drain(connection, OneTripSimpleWorker, second, name="w2")
    _drain(connection, OneTripSimpleWorker, queue, name="w3")
    assert both.get_status() == "finished" and len(both.results()) == 1
    assert queue.count == 0 and queue.deferred_job_registry.count == 0


def test_a_child_whose_enqueue_straddles_the_parents_success_is_enqueued_by_its_own_retry(redis_url):
    # Given a child whose enqueue (RQ's setup_dependencies: WATCH its parent's hash, read it)
    # read the parent still running when the parent's success lands
    connection = Redis.from_url(redis_url)
    queue = Queue("straddle", connection=connection, serializer=JSONSerializer)
    queue.enqueue("tests.fixtures.add", 1, 2, job_id="p")
    child = queue.create_job("tests.fixtures.add", args=(20, 22), job_id="c", depends_on="p")
    outcome = {}

    class Straddling(OneTripSimpleWorker):
        def handle_job_success(self, job, queue, started_job_registry, execution):
            if job.id != "p":
                return super().handle_job_success(job, queue, started_job_registry, execution)
            with connection.pipeline() as pipe:
                pipe.watch(child.dependencies_key)
                outcome["read"] = [d.get_status() for d in child.fetch_dependencies(watch=True, pipeline=pipe)]
                super().handle_job_success(job, queue, started_job_registry, execution)
                # When the child's MULTI (deferred, in its parent's dependents) follows the success
                pipe.multi()
                child.set_status("deferred", pipeline=pipe)
                child.register_dependency(pipeline=pipe)
                child.save(pipeline=pipe)
                try:
                    pipe.execute()
                    outcome["exec"] = "committed"
                except WatchError:
                    outcome["exec"] = "refused"
                    child._status = "queued"  # as RQ's setup_dependencies resets it for its retry
            queue.enqueue_job(child)  # RQ's retry after a WatchError: the enqueue reads again

    _drain(connection, Straddling, queue)

    # Then the success's write to the parent's hash refused that MULTI, the retry found the parent
    # finished and queued the child, and it ran once (not left deferred behind a finished parent)
    assert outcome == {"read": ["started"], "exec": "refused"}
    ran = RQJob.fetch("c", connection=connection, serializer=JSONSerializer)
    assert ran.get_status() == "finished" and ran.return_value() == 42 and len(ran.results()) == 1
    assert queue.deferred_job_registry.count == 0


# -- a real worker, over the API ------------------------------------------------------------


@task("hold_until_released")
def hold_until_released(running_file: str, release_file: str) -> str:
    """Say it runs (``running_file``), then run until ``release_file`` exists (60 s at most)."""
    Path(running_file).touch()
    deadline = time.monotonic() + 60
    while not Path(release_file).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@pytest.fixture
def hold_tasks(settings) -> dict:
    """The API and the workers know ``hold_until_released``; the reconciler runs once, at the
    API's start, and not again within the test: what releases the child is the worker's path."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"
    settings["RECONCILE_INTERVAL"] = 3600
    return {"TASK_MODULES": settings["TASK_MODULES"]}


@pytest.mark.parametrize("kind", ["simple", "fork"])
def test_a_child_submitted_while_its_parent_runs_is_released_by_the_parents_end(
    hold_tasks, client, redis_conn, start_worker, tmp_path, kind
):
    # Given a parent running on a real worker
    running, release = tmp_path / "running", tmp_path / "release"
    start_worker("--name", f"success-{kind}", *(["--simple"] if kind == "simple" else []), env=hold_tasks)
    parent = submit(client, "hold_until_released", kwargs={"running_file": str(running), "release_file": str(release)})
    wait_until(running.exists, timeout=30, what="the parent runs")

    # When a child is submitted over the API while it runs
    child = submit(client, "add", args=[20, 22], depends_on=[parent["job_id"]])
    assert child["waiting_for"] == [parent["job_id"]]
    rq_child = f"{child['job_id']}-1"
    assert RQJob.fetch(rq_child, connection=redis_conn, serializer=JSONSerializer).get_status() == "deferred"
    # (a mark on that very RQ job: the API's own release would replace the deferred copy)
    redis_conn.hset(RQJob.key_for(rq_child), "test_mark", "deferred-copy")
    release.touch()

    # Then the parent's end released it through RQ: it ran as the RQ job that waited, with no
    # reconciler pass (none runs within the hour) and no replacement by the API
    done = wait_for_status(client, child["job_id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=30)
    assert done["status"] == "COMPLETED" and done["result"] == 42
    assert get_job(client, parent["job_id"])["status"] == "COMPLETED"
    assert redis_conn.hget(RQJob.key_for(rq_child), "test_mark") == b"deferred-copy"
    assert redis_conn.hget(RQJob.key_for(rq_child), "status") == b"finished"


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def test_real_workers_run_a_child_of_two_parents_ending_together_once(redis_url, start_worker):
    # Given two real simple workers; parent A has many other dependents (each also waiting for Z,
    # which no worker serves), so releasing A's dependents takes a while; parent B ends a moment
    # after A; child C waits for both (a release one round trip after each success ran C twice)
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    z = Queue("high", connection=connection, serializer=JSONSerializer).enqueue("time.sleep", 0, job_id="Z")
    for n in (1, 2):
        start_worker("--simple", "--queues", "default", "--name", f"race-{n}")
    runs = []
    for trial in range(3):
        end = time.time() + 3.0
        a = queue.enqueue(f"{THIS_MODULE}.sleep_until", end, job_id=f"A{trial}")
        b = queue.enqueue(f"{THIS_MODULE}.sleep_until", end + 0.03, job_id=f"B{trial}")
        for i in range(400):
            queue.enqueue("time.sleep", 0, job_id=f"F{trial}-{i}", depends_on=[a, z])
        c = queue.enqueue("time.sleep", 0, job_id=f"C{trial}", depends_on=[a, b])
        wait_until(lambda c=c: c.get_status(refresh=True) == "finished", timeout=30)
        time.sleep(1.0)  # a second run of C would start within this
        runs.append(len(c.results()))

    # Then C ran once each time
    assert runs == [1, 1, 1], runs
