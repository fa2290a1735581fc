"""The stores a benchmark runs on: SQLite files, and databases on a PostgreSQL server the bench
starts itself, so every figure can be measured on both in one run.

PostgreSQL stores of a given size are loaded from the same generated SQLite store
(``bench/storedb.py``) with COPY, the jobs table's secondary indexes dropped for the load and
re-created with their own definitions, then ``VACUUM ANALYZE`` (what autovacuum would do soon after
such a load; done at once so that it does not run in the middle of a measurement).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import bindparam, create_engine, func, pool, select

from backend.dev.postgres_server import PostgresServer, PostgresUnavailable
from backend.store.engine import migrate
from backend.store.models import Job
from bench.common import Stack, Workdir

SQLITE, POSTGRESQL = "SQLite", "PostgreSQL"

#: The test server's shortcuts (fsync, synchronous_commit and full_page_writes off) put back to
#: PostgreSQL's defaults: a benchmark measures what a deployment runs. A WAL flush costs ~0.1 ms on
#: this machine's disk (pg_test_fsync); SQLite's WAL with synchronous=NORMAL does not flush per commit.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


PASSWORD = secrets.token_hex(16)


@dataclass
class Postgres:
    """The bench's PostgreSQL server; ``database()`` creates a fresh empty database on it."""

    server: PostgresServer
    version: str

    def database(self) -> str:
        """The URL of a new empty database, with the password (the API refuses a short or missing one
        outside development; the server trusts loopback, so it is carried, not checked)."""
        url = self.server.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)

    def stop(self) -> None:
        self.server.close()


def start_postgres(log=print) -> Postgres | None:
    """A PostgreSQL server with durable commits, or None (saying why) when it cannot run. Its
    directory is its own temporary one: the postgres user it runs as cannot enter the bench's."""
    try:
        server = PostgresServer.launch(max_connections=200)
    except PostgresUnavailable as exc:
        log(f"PostgreSQL figures skipped: {exc}")
        return None
    server.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
    for name, value in DURABLE.items():
        server.execute(f"ALTER SYSTEM SET {name} = {value}")
    server.execute("SELECT pg_reload_conf()")
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in DURABLE}
    if settings != DURABLE:
        raise RuntimeError(f"PostgreSQL kept {settings} after ALTER SYSTEM")
    return Postgres(server, version)


@contextlib.contextmanager
def store_stacks(workdir: Workdir, name: str, pg: Postgres | None, **extra_env: str) -> Iterator[dict[str, Stack]]:
    """The API on a fresh SQLite file and, when ``pg`` runs, on a fresh PostgreSQL database (each
    with its own Redis), keyed ``SQLITE`` / ``POSTGRESQL``; stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        stacks = {SQLITE: stack.enter_context(Stack(workdir, name, **extra_env))}
        if pg is not None:
            url = pg.database()
            stacks[POSTGRESQL] = stack.enter_context(Stack(workdir, f"{name}-pg", database_url=url, **extra_env))
        yield stacks


def _libpq(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def load_from_sqlite(sqlite_path: Path, url: str, *, log=print) -> None:
    """Migrate the PostgreSQL database at ``url`` and COPY the SQLite store's jobs, their kwargs
    index and the counts into it."""
    import psycopg

    started = time.monotonic()
    migrate(url)
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        columns = [row[1] for row in source.execute("PRAGMA table_info(jobs)")]
        with psycopg.connect(_libpq(url)) as conn:
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('jobs', 'job_kwargs') "
                "AND indexname NOT IN ('jobs_pkey', 'job_kwargs_pkey')"
            ).fetchall()
            for name, _definition in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            names = ", ".join(columns)
            with conn.cursor().copy(f"COPY jobs ({names}) FROM STDIN") as copy:
                for row in source.execute(f"SELECT {names} FROM jobs ORDER BY rowid"):
                    copy.write_row(row)
            # The search's kwargs index (the FTS table is SQLite's own; PostgreSQL's trigram index is built below).
            with conn.cursor().copy("COPY job_kwargs (job_id, owner, name, value, created_at) FROM STDIN") as copy:
                for row in source.execute("SELECT job_id, owner, name, value, created_at FROM job_kwargs"):
                    copy.write_row(row)
            loaded = time.monotonic()
            for _name, definition in indexes:
                conn.execute(definition)
            with conn.cursor().copy("COPY job_counts (task, status, count) FROM STDIN") as copy:
                for row in source.execute("SELECT task, status, count FROM job_counts"):
                    copy.write_row(row)
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    finally:
        source.close()
    log(
        f"loaded {sqlite_path.name} into PostgreSQL in {time.monotonic() - started:.1f} s "
        f"(COPY {loaded - started:.1f} s, then indexes and VACUUM ANALYZE)"
    )


def completed_span(url: str, ids: list[str]) -> tuple[float, float, int]:
    """(first started_at, last updated_at, completed count) of the jobs ``ids`` in the store at ``url``."""
    engine = create_engine(url, poolclass=pool.NullPool)
    query = select(func.min(Job.started_at), func.max(Job.updated_at), func.count()).where(
        Job.status == "COMPLETED", Job.id.in_(bindparam("ids", expanding=True))
    )
    first, last, done = float("inf"), 0.0, 0
    try:
        with engine.connect() as conn:
            for i in range(0, len(ids), 500):
                low, high, count = conn.execute(query, {"ids": ids[i : i + 500]}).one()
                if count:
                    first, last, done = min(first, _ts(low)), max(last, _ts(high)), done + count
    finally:
        engine.dispose()
    return first, last, done


def _ts(moment: datetime) -> float:
    return moment.timestamp()  # UTCDateTime gives aware UTC datetimes on both stores
