"""j. Pruning under load: submission latency while ``python -m backend prune`` deletes N ended jobs.

A store is filled with N jobs that ended 100 to 130 days ago (90% COMPLETED, 7% FAILED, 3%
CANCELLED, an attempt row for each that ran: past every default RETENTION_*), by INSERT ... SELECT
over a generated series in chunks, before the API starts. Then 8 clients submit
(``POST /tasks/bench_noop`` over keep-alive HTTP, as b. runs them) for a fixed time without a prune,
then again while the prune runs: for its first 60 s (``--prune-window``; the prune is then stopped
and what it deleted counted in the store), or until it ends with ``--prune-window 0``. The figure
is p99 during / p99 without (target <= 2.0, the issue's), and the prune's own rate (jobs/s), on
SQLite and PostgreSQL.

    .venv/bin/python -m bench --only j                       # N = 500,000, the prune's first 60 s
    .venv/bin/python -m bench --only j --prune-window 0      # the whole prune (tens of minutes)
    .venv/bin/python -m bench --only j --quick               # N = 5,000
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, pool, text

from backend.store.engine import migrate
from bench.common import PY, ROOT, Results, Stack, Workdir, emit, ms, pct, session, table
from bench.stores import POSTGRESQL, SQLITE, Postgres

#: Jobs inserted per statement (and transaction) of the fill.
FILL_CHUNK = 50_000
#: The jobs end over 30 days, 100 to 130 days ago: every end status is past its default retention.
ENDED_FROM, ENDED_SPAN = timedelta(days=130), timedelta(days=30)
#: A multiplier coprime with every N used: completed_at order is a permutation of the id order,
#: so the prune deletes ids spread over the primary key, as a real store's random ids are.
SPREAD = 7_919

_SQLITE_FILL = """
WITH RECURSIVE n(x) AS (SELECT :lo UNION ALL SELECT x + 1 FROM n WHERE x < :hi),
ended(x, at) AS (SELECT x, strftime('%Y-%m-%d %H:%M:%S', :base + ((x * {spread}) % :total) * :step, 'unixepoch')
                 || '.000000' FROM n)
INSERT INTO jobs ({columns})
SELECT printf('job_prune%09d', x), 'bench', {task}, {status}, 'default', '[]', '{{}}', 100, at, at, at, at,
       1, 0, 0, 0, 3, 600, 0, 0, 0, 100, 0, 0
FROM ended
"""
_PG_FILL = """
INSERT INTO jobs ({columns})
SELECT 'job_prune' || lpad(x::text, 9, '0'), 'bench', {task}, {status}, 'default', '[]', '{{}}', 100, at, at, at, at,
       1, 0, 0, 0, 3, 600, false, false, 0, 100, 0, 0
FROM (SELECT x, timestamp '1970-01-01' + (CAST(:base AS float8)
                + ((x * {spread}) % CAST(:total AS bigint)) * CAST(:step AS float8)) * interval '1 second' AS at
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS x) AS ended
"""
_COLUMNS = (
    "id, owner, task, status, priority, args, kwargs, progress, created_at, updated_at, started_at, completed_at, "
    "attempt, retry_count, max_retries, interruptions, max_interruptions, timeout, allow_failure, has_dependants, "
    "snoozes, max_snoozes, log_lines, log_bytes"
)
_TASK = "CASE x % 4 WHEN 0 THEN 'echo' WHEN 1 THEN 'word_count' WHEN 2 THEN 'sleep' ELSE 'bench_noop' END"
_STATUS = "CASE WHEN x % 100 < 90 THEN 'COMPLETED' WHEN x % 100 < 97 THEN 'FAILED' ELSE 'CANCELLED' END"
_ATTEMPTS = (
    "INSERT INTO attempts (job_id, attempt, worker, started_at, ended_at, outcome) "
    "SELECT id, 1, 'bench-worker', started_at, completed_at, status FROM jobs WHERE status <> 'CANCELLED'"
)
_COUNTS = "INSERT INTO job_counts (task, status, count) SELECT task, status, count(*) FROM jobs GROUP BY task, status"


def fill(url: str, total: int) -> float:
    """Migrate the store at ``url`` and fill it with ``total`` old ended jobs; seconds taken."""
    started = time.monotonic()
    migrate(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    dialect = engine.dialect.name
    sql = (_PG_FILL if dialect == "postgresql" else _SQLITE_FILL).format(
        columns=_COLUMNS, task=_TASK, status=_STATUS, spread=SPREAD
    )
    base = (datetime.now(UTC) - ENDED_FROM).timestamp()
    step = ENDED_SPAN.total_seconds() / total
    try:
        for lo in range(0, total, FILL_CHUNK):
            hi = min(lo + FILL_CHUNK, total) - 1
            with engine.begin() as connection:
                connection.execute(text(sql), {"lo": lo, "hi": hi, "base": base, "total": total, "step": step})
        with engine.begin() as connection:
            connection.execute(text(_ATTEMPTS))
            connection.execute(text(_COUNTS))
        if dialect == "postgresql":
            # What autovacuum does soon after such a load: done now, not in the middle of a measurement.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return time.monotonic() - started


def submit_for(url: str, clients: int, until) -> tuple[int, list[float]]:
    """Submissions from ``clients`` keep-alive clients until ``until()`` is true; (count, latencies)."""
    target = f"{url}/tasks/bench_noop"
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def work(i: int) -> None:
        http = session()
        try:
            barrier.wait()
            while not until():
                t0 = time.perf_counter()
                r = http.post(target, json={"args": [], "kwargs": {}}, timeout=60)
                latencies[i].append(time.perf_counter() - t0)
                if r.status_code != 202:
                    raise RuntimeError(f"POST {target} answered {r.status_code}: {r.text[:200]}")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            http.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    flat = [x for lst in latencies for x in lst]
    return len(flat), flat


def _measure(stack: Stack, *, total: int, clients: int, seconds: float, window: float = 0.0) -> dict:
    """Submissions for ``seconds`` without a prune, then while the prune runs (for its first
    ``window`` seconds when set, the prune then stopped); both sides' figures."""
    # Warm the API's workers and connections.
    submit_for(stack.url, clients, _after(1.0))
    base_n, base = submit_for(stack.url, clients, _after(seconds))
    prune = subprocess.Popen(
        [PY, "-m", "backend", "prune"],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    cut = _after(window) if window > 0 else (lambda: False)
    during_n, during = submit_for(stack.url, clients, lambda: prune.poll() is not None or cut())
    took = time.monotonic() - t0
    if prune.poll() is None:  # the window ended first: stop the prune, count what it deleted
        prune.terminate()
        prune.communicate(timeout=60)
        pruned = total - _jobs_left(stack.database_url)
    else:
        out, err = prune.communicate(timeout=60)
        if prune.returncode != 0:
            raise RuntimeError(f"prune exited {prune.returncode}: {err[-2000:]}")
        pruned = sum(int(line.split(":")[1].split()[0]) for line in out.splitlines() if " pruned " in line)
        if pruned != total:
            raise RuntimeError(f"prune deleted {pruned} jobs of {total}: {out}")
    return {"base": base, "base_n": base_n, "base_s": seconds, "during": during, "during_n": during_n,
            "took": took, "pruned": pruned}  # fmt: skip


def _jobs_left(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            # The filled jobs only (job_prune...): the submissions measured meanwhile are jobs too.
            return connection.execute(text("SELECT count(*) FROM jobs WHERE id LIKE 'job_prune%'")).scalar_one()
    finally:
        engine.dispose()


def _after(seconds: float):
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def run(
    workdir: Workdir,
    results: Results,
    *,
    total: int,
    clients: int = 8,
    seconds: float = 20.0,
    window: float = 0.0,
    pg=None,
) -> None:
    """The measurement on SQLite and, when ``pg`` runs, on PostgreSQL (one store at a time: the
    machine's two cores are not shared between the two)."""
    stores: dict[str, str] = {SQLITE: f"sqlite:///{workdir / 'prune.db'}"}
    if isinstance(pg, Postgres):
        stores[POSTGRESQL] = pg.database()
    rows = []
    for store, url in stores.items():
        took = fill(url, total)
        emit(f"j. {store}: {total:,} ended jobs (and their attempts) inserted in {took:.1f} s")
        # The API's own housekeeping stays off: the prune measured is the command's.
        with Stack(workdir, f"prune-{store.lower()}", database_url=url, HOUSEKEEPING_INTERVAL="0") as stack:
            got = _measure(stack, total=total, clients=clients, seconds=seconds, window=window)
        p99_base, p99_during = pct(got["base"], 99), pct(got["during"], 99)
        ratio = p99_during / p99_base
        rows.append([
            store, ms(pct(got["base"], 50)), ms(p99_base), f"{got['base_n'] / got['base_s']:.0f}",
            ms(pct(got["during"], 50)), ms(p99_during), f"{got['during_n'] / got['took']:.0f}",
            f"{ratio:.2f}", f"{got['took']:.1f}", f"{got['pruned'] / got['took']:.0f}",
        ])  # fmt: skip
        emit(f"j. {store}: {' | '.join(rows[-1][1:])}")  # at once: the other store's run takes minutes
        where = "" if store == SQLITE else f" on {store}"
        results.ratio(f"submission p99 during a prune of {total:,}{where} / without", ratio)
        results.check(
            f"submission p99 during a prune of {total:,} jobs{where} / without",
            f"{ratio:.2f}",
            "<= 2.00",
            ratio <= 2.0,
        )
    emit(
        table(
            f"j. Pruning under load: {total:,} ended jobs pruned (python -m backend prune) while {clients} clients "
            f"submit; {seconds:.0f} s without the prune first"
            + (f", then the prune's first {window:.0f} s (stopped there)" if window > 0 else ""),
            ["store", "p50 ms without", "p99 ms without", "jobs/s without", "p50 ms during", "p99 ms during",
             "jobs/s during", "p99 during/without", "prune s", "pruned jobs/s"],
            rows,
        )
    )  # fmt: skip
