"""The store on a real PostgreSQL (tests/postgres.py starts one; skipped when it is not installed),
and migrations started by several processes at once on both databases."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from backend.app import create_app
from backend.store.engine import alembic_config, make_engine, migrate
from backend.store.models import Base
from tests.conftest import ROOT
from tests.test_migrations import _not_dialect_specific as not_dialect_specific

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_fresh_postgresql_database_migrates_to_head_and_matches_the_models(postgres_url):
    # Given an empty database; When it is migrated (twice: the second finds nothing to do)
    migrate(postgres_url)
    migrate(postgres_url)
    # Then its schema is at head and equals the models'
    assert _revision(postgres_url) == HEAD
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": not_dialect_specific}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_migration_0004_marks_the_parents_of_existing_dependencies(store, tmp_path, request):
    # Given a database at 0003 holding a job b that waits for a job a (0004 failed here on
    # PostgreSQL: `SET has_dependants = 1` on a boolean column)
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"sqlite:///{tmp_path / 'j.db'}"
    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    job = {"owner": "o", "task": "t", "status": "PENDING", "priority": "default", "progress": 0, "attempt": 0,
           "retry_count": 0, "max_retries": 0, "timeout": 60, "now": "2026-01-01 00:00:00"}  # fmt: skip
    with engine.begin() as connection:
        for job_id in ("a", "b", "c"):
            connection.execute(
                text(
                    "INSERT INTO jobs (id, owner, task, status, priority, args, kwargs, progress, created_at,"
                    " updated_at, attempt, retry_count, max_retries, timeout) VALUES (:id, :owner, :task,"
                    " :status, :priority, '[]', '{}', :progress, :now, :now, :attempt, :retry_count,"
                    " :max_retries, :timeout)"
                ),
                {**job, "id": job_id},
            )
        connection.execute(text("INSERT INTO job_dependencies (job_id, depends_on_id) VALUES ('b', 'a')"))
    # When it is migrated to head
    migrate(url)
    # Then a, and only a, has dependants
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, has_dependants FROM jobs ORDER BY id")).all()
    engine.dispose()
    assert [(job_id, bool(flag)) for job_id, flag in rows] == [("a", True), ("b", False), ("c", False)]


def test_the_engine_prepares_no_statement_on_the_server(postgres_url):
    # pgbouncer in transaction mode: a prepared statement would live on another server connection.
    engine = make_engine(postgres_url, pool_size=2, max_overflow=0)
    assert engine.pool.size() == 2
    with engine.connect() as connection:
        assert connection.connection.driver_connection.prepare_threshold is None
        for _ in range(10):
            connection.exec_driver_sql("SELECT 1").scalar()
        assert connection.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
    engine.dispose()


def _migrate_at_once(url: str, processes: int = 5) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)  # migrate needs the store alone
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "backend", "migrate"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    done = []
    for process in started:
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def test_five_processes_migrating_an_empty_postgresql_database_at_once_all_succeed(postgres_url):
    # Given an empty database; When five `python -m backend migrate` start at once (F15 in small)
    results = _migrate_at_once(postgres_url)
    # Then every one exits 0 and the schema is at head
    assert [r.returncode for r in results] == [0] * 5, [r.stderr[-2000:] for r in results if r.returncode]
    assert _revision(postgres_url) == HEAD


def test_five_processes_migrating_an_empty_sqlite_file_at_once_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    results = _migrate_at_once(url)
    assert [r.returncode for r in results] == [0] * 5, [r.stderr[-2000:] for r in results if r.returncode]
    assert _revision(url) == HEAD


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_migrate_on_start_off_leaves_an_empty_database_untouched(store, settings, tmp_path, request):
    # Given an empty database and MIGRATE_ON_START=0
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"sqlite:///{tmp_path / 'e.db'}"
    settings.update(DATABASE_URL=url, MIGRATE_ON_START=0)
    # When the API starts, Then it refuses, saying what to run
    with pytest.raises(RuntimeError, match=r"not at head .*python -m backend migrate"):
        create_app(test_config=settings)
    # And it created no table
    assert _tables(url) == set()


def test_a_job_submitted_on_postgresql_reads_back(settings, postgres_url):
    # Given the API on PostgreSQL; When a job is submitted
    settings["DATABASE_URL"] = postgres_url
    client = create_app(test_config=settings).test_client()
    answer = client.post("/tasks/add", json={"args": [2, 3]})
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job_id"]
    # Then GET reads it back from PostgreSQL
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["job_id"] == job_id and job["task"] == "add", job
    assert job["status"] in ("PENDING", "QUEUED")
