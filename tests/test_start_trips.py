"""A job's start writes and its start check in one Redis round trip (backend/runner/start_trip.py).

RQ's ``prepare_job_execution`` sends one MULTI..EXEC as a job starts; the worker's start check
(the cancel fence and Redis' history, backend/broker/fences.py) was a script of its own round trip
after it. Ours queues the script last in RQ's MULTI. These tests count the round trips on a real
Redis, compare what Redis holds after ours with what it holds after RQ's method followed by the
lone check (a copy of RQ's method must not drift from it), and show the check's verdict from the
MULTI's reply the same as the lone check's, also when the script is not loaded in Redis.
"""

from __future__ import annotations

import hashlib
import inspect
import re

import pytest
from redis import ConnectionPool, Redis
from redis.exceptions import NoScriptError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker.base import BaseWorker

from backend.broker import fences
from backend.broker.queues import fence_key
from backend.runner.forking import JobServiceWorker
from backend.runner.reporting import ReportingMixin
from backend.runner.start_trip import OneTripStart
from backend.runner.worker import JobServiceSimpleWorker
from tests.test_success_trips import CountingConnection, _snapshot

#: The RQ method ``OneTripStart.prepare_job_execution`` copies, as this test last read it: a
#: different hash means RQ changed it, and the copy must be read against RQ's new one (then the
#: hash updated). The state comparison below checks the copy's writes whatever the hash says.
RQ_PREPARE_JOB_EXECUTION_SHA256 = "d08dd32962e3f82af386c1823b4e3fda363425070b640c0485748a9e71ae61cd"  # rq 3.0.0


@pytest.fixture(autouse=True)
def _no_refusal_met(monkeypatch):
    """Each test as a process that has not met a refusal of the script (an earlier test of the
    session may have: a Redis refusing INFO in scripts), which would send RQ's own start."""
    monkeypatch.setattr(fences, "_refused", [])


class Verdicts:
    """Records each job's start check: the verdict, and the round trips its start cost."""

    seen: dict[str, fences.StartCheck]
    trips: list[int]
    #: What Redis held right after each job's start writes and check (before the task ran).
    started: dict[str, dict]
    snapshots = True

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        before = CountingConnection.sends
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        self.seen[job.id] = self.verdict(job)
        self.trips.append(CountingConnection.sends - before)
        if self.snapshots:
            self.started[job.id] = _blank_history(_snapshot(self.connection))
        if self.seen[job.id] is fences.StartCheck.FENCED:
            raise RuntimeError("fenced")  # as ReportingMixin refuses it: the task does not run


class RQsStart(Verdicts, SimpleWorker):
    """RQ's own start writes, then the lone check (as before)."""

    def verdict(self, job) -> fences.StartCheck:
        return fences.start_check(self.connection, job.id, job.created_at)


class OneTripStartWorker(Verdicts, OneTripStart, SimpleWorker):
    """Ours: the check in RQ's MULTI, its verdict read from the reply."""

    def verdict(self, job) -> fences.StartCheck:
        if self.start_checked is None:  # RQ's own method ran: the lone check, as ReportingMixin makes it
            return fences.start_check(self.connection, job.id, job.created_at)
        return fences.start_check_from(self.connection, self.start_checked, job.id, job.created_at)


def _worker(worker_class, connection: Redis, queue: Queue, name: str):
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer, name=name)
    worker.seen, worker.trips, worker.started = {}, [], {}
    return worker


def _counted(redis_url: str) -> Redis:
    return Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))


def _scenario(connection: Redis, worker_class, *, lrem: bool = False):
    """Three jobs, the second fenced (cancelled), drained by one burst worker: Redis after, the
    worker (its verdicts, and Redis right after each start)."""
    connection.flushall()
    connection.script_flush()
    fences.note_history(connection)  # a new Redis's history, noted as the API notes it at its start
    connection.script_flush()
    queue = Queue("same", connection=connection, serializer=JSONSerializer)
    for n in range(3):
        queue.enqueue("tests.fixtures.add", n, 1, job_id=f"job-{n}")
    connection.set(fence_key("job-1"), 1)
    for n in range(3):
        connection.expire(f"rq:job:job-{n}", 10_000)  # RQ's start PERSISTs the job's hash
    worker = _worker(worker_class, connection, queue, "w1")
    if lrem:  # RQ's intermediate list (a worker of one queue): its LREM is in the start's MULTI
        for n in range(3):
            connection.rpush(queue.intermediate_queue_key, f"job-{n}")
    worker.work(burst=True)
    return _blank_history(_snapshot(connection)), worker


#: The history's note carries its time and Redis' own replication id.
_NOTED = re.compile(rb"since|replid")


def _blank_history(held: dict) -> dict:
    kind, ttl, value = held.pop(fences.HISTORY_KEY.encode())
    held["history"] = (kind, ttl, {f: (b"*" if _NOTED.fullmatch(f) else v) for f, v in value.items()})
    return held


def _drop_time(held: dict) -> str:
    """``held`` as text, without what differs run to run: the worker's working time and when RQ's
    maintenance first saw an intermediate entry (by presence), RQ's random execution ids."""
    out = {}
    for key, (kind, ttl, value) in held.items():
        if kind == "hash" and str(key).startswith("b'rq:worker:"):
            value = {f: (b"*" if f == b"current_job_working_time" else v) for f, v in value.items()}
        if ":first_seen:" in str(key):  # when RQ's maintenance first saw the intermediate list's entry
            value = b"*"
        out[key] = (kind, ttl, value)
    return re.sub(r"[0-9a-f]{32}", "<execution>", repr(out))


def test_a_start_and_its_check_are_one_round_trip_not_two(redis_url):
    # Given the same jobs started by RQ's SimpleWorker with the lone check, and by ours
    connection = _counted(redis_url)
    trips = {}
    for worker_class in (RQsStart, OneTripStartWorker):
        connection.flushall()
        queue = Queue(f"trips-{worker_class.__name__}", connection=connection, serializer=JSONSerializer)
        for _ in range(10):
            queue.enqueue("tests.fixtures.add", 1, 2)
        worker = _worker(worker_class, connection, queue, worker_class.__name__)
        worker.work(burst=True)
        assert queue.finished_job_registry.count == 10
        trips[worker_class] = worker.trips

    # Then RQ's start is its MULTI..EXEC and the check's script; ours the one MULTI (after the
    # first start of the worker's connection, whose check may load the script)
    assert trips[RQsStart][1:] == [2] * 9
    assert trips[OneTripStartWorker][1:] == [1] * 9


def test_redis_holds_after_our_start_what_it_holds_after_rqs_and_the_check(redis_url):
    # Given the same jobs, one of them fenced, in a Redis whose scripts were flushed, drained by
    # RQ's start with the lone check and by ours
    connection = Redis.from_url(redis_url)
    rqs, rq_worker = _scenario(connection, RQsStart, lrem=True)
    ours, our_worker = _scenario(connection, OneTripStartWorker, lrem=True)
    our_verdicts = our_worker.seen

    # Then Redis holds the same right after each start (heartbeats and TTLs, the job's status,
    # worker and PERSIST, the intermediate list, the history noted at the first check), and at the
    # end (statuses, results, registries), and each check gave the same verdict: the fenced job did
    # not run, the others did
    assert [_drop_time(held) for held in our_worker.started.values()] == [
        _drop_time(held) for held in rq_worker.started.values()
    ]
    assert _drop_time(ours) == _drop_time(rqs)
    assert our_verdicts == rq_worker.seen
    assert our_verdicts["job-1"] is fences.StartCheck.FENCED
    assert {our_verdicts["job-0"], our_verdicts["job-2"]} == {fences.StartCheck.CLEAR}
    finished = Queue("same", connection=connection).finished_job_registry.get_job_ids()
    assert sorted(finished) == ["job-0", "job-2"]


def test_a_check_whose_script_redis_lost_is_made_alone_and_still_sees_the_fence(redis_url):
    # Given a worker that has checked a start (the script loaded), then a Redis that lost its
    # scripts (a restart) while a fenced job waits
    connection = Redis.from_url(redis_url)
    fences.note_history(connection)
    queue = Queue("lost", connection=connection, serializer=JSONSerializer)
    queue.enqueue("tests.fixtures.add", 1, 1, job_id="first")
    worker = _worker(OneTripStartWorker, connection, queue, "w-lost")
    worker.work(burst=True)
    connection.script_flush()
    queue.enqueue("tests.fixtures.add", 2, 2, job_id="fenced")
    connection.set(fence_key("fenced"), 1)

    # When it starts that job
    worker.work(burst=True)

    # Then the MULTI's check answered NOSCRIPT, the lone check saw the fence, and the job did not run
    assert isinstance(worker.start_checked, NoScriptError)
    assert worker.seen["fenced"] is fences.StartCheck.FENCED
    assert queue.finished_job_registry.get_job_ids() == ["first"]


def test_a_redis_user_denied_the_historys_key_still_starts_jobs_and_refuses_a_fenced_one(redis_url, redis_conn):
    # Given a Redis user allowed RQ's keys and the fences but not the history's key (Redis refuses
    # the MULTI as the script is queued: nothing of it applied), jobs waiting, the second fenced
    redis_conn.acl_setuser(
        "no-history", enabled=True, passwords=["+no-history-pw"], keys=["rq:*", "jobservice:fenced:*"],
        channels=["*"], commands=["+@all"], reset_keys=True,
    )  # fmt: skip
    try:
        limited = Redis.from_url(redis_url.replace("redis://", "redis://no-history:no-history-pw@"))
        queue = Queue("denied", connection=limited, serializer=JSONSerializer)
        for n in range(3):
            queue.enqueue("tests.fixtures.add", n, 1, job_id=f"denied-{n}")
        limited.set(fence_key("denied-1"), 1)

        # When one of our workers, connected as that user, drains them
        worker = _worker(OneTripStartWorker, limited, queue, "w-denied")
        worker.snapshots = False  # the user may not list every key
        worker.work(burst=True)
    finally:
        redis_conn.acl_deluser("no-history")

    # Then each job got RQ's own start and the lone check (the fence alone): the fenced job was
    # refused, the others ran (before: every start raised NOPERM, and no job ran)
    assert worker.seen == {
        "denied-0": fences.StartCheck.CLEAR,
        "denied-1": fences.StartCheck.FENCED,
        "denied-2": fences.StartCheck.CLEAR,
    }
    finished = Queue("denied", connection=redis_conn).finished_job_registry.get_job_ids()
    assert sorted(finished) == ["denied-0", "denied-2"]
    assert fences.scripts_refused()


def test_both_of_our_workers_start_jobs_through_it():
    for worker_class in (JobServiceSimpleWorker, JobServiceWorker):
        # Before RQ's classes (whose prepare_job_execution it stands for), after ReportingMixin
        mro = worker_class.__mro__
        assert mro.index(ReportingMixin) < mro.index(OneTripStart) < mro.index(BaseWorker), worker_class


def test_the_copied_rq_method_is_the_one_the_copy_was_read_against():
    # ``OneTripStart.prepare_job_execution`` copies RQ's body: when RQ's changes, read both again.
    source = inspect.getsource(BaseWorker.prepare_job_execution)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == RQ_PREPARE_JOB_EXECUTION_SHA256, "RQ's prepare_job_execution changed: read start_trip.py's copy"


def test_a_redis_full_for_a_moment_does_not_turn_the_history_check_off_for_good(tmp_path):
    """A refusal that passes (Redis at its maxmemory refuses every script that may write: OOM)
    was taken as a Redis that refuses the script for good: the process then checked the fence
    alone and sent RQ's own start for every later job, until it was restarted. Only a refusal
    that lasts (ACL, scripts or INFO in them disallowed) turns the script off."""
    from backend.dev.redis_server import EmbeddedRedis

    server = EmbeddedRedis.start(data_dir=tmp_path / "redis", appendonly=False)
    try:
        connection = Redis.from_url(server.url)
        connection.set(fence_key("fenced-1"), 1)
        # Given a Redis full for a moment (noeviction: writes and scripts that may write refused)
        connection.config_set("maxmemory-policy", "noeviction")
        connection.config_set("maxmemory", 1)
        # When jobs start meanwhile, the fence is still obeyed
        assert fences.start_check(connection, "fenced-1", None) is fences.StartCheck.FENCED
        assert fences.start_check(connection, "free-1", None) is fences.StartCheck.CLEAR
        # Then once it has room again, the script runs again (it notes Redis' history)
        connection.config_set("maxmemory", 0)
        assert not fences.scripts_refused()
        fences.start_check(connection, "free-2", None)
        assert connection.exists(fences.HISTORY_KEY)
    finally:
        server.stop()
