"""The SQLite job writer's held connection (backend/store/job_inserts.py): it blocks no checkpoint,
and it goes with its engine: a disposed engine leaves no descriptor on the store's file, however
many apps a process creates and disposes."""

from __future__ import annotations

import gc
import os
import sqlite3

import pytest
from sqlalchemy.engine import make_url

from backend.api.context import services
from backend.app import create_app
from tests.helpers import submit_add

pytestmark = pytest.mark.sqlite_only(reason="SQLite's held writer connection and its file")


def _open_fds_on(path: str) -> int:
    """This process's descriptors on ``path`` (its -wal and -shm files included)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(path):
                count += 1
        except OSError:
            pass
    return count


def test_the_held_connection_blocks_no_checkpoint_and_goes_with_the_engine(app, store_url):
    client = app.test_client()
    for _ in range(3):
        submit_add(client)
    path = make_url(store_url).database
    # A checkpoint from another connection is not blocked by the writer's idle held one
    other = sqlite3.connect(path)
    busy, _log, _done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    other.close()
    assert busy == 0
    # The engine disposed (a process shutting the store down): no connection to the file stays open
    services(app).engine.dispose()
    assert _open_fds_on(path) == 0


def test_apps_created_and_disposed_in_one_process_leak_no_descriptors(settings, store_url):
    path = make_url(store_url).database
    counts = []
    for _ in range(4):
        app = create_app(settings)
        submit_add(app.test_client())
        services(app).engine.dispose()
        del app
        gc.collect()
        counts.append(_open_fds_on(path))
    assert counts == [0, 0, 0, 0]
