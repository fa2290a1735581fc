"""``python -m backend copy-store``: the whole store copied into an empty database, verified, and
refused into one that holds rows (PostgreSQL tests skip when it is not installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import Engine, event

from backend.app import create_app, stop_background
from backend.store.copy import CopyError, copy_store
from backend.store.engine import make_engine
from backend.store.models import Base
from tests.conftest import ROOT
from tests.helpers import submit, submit_add


def _fill(client) -> tuple[list[str], str]:
    """Jobs, a batch, a dependency, a schedule run once and a cancel, all through the API; the
    jobs' ids and the schedule's."""
    first = submit_add(client)
    child = submit_add(client, depends_on=[first["job_id"]])
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}, {"args": [2, 2]}]})
    assert batch.status_code == 202, batch.get_json()
    schedule = client.post(
        "/scheduled-jobs", json={"name": "nightly", "task": "add", "cron": "*/5 * * * *", "args": [1, 2]}
    )
    assert schedule.status_code == 201, schedule.get_json()
    fired = client.post(f"/scheduled-jobs/{schedule.get_json()['id']}/run", json={})
    assert fired.status_code == 202, fired.get_json()
    cancelled = submit(client, "sleep", args=[60, 1])
    assert client.post(f"/jobs/{cancelled['job_id']}/cancel", json={}).status_code == 200
    job_ids = [first["job_id"], child["job_id"], *batch.get_json()["job_ids"], cancelled["job_id"]]
    return job_ids, schedule.get_json()["id"]


def _rows(url: str) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, so two stores compare whatever order they return rows in."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted((tuple(row) for row in connection.execute(table.select())), key=repr)
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _copy_store(source: str, target: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)  # copy-store needs the two stores alone
    return subprocess.run(
        [sys.executable, "-m", "backend", "copy-store", "--from", source, "--to", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copies_and_refuses_a_second_time(client, settings, target: str) -> None:
    # Given a SQLite store filled through the API
    job_ids, schedule_id = _fill(client)
    source = settings["DATABASE_URL"]
    # When copy-store copies it into an empty database
    done = _copy_store(source, target)
    # Then it succeeds, prints each table's count, and every table holds the same rows
    assert done.returncode == 0, done.stderr
    copied = _rows(source)
    assert _rows(target) == copied
    assert copied["jobs"] and copied["job_dependencies"] and copied["batches"] and copied["scheduled_jobs"]
    assert copied["job_count_deltas"]  # the count deltas not yet rolled up (migration 0006) go too
    lines = done.stdout.splitlines()
    assert lines[-1] == f"copied {sum(map(len, copied.values()))} rows, counts verified"
    assert {line.split(": ")[0] for line in lines[:-1]} == set(copied)
    # And the API on the copy answers every job as the source does
    copy_app = create_app(test_config={**settings, "DATABASE_URL": target})
    try:
        on_copy = copy_app.test_client()
        for job_id in job_ids:
            assert on_copy.get(f"/jobs/{job_id}").get_json() == client.get(f"/jobs/{job_id}").get_json()
        # And a new schedule firing (an autoincrement id) does not collide with the copied one
        assert on_copy.post(f"/scheduled-jobs/{schedule_id}/run", json={}).status_code == 202
        submit_add(on_copy)
    finally:
        stop_background(copy_app)
    # When it is run again into the now non-empty target
    before = _rows(target)
    again = _copy_store(source, target)
    # Then it is refused with one line naming a table, and the target is unchanged
    assert again.returncode == 1
    assert "the target is not empty (table batches has rows)" in again.stderr, again.stderr
    assert _rows(target) == before


def test_a_sqlite_store_copies_into_postgresql_and_a_second_copy_is_refused(client, settings, postgres_url):
    _copies_and_refuses_a_second_time(client, settings, postgres_url)


def test_a_sqlite_store_copies_into_another_sqlite_file(client, settings, tmp_path):
    _copies_and_refuses_a_second_time(client, settings, f"sqlite:///{tmp_path / 'copy.db'}")


def test_a_source_behind_head_is_refused_with_a_clear_message(tmp_path):
    # Given an empty SQLite file (no schema at all); When it is copied
    done = _copy_store(f"sqlite:///{tmp_path / 'empty.db'}", f"sqlite:///{tmp_path / 'target.db'}")
    # Then the copy is refused naming what to run
    assert done.returncode == 1
    assert "run python -m backend migrate on it first" in done.stderr, done.stderr


def test_credentials_are_masked_when_the_target_is_unreachable(tmp_path, client, settings):
    # Given a filled store and a PostgreSQL URL with a password nobody listens on
    _fill(client)
    done = _copy_store(settings["DATABASE_URL"], "postgresql+psycopg://app:s3cret@127.0.0.1:1/jobs")
    # Then the command fails in one line without the password
    assert done.returncode == 1
    assert "s3cret" not in done.stderr and "copy-store failed" in done.stderr, done.stderr


def test_rows_are_copied_in_batches_smaller_than_a_table(client, settings, tmp_path):
    # Given a store whose jobs table holds more rows than one batch
    _fill(client)
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    # When it is copied two rows at a time
    seen = []
    total = copy_store(settings["DATABASE_URL"], target, batch_size=2, on_table=lambda name, count: seen.append(name))
    # Then every row arrives, and every table is reported once
    copied = _rows(settings["DATABASE_URL"])
    assert _rows(target) == copied and total == sum(map(len, copied.values()))
    assert sorted(seen) == sorted(copied)


def test_a_source_written_to_during_the_copy_is_reported_and_leaves_the_target_empty(client, settings, tmp_path):
    # Given a filled store whose API is still taking jobs while it is copied: a job is submitted
    # just as the copy starts writing the jobs table (as a live API would, any time)
    _fill(client)
    source = settings["DATABASE_URL"]
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    submitted = []

    def submit_during_the_copy(conn, _cursor, statement, *_args) -> None:
        if not submitted and statement.startswith("INSERT INTO jobs (") and str(conn.engine.url) == target:
            submitted.append(submit_add(client)["job_id"])

    event.listen(Engine, "before_cursor_execute", submit_during_the_copy)
    try:
        # When the store is copied
        with pytest.raises(CopyError) as refused:
            copy_store(source, target)
    finally:
        event.remove(Engine, "before_cursor_execute", submit_during_the_copy)
    # Then the copy fails naming the table whose counts differ and what to do
    assert submitted
    message = str(refused.value)
    jobs = re.search(r"\bjobs \((\d+) in the source, (\d+) ", message)
    assert message.startswith("row counts differ after the copy: ") and jobs, message
    assert int(jobs[1]) == int(jobs[2]) + 1, message
    assert "stop every API, scheduler and worker" in message and "the target was left empty" in message
    # And the target holds no rows, so once the writers are stopped the same copy simply runs again
    assert not any(_rows(target).values())
    total = copy_store(source, target)
    assert _rows(target) == _rows(source) and total == sum(map(len, _rows(source).values()))
