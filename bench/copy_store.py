"""g. copy-store: the time ``python -m backend copy-store`` takes to move a realistic SQLite store
into an empty PostgreSQL database (the move DEPLOYMENT_GUIDE describes), and the rows per second.

The store is the generator's (``bench/storedb.py``: ended jobs, their counts rolled up) plus an
attempt row per attempt each job made (failed jobs made 4, as their ``attempt`` says); the real
command runs in a subprocess, as an operator runs it. Why measured: an operator plans the
downtime of the move from this figure.

    python -m bench --only g                  # within make bench (needs PostgreSQL)
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

from bench import storedb
from bench.common import PY, ROOT, Results, Workdir, emit, table
from bench.stores import Postgres

ATTEMPTS_SQL = """
INSERT INTO attempts (job_id, attempt, worker, started_at, ended_at, outcome, error)
SELECT jobs.id, n.k, jobs.worker, jobs.started_at, jobs.completed_at,
       CASE WHEN n.k < jobs.attempt THEN 'FAILED' ELSE jobs.status END,
       CASE WHEN n.k < jobs.attempt OR jobs.status = 'FAILED' THEN jobs.error END
FROM jobs JOIN (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) AS n
  ON n.k <= jobs.attempt
ORDER BY jobs.rowid, n.k
"""


def build(path, jobs: int) -> dict[str, int]:
    """A store of ``jobs`` ended jobs with their attempts; each table's rows."""
    storedb.build(path, jobs, log=lambda m: emit(f"  {m}"))
    conn = sqlite3.connect(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.execute(ATTEMPTS_SQL)
        conn.commit()
        names = sorted(tables - {"alembic_version"})
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


def run(workdir: Workdir, results: Results, *, jobs: int, pg: Postgres | None) -> None:
    if pg is None:
        emit("copy-store is measured into PostgreSQL, which is not running: skipped")
        return
    source = workdir / f"copy-source-{jobs}.db"
    rows = build(source, jobs)
    target = pg.database()
    env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [PY, "-m", "backend", "copy-store", "--from", f"sqlite:///{source}", "--to", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"copy-store failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    total = sum(rows.values())
    emit(
        table(
            f"g. copy-store: a {jobs}-job SQLite store into an empty PostgreSQL database (the real command)",
            ["table", "rows"],
            [[name, count] for name, count in rows.items() if count] + [["all", total]],
        )
    )
    said = done.stdout.strip().splitlines()[-1]
    emit(f"{said} in {elapsed:.1f} s: {total / elapsed:.0f} rows/s, {jobs / elapsed:.0f} jobs/s")
    results.check(f"copy-store {jobs} jobs + attempts into PostgreSQL", f"{elapsed:.1f} s", "(report)", None)
    results.ratio(f"copy-store rows per second ({total} rows)", total / elapsed)
    source.unlink(missing_ok=True)
    pg.server.drop_database(target.rsplit("/", 1)[1])
