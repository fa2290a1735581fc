"""A forking worker's work-horse gets its Redis connection connected ahead by its parent.

Issue 17 (T4, forking worker): redis-py's connect code, run for the first time in a freshly forked
work-horse, copied ~500 pages on write and cost ~2.5 ms of a no-op job's ~10 ms in the horse
(backend/runner/horse_redis.py). These tests pin what the change promises: the horse opens no
connection of its own, each horse still has a connection of its own (never one another process
uses), the parent keeps no copy of a horse's connection open, and redis-py's driver info is read
once per pool, not per connection.
"""

from __future__ import annotations

import os
import time

import pytest
from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.connection import Connection, SSLConnection
from rq import Queue, Worker
from rq.job import get_current_job
from rq.serializers import JSONSerializer

from backend.runner import horse_redis
from backend.runner.horse_redis import ConnectAhead

pytestmark = pytest.mark.one_pass(reason="the worker runtime; no store involved")

#: Sockets this process opened to Redis since it began (a forked horse starts again at 0).
_opened = {"pid": None, "count": 0}


class CountingConnection(Connection):
    """Counts the sockets this process opens to Redis."""

    def _connect(self):
        if _opened["pid"] != os.getpid():
            _opened.update(pid=os.getpid(), count=0)
        _opened["count"] += 1
        return super()._connect()


def horse_connections() -> list:
    """A job: how many sockets its work-horse opened, and the Redis client id of its connection."""
    opened = _opened["count"] if _opened["pid"] == os.getpid() else 0
    return [opened, get_current_job().connection.client_id()]


class ForkingWorker(ConnectAhead, Worker):
    """RQ's forking worker with the connection made ahead, and nothing else of ours."""


def _drain(redis_url: str, worker_class, jobs: int) -> list[list]:
    connection = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    queue = Queue(f"ahead-{worker_class.__name__}", connection=connection, serializer=JSONSerializer)
    enqueued = [queue.enqueue(f"{__name__}.horse_connections") for _ in range(jobs)]
    worker_class([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
    assert queue.finished_job_registry.count == jobs
    results = [job.return_value() for job in enqueued]
    connection.connection_pool.disconnect()  # this test's own (RQ's signal handlers keep the worker)
    return results


def test_a_work_horse_opens_no_redis_connection_of_its_own(redis_url):
    # Given RQ's own forking worker: each work-horse connects to Redis by itself
    assert [opened for opened, _ in _drain(redis_url, Worker, 2)] == [1, 1]

    # When the parent connects the horse's connection ahead
    results = _drain(redis_url, ForkingWorker, 3)

    # Then no horse opens one, and each runs its job on a connection of its own
    assert [opened for opened, _ in results] == [0, 0, 0]
    assert len({client_id for _, client_id in results}) == 3


def test_the_parent_keeps_no_copy_of_a_horses_connection_open_nor_spares_once_it_stopped(redis_url):
    observer = Redis.from_url(redis_url)
    before = {client["id"] for client in observer.client_list()}

    # Given the client ids of the connections four horses ran on (the parent made them ahead,
    # 1, 2, then 4 at once: three spares are left when the burst ends)
    horses = {client_id for _, client_id in _drain(redis_url, ForkingWorker, 4)}

    # Then once the horses exited and the worker stopped, Redis holds none of them, nor any spare
    # the parent made ahead: the parent closed its copies
    deadline = time.monotonic() + 5
    while (now := {client["id"] for client in observer.client_list()}) & horses or now - before:
        assert time.monotonic() < deadline, f"still open: {now & horses or now - before}"
        time.sleep(0.05)


def test_a_connection_made_ahead_keeps_working_in_the_child_after_the_parent_lets_go(redis_url):
    # Given a connection made ahead, a fork, and the parent closing its copy at once
    client = Redis.from_url(redis_url)
    ahead = horse_redis.prepare(client)
    assert ahead is not None
    read, write = os.pipe()
    go, ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # the horse
        try:
            horse_redis.adopt(client, ahead)
            os.read(go, 1)  # the parent has let go by now
            answer = client.ping() and client.connection_pool._created_connections == 1
            os.write(write, b"1" if answer else b"0")
        finally:
            os._exit(0)
    horse_redis.let_go(ahead)
    os.write(ready, b"x")

    # Then the child's commands go through on it (no shutdown reached it), on no other connection
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)


@pytest.mark.parametrize(
    "pool",
    [
        ConnectionPool(connection_class=SSLConnection),
        BlockingConnectionPool(),
    ],
    ids=["tls", "blocking-pool"],
)
def test_pools_that_do_more_per_connection_leave_the_horse_to_connect(pool):
    # TLS state and other pools' bookkeeping are not handed over: the horse connects as RQ's does
    assert horse_redis.prepare(Redis(connection_pool=pool)) is None


def test_redis_pys_driver_info_is_read_once_per_pool_not_per_connection(monkeypatch):
    pytest.importorskip("redis.driver_info", reason="redis-py < 7 reads it once at import")
    import redis.utils

    reads = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: reads.append(1) or real())

    # Given a pool whose connections each read it (the package's METADATA, parsed)
    pool = ConnectionPool(connection_class=Connection)
    for _ in range(2):
        pool.connection_class(**pool.connection_kwargs)
    assert len(reads) == 2

    # When it is read once for the pool
    horse_redis.read_driver_info_once(pool)
    reads.clear()

    # Then new connections carry it without reading it again
    connections = [pool.connection_class(**pool.connection_kwargs) for _ in range(3)]
    assert reads == []
    assert connections[0].driver_info.lib_version == real()
