"""The PostgreSQL pool's ping (backend/store/engine.py, ``ping_when_idle``): a connection back in
the pool for a while is checked before use and replaced when its server process is gone; one
handed back a moment ago goes out as it is, since a ping before every checkout was one more round
trip per request."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from backend.store.engine import PING_AFTER_IDLE_SECONDS, make_engine


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


@pytest.fixture
def engine(postgres_url):
    # One pooled connection, so that every checkout below gets the same one back.
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def test_a_connection_idle_in_the_pool_whose_server_process_ended_is_replaced_before_use(engine, postgres_server):
    # Given a pooled connection whose server process an administrator ends while it is idle
    pid = _backend_pid(engine)
    postgres_server.execute(f"SELECT pg_terminate_backend({pid})")
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
    # When it is checked out after longer than the ping's threshold, Then the statement is served,
    # by a new server process
    assert _backend_pid(engine) != pid


def test_a_connection_handed_back_a_moment_ago_is_used_without_a_ping(engine, postgres_server):
    # Given a pooled connection just handed back, whose server process then ends
    pid = _backend_pid(engine)
    postgres_server.execute(f"SELECT pg_terminate_backend({pid})")
    # When it is checked out at once, Then no ping went first: the statement meets the closed
    # connection (the API answers that 503 with Retry-After, tests/test_pg_outage.py)
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    # And the pool, invalidated by that error, serves the next checkout on a new connection
    assert _backend_pid(engine) != pid
