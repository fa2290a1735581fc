"""Job stores of a given size, built fast: a migrated database filled with plain SQL.

``backend.store.engine.migrate`` creates the schema; rows go in with ``executemany`` (the jobs
table's secondary indexes are dropped for the load and re-created with their own SQL, so
the result has exactly the migrated schema) and ``job_counts`` is written from the same
rows, as the service keeps it. Rows are inserted in creation order with random ids, as a
real store fills up. Large stores are cached under ``bench/.cache/`` (keyed by row count,
the schema's Alembic head and this generator's version) and copied for each run.

    python -m bench.storedb 1000000     # build (or find) the cached 1M-row store
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.script import ScriptDirectory

from backend.store.engine import alembic_config, migrate

GENERATOR_VERSION = 4
#: The search figures' targets (bench/store_scale.py): the small tenant's k-th job carries
#: document_id = k % SEARCH_GROUPS, a progress message naming "doc-<that, 3 digits>", batch
#: bat_<k // 50> and schedule sch_<k % 10>; every other job a document_id of its own range (from
#: 1000) and none of those. So a search for document 7 or "doc-007" returns the same 20 jobs from
#: a 1k and from a 1M store, and its cost at both sizes is the index's, not the number of matches.
SEARCH_GROUPS = 50
TASKS = [("echo", 40), ("word_count", 30), ("sleep", 20), ("bench_noop", 10)]
STATUSES = [("COMPLETED", 90), ("FAILED", 7), ("CANCELLED", 3)]
#: Owners (API key names): a large tenant, a medium one, and the small one below.
OWNERS = [("big", 900), ("medium", 100)]
#: The small tenant owns the same number of jobs, SMALL_JOBS, in every store (all of a 1k store,
#: 0.1% of a 1M one), so that its queries return the same rows whatever the store's size.
SMALL_OWNER, SMALL_JOBS = "small", 1000
SPAN = timedelta(days=30)
CHUNK = 50_000
TEXT = "the quick brown fox jumps over the lazy dog"


def schema_head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or "none"


def cached_path(rows: int, cache_dir: Path) -> Path:
    return cache_dir / f"jobs-{rows}-rows-schema-{schema_head()}-gen{GENERATOR_VERSION}.db"


def _fmt(moment: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format (naive UTC).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _weighted(rng: random.Random, choices: list[tuple[str, int]], n: int) -> list[str]:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices], k=n)


def _rows(rng: random.Random, start: int, n: int, total: int, t0: datetime) -> list[dict]:
    step = SPAN / max(total, 1)
    tasks = _weighted(rng, TASKS, n)
    statuses = _weighted(rng, STATUSES, n)
    owners = _weighted(rng, OWNERS, n)
    small_every = max(1, total // SMALL_JOBS)
    out = []
    for i in range(n):
        small = (start + i) % small_every == small_every // 2
        k = (start + i) // small_every
        job_id = f"job_{uuid.UUID(int=rng.getrandbits(128), version=4).hex}"
        created = t0 + step * (start + i)
        started = created + timedelta(milliseconds=rng.randint(2, 200))
        ended = started + timedelta(milliseconds=rng.randint(1, 3000))
        status = statuses[i]
        document = k % SEARCH_GROUPS if small else 1000 + (start + i) % 100_000
        failed = status == "FAILED"
        cancelled = status == "CANCELLED"
        attempt = 4 if failed else 1
        out.append(
            {
                "id": job_id,
                "owner": SMALL_OWNER if small else owners[i],
                "task": tasks[i],
                "status": status,
                "priority": "default",
                "args": "[]",
                "kwargs": f'{{"text": "{TEXT}", "document_id": {document}}}',
                "document_id": str(document),
                "progress": 100 if status == "COMPLETED" else 40,
                "progress_message": f"report for doc-{document:03d}"
                if small
                else ("done" if status == "COMPLETED" else "step 4 of 10"),
                "result": '{"words": 9, "unique": 8}' if status == "COMPLETED" else None,
                "error": "RuntimeError: this task always fails" if failed else ("cancelled" if cancelled else None),
                "created_at": _fmt(created),
                "updated_at": _fmt(ended),
                "started_at": _fmt(started),
                "completed_at": _fmt(ended),
                "attempt": attempt,
                "retry_count": attempt - 1,
                "max_retries": 3,
                "next_retry_at": None,
                "timeout": 600,
                "webhook_url": None,
                "webhook_delivered": None,
                "rq_job_id": f"{job_id}-{attempt}",
                "worker": "worker-1",
                "idempotency_key": None,
                "cancelled_by": "local" if cancelled else None,
                "cancelled_at": _fmt(ended) if cancelled else None,
                "schedule_id": f"sch_{k % 10}" if small else None,
                "batch_id": f"bat_{k // 50:04d}" if small else None,
                "depends_on": None,
                "allow_failure": 0,
                "run_at": None,
            }
        )
    return out


def build(path: Path, rows: int, *, seed: int = 7, log=print) -> Path:
    """Create a migrated store at ``path`` holding ``rows`` ended jobs."""
    path = Path(path)
    tmp = path.with_name(path.name + ".building")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    migrate(f"sqlite:///{tmp}")
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    required = {r[1] for r in conn.execute("PRAGMA table_info(jobs)") if r[3] and r[4] is None and not r[5]}
    indexes = list(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name IN ('jobs', 'job_kwargs') "
            "AND sql IS NOT NULL"
        )
    )
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    # The search index's triggers too: the FTS table is rebuilt once at the end (faster than row by row).
    triggers = list(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger' AND tbl_name='jobs'"))
    for name, _sql in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    rng = random.Random(seed)
    t0 = datetime.now(UTC).replace(tzinfo=None) - SPAN - timedelta(hours=1)
    counts: Counter = Counter()
    known = None
    for start in range(0, rows, CHUNK):
        chunk = _rows(rng, start, min(CHUNK, rows - start), rows, t0)
        if known is None:
            known = [c for c in columns if c in chunk[0]]
            missing = required - set(known)
            if missing:
                raise RuntimeError(
                    f"the jobs table has new required columns {sorted(missing)}: update bench/storedb.py"
                )
            sql = f"INSERT INTO jobs ({', '.join(known)}) VALUES ({', '.join(':' + c for c in known)})"
        conn.executemany(sql, chunk)
        # The kwargs index, as the submission path writes it (backend.core.job_filters.indexed_kwargs).
        conn.executemany(
            "INSERT INTO job_kwargs (job_id, owner, name, value, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (r["id"], r["owner"], name, value, r["created_at"])
                for r in chunk
                for name, value in (("text", TEXT), ("document_id", r["document_id"]))
            ],
        )
        counts.update((r["task"], r["status"]) for r in chunk)
        conn.commit()
    for _name, index_sql in indexes:
        conn.execute(index_sql)
    for _name, trigger_sql in triggers:
        conn.execute(trigger_sql)
    if triggers:
        conn.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")
    conn.execute("DELETE FROM job_counts")
    conn.executemany(
        "INSERT INTO job_counts (task, status, count) VALUES (?, ?, ?)",
        [(task, status, n) for (task, status), n in sorted(counts.items())],
    )
    conn.commit()
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    tmp.replace(path)
    tmp.with_suffix(".migrate.lock").unlink(missing_ok=True)
    log(f"built a {rows}-job store in {time.monotonic() - started:.1f} s: {path} ({path.stat().st_size >> 20} MiB)")
    return path


def obtain(rows: int, dest: Path, cache_dir: Path | None, *, log=print) -> Path:
    """A fresh copy of a ``rows``-job store at ``dest`` (built once into ``cache_dir``)."""
    if cache_dir is None:
        return build(dest, rows, log=log)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cached_path(rows, cache_dir)
    if not cached.exists():
        for old in cache_dir.glob(f"jobs-{rows}-rows-*.db"):
            old.unlink()  # an older schema or generator
        build(cached, rows, log=log)
    else:
        log(f"using the cached {rows}-job store {cached}")
    shutil.copyfile(cached, dest)
    return dest


def sample_ids(path: Path, n: int, *, owner: str | None = None, seed: int = 3) -> list[str]:
    """``n`` job ids spread over the whole store (of ``owner``'s jobs only, when given)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rng = random.Random(seed)
    try:
        if owner is not None:
            ids = [row[0] for row in conn.execute("SELECT id FROM jobs WHERE owner = ?", (owner,))]
            return [rng.choice(ids) for _ in range(n)]
        total = conn.execute("SELECT max(rowid) FROM jobs").fetchone()[0]
        rowids = [rng.randint(1, total) for _ in range(n)]
        return [conn.execute("SELECT id FROM jobs WHERE rowid = ?", (r,)).fetchone()[0] for r in rowids]
    finally:
        conn.close()


if __name__ == "__main__":
    from bench.common import CACHE_DIR

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    target = cached_path(count, CACHE_DIR)
    if target.exists():
        print(f"already cached: {target}")
    else:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        build(target, count)
