"""Compacting the store: SQLite's VACUUM followed by a rebuild of the q index.

Why: ``jobs_fts`` (migration 0013) is an external-content FTS5 table keyed on jobs' implicit rowid,
and a VACUUM may renumber the rowids of a table without an INTEGER PRIMARY KEY; the index would then
point q at the wrong jobs. PostgreSQL needs none of it: autovacuum reclaims space in place.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from backend.store.job_search import FTS_ROWS, FTS_TABLE


def vacuum(engine: Engine) -> bool:
    """SQLite: VACUUM the database file, then rebuild ``jobs_fts`` from jobs; True when it ran.

    PostgreSQL: nothing to do (False).
    """
    if engine.dialect.name != "sqlite":
        return False
    # VACUUM cannot run inside a transaction: the connection autocommits.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM")
        # The index read again from jobs' rows at their (possibly new) rowids: the rows its triggers
        # keep, those with text of their own (a 'rebuild' would index every job).
        connection.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('delete-all')")
        connection.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}(rowid, task, error, progress_message)"
            f" SELECT rowid, task, error, progress_message FROM jobs WHERE {FTS_ROWS}"
        )
    return True
