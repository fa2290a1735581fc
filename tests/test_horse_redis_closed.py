"""Connections made ahead (backend/runner/horse_redis.py): one that the server closed while it
waited (a Redis restart, a ``timeout``, CLIENT KILL) before a work-horse got it still serves."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from backend.runner.horse_redis import ConnectAhead

pytestmark = pytest.mark.one_pass(reason="the worker runtime; no store involved")


def noop() -> int:
    return 1


class KillingAhead(ConnectAhead, Worker):
    """Each connection made ahead is closed by the server before the horse gets it."""

    admin: Redis

    def _connection_ahead(self):
        connection = super()._connection_ahead()
        if connection is not None:
            connection.send_command("CLIENT", "ID")
            client_id = connection.read_response()
            self.admin.execute_command("CLIENT", "KILL", "ID", client_id)
        return connection


def test_a_work_horse_whose_connection_made_ahead_was_closed_by_the_server_still_runs_its_job(redis_url):
    connection = Redis.from_url(redis_url)
    queue = Queue("ahead-killed", connection=connection, serializer=JSONSerializer)
    jobs = [queue.enqueue(f"{__name__}.noop") for _ in range(6)]
    worker = KillingAhead([queue], connection=connection, serializer=JSONSerializer)
    worker.admin = Redis.from_url(redis_url)
    worker.work(burst=True)
    assert [job.get_status() for job in jobs] == ["finished"] * 6
