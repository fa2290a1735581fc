"""The submission's lean paths (issue 17): a new job's Redis writes sent as one MULTI ... EXEC
without redis-py's pipeline (``rq_hashes.transaction``), and SQLite's job writer holding its
connection from one batch to the next (``job_inserts.SQLiteJobWriter``)."""

from __future__ import annotations

import pytest
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError

from backend.api.context import services
from backend.broker import rq_hashes
from backend.broker.queues import QueueAdapter
from backend.store import job_inserts
from tests.conftest import STORE
from tests.helpers import submit, submit_add


def _enqueue(adapter: QueueAdapter, job_id: str) -> str:
    return adapter.enqueue(
        job_id=job_id,
        attempt=1,
        func_path="backend.tasks.examples.add",
        args=[1, 2],
        kwargs={},
        priority="default",
        timeout=60,
        owner="alice",
        fresh=True,
    )


def test_a_new_jobs_writes_are_one_round_trip(redis_conn, monkeypatch):
    # Given an adapter, its pool warm
    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    _enqueue(adapter, "job_warm")
    sends = []
    original = AbstractConnection.send_packed_command
    monkeypatch.setattr(
        AbstractConnection,
        "send_packed_command",
        lambda c, cmd, check_health=True: sends.append(cmd) or original(c, cmd, check_health),
    )
    # When a new job's first attempt is enqueued
    rq_id = _enqueue(adapter, "job_one")
    # Then Redis got one write: MULTI, the job's writes, EXEC
    assert len(sends) == 1
    packed = b"".join(sends[0]).upper()
    assert packed.startswith(b"*1\r\n$5\r\nMULTI\r\n") and packed.endswith(b"*1\r\n$4\r\nEXEC\r\n")
    # And they all landed: the hash, the push, fair share's index
    assert redis_conn.hget(f"rq:job:{rq_id}", "status") == b"queued"
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [b"job_warm-1", rq_id.encode()]
    assert redis_conn.hget("jobservice:fair:default:index", rq_id) == b"alice"


def test_a_command_refused_as_exec_runs_it_is_raised_and_the_connection_stays_in_step(redis_conn):
    # Given the queue's key holding a string (RPUSH then fails with WRONGTYPE when EXEC runs it)
    redis_conn.set("rq:queue:default", "not a list")
    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    # When a new job is enqueued
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        _enqueue(adapter, "job_refused")
    # Then the next command on the pool reads its own reply (nothing left unread)
    assert redis_conn.get("rq:queue:default") == b"not a list"
    assert redis_conn.ping() is True


def test_a_command_refused_as_queued_aborts_the_transaction(redis_conn):
    # Given writes of which one is refused as MULTI queues it (a wrong number of arguments)
    writes = rq_hashes.Writes()
    writes.set("before", 1)
    writes.execute_command("RPUSH", "just-a-key")
    writes.set("after", 1)
    # When they are sent
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        rq_hashes.transaction(redis_conn, writes)
    # Then EXEC ran none of them, and the connection is in step for the next command
    assert redis_conn.mget("before", "after") == [None, None]
    assert redis_conn.ping() is True


@pytest.mark.skipif(STORE != "sqlite", reason="SQLite's job writer")
def test_sqlites_job_writer_writes_every_batch_on_the_connection_it_holds(app):
    # Given the API on SQLite, Redis answering
    client = app.test_client()
    submit_add(client)
    writer = job_inserts._writer_of(services(app).engine)
    held = writer._held[1].driver_connection
    # When jobs are submitted, one of them refused (its idempotency key is taken)
    first = submit_add(client, idempotency_key="k")
    submit(client, "add", status=422, args=[3, 4], idempotency_key="k")
    second = submit_add(client)
    # Then each batch was written on that same connection, which is idle between batches
    assert writer._held[1].driver_connection is held and not held.in_transaction
    assert client.get(f"/jobs/{first['job_id']}").status_code == 200
    assert client.get(f"/jobs/{second['job_id']}").status_code == 200
