"""What the PostgreSQL scenarios read from the database and its server, beside the API: the
server log since a mark (``deadlock detected`` lines), a ``GROUP BY`` over the jobs to hold the
maintained counts against, and the schema's Alembic revision.

Read with psycopg directly, not through the API: these are the checks of what the API says.
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic.script import ScriptDirectory

from backend.dev.postgres_server import PostgresServer
from backend.store.engine import alembic_config

#: What PostgreSQL writes to its log for each deadlock it breaks (the victim's ERROR line).
DEADLOCK = "deadlock detected"


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@dataclass
class LogMark:
    """A place in the server's log: what a scenario reads is only what was written after it, so
    another test's lines on a shared server never count."""

    server: PostgresServer
    offset: int

    @classmethod
    def now(cls, server: PostgresServer) -> LogMark:
        path = server.log_path
        return cls(server, path.stat().st_size if path.exists() else 0)

    def lines(self) -> list[str]:
        with open(self.server.log_path, "rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace").splitlines()

    def deadlocks(self) -> list[str]:
        """Each deadlock PostgreSQL logged, with the lines that follow it (DETAIL: the two
        processes' statements; HINT, CONTEXT, STATEMENT): what is needed to find the cause."""
        lines, found = self.lines(), []
        for i, line in enumerate(lines):
            if DEADLOCK in line:
                after = [
                    more
                    for more in lines[i + 1 : i + 12]
                    if more.startswith(("\t", " "))
                    or any(k in more for k in ("DETAIL:", "HINT:", "CONTEXT:", "STATEMENT:"))
                ]
                found.append("\n".join([line, *after]))
        return found


def _query(server: PostgresServer, database: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(server.dsn(database), autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def status_counts(server: PostgresServer, database: str) -> dict[str, int]:
    """status -> jobs, counted row by row (what the maintained counters must equal)."""
    return dict(_query(server, database, "SELECT status, count(*) FROM jobs GROUP BY status"))


def task_status_counts(server: PostgresServer, database: str) -> dict[tuple[str, str], int]:
    """(task, status) -> jobs, counted row by row."""
    rows = _query(server, database, "SELECT task, status, count(*) FROM jobs GROUP BY task, status")
    return {(task, status): count for task, status, count in rows}


def alembic_revisions(server: PostgresServer, database: str) -> list[str]:
    """The revisions in ``alembic_version`` (one at head; none when the table is missing)."""
    exists = _query(server, database, "SELECT to_regclass('alembic_version') IS NOT NULL")[0][0]
    if not exists:
        return []
    return [row[0] for row in _query(server, database, "SELECT version_num FROM alembic_version")]
