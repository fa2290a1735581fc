"""Where the time goes: the profiles behind BENCHMARKS.md, re-runnable.

python -m bench.profile inproc           # per endpoint, in-process: ms, SQL statements, commits,
                                         #   cProfile time by package, and two micro-benchmarks
python -m bench.profile phases           # a worker's time per job: its reports vs the rest
python -m bench.profile spy drain|poll|submit [--py-spy PATH]
                                         # py-spy under load; needs py-spy, e.g.
                                         #   python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install py-spy
python -m bench.profile cpu [-w 2]       # CPU seconds per job of the API, the workers and Redis
                                         #   while W simple workers drain N jobs, ours and raw RQ
python -m bench.profile stores [-n 300]  # per endpoint on SQLite and on PostgreSQL: ms, CPU of the
                                         #   API and of PostgreSQL, checkouts, statements, cProfile
python -m bench.profile submit [-n 500] [--http 2000]
                                         # POST /tasks/<name> by layer, in process and through
                                         #   gunicorn (CPU per job of each process), both stores
python -m bench.profile query            # the tenant list queries on the 1M store, with and
                                         #   without a composite index (on a scratch copy)
python -m bench.profile lone [-n 50] [--py-spy PATH]
                                         # one request at a time on an idle API (T5): hello-world,
                                         #   a poll, a submission with and without a worker listening

This module holds the command line, ``inproc`` and ``query``; ``phases``/``cpu`` are in
bench/profile_costs.py, ``spy`` in bench/profile_spy.py, ``stores`` in bench/profile_stores.py and ``lone`` in
bench/profile_lone.py.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import logging
import pstats
import sqlite3
import sys
import time

from bench import storedb
from bench.common import (
    CACHE_DIR,
    TOKEN,
    Workdir,
    emit,
    start_redis,
)
from bench.profile_costs import cpu, phases
from bench.profile_lone import lone
from bench.profile_spy import spy
from bench.profile_stores import stores
from bench.profile_submit import submit

INTERNAL = {"X-Internal-Token": TOKEN}


# -- in-process ---------------------------------------------------------------------------


def _app(workdir: Workdir, redis_url: str):
    from backend.app import create_app

    logging.disable(logging.WARNING)
    return create_app(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{workdir / 'inproc.db'}",
            "INTERNAL_SERVICE_TOKEN": TOKEN,
            "TASK_MODULES": "backend.tasks.examples,bench.tasks",
            "RATE_LIMIT_ENABLED": 0,
            "LOG_LEVEL": "WARNING",
            "RECONCILE_INTERVAL": 0,
            "WEBHOOK_INTERVAL": 0,
        }
    )


def _package(func: tuple) -> str:
    filename, _line, name = func
    if filename == "~":
        return "sqlite3 (C)" if "sqlite3" in name else "C built-ins"
    for key in ("sqlalchemy", "flask_limiter", "werkzeug", "flask", "redis", "rq/", "prometheus_client", "backend/"):
        if key in filename:
            return key.rstrip("/")
    return "other Python"


def _single_reports(client, job_ids: list[str]) -> list[tuple]:
    """(label, call) for the one-report routes: call(i) reports job_ids[i] started, then completed."""
    url = "/internal/jobs/{}/{}"
    return [
        (
            "POST /internal/jobs/<id>/started",
            lambda i: client.post(
                url.format(job_ids[i], "started"), json={"attempt": 1, "worker": "w"}, headers=INTERNAL
            ),
        ),
        (
            "POST /internal/jobs/<id>/completed",
            lambda i: client.post(
                url.format(job_ids[i], "completed"), json={"attempt": 1, "result": None}, headers=INTERNAL
            ),
        ),
    ]


def _report_batch(client, job_ids: list[str]):
    """One worker batch: a start and an end for each job."""
    reports = []
    for job_id in job_ids:
        reports.append({"job_id": job_id, "attempt": 1, "event": "started", "worker": "w"})
        reports.append({"job_id": job_id, "attempt": 1, "event": "completed", "result": None})
    return client.post("/internal/reports", json={"sent_at": time.time(), "reports": reports}, headers=INTERNAL)


def inproc(args) -> None:
    from sqlalchemy import bindparam, event, select, text

    from backend.api.context import services
    from backend.store import counts
    from backend.store.models import Job

    workdir = Workdir()
    redis = start_redis(workdir)
    try:
        app = _app(workdir, redis.url)
        client = app.test_client()
        engine = services(app).engine
        current = ["-"]
        statements: collections.Counter = collections.Counter()
        commits: collections.Counter = collections.Counter()
        event.listen(engine, "before_cursor_execute", lambda *a: statements.update([current[0]]))
        event.listen(engine, "commit", lambda *a: commits.update([current[0]]))
        n = args.n
        ids = [client.post("/tasks/bench_noop", json={}).get_json()["job_id"] for _ in range(3 * n)]
        cases = [
            ("POST /tasks/bench_noop", lambda i: client.post("/tasks/bench_noop", json={})),
            ("GET /jobs/<id> (first poll: built)", lambda i: client.get(f"/jobs/{ids[i]}")),
            ("GET /jobs/<id> (again, unchanged)", lambda i: client.get(f"/jobs/{ids[i]}")),
            *_single_reports(client, ids[n : 2 * n]),
            ("POST /internal/reports (1 job, 2)", lambda i: _report_batch(client, batch_ids[i : i + 1])),
            (
                "POST /internal/reports (10 jobs, 20)",
                lambda i: _report_batch(client, batch_ids[n + 10 * i : n + 10 * i + 10]),
            ),
            ("GET /monitoring/queue/stats", lambda i: client.get("/monitoring/queue/stats")),
        ]
        batch_ids = [client.post("/tasks/bench_noop", json={}).get_json()["job_id"] for _ in range(11 * n)]
        emit(f"in-process (Flask test client, no gunicorn, no HTTP), {n} requests each:")
        emit(f"{'endpoint':38} {'ms/req':>7} {'SQL/req':>8} {'commits/req':>11}")
        for label, call in cases:
            current[0] = label
            t0 = time.perf_counter()
            for i in range(n):
                call(i)
            elapsed = (time.perf_counter() - t0) / n
            current[0] = "-"
            emit(f"{label:38} {elapsed * 1000:7.2f} {statements[label] / n:8.1f} {commits[label] / n:11.1f}")
        emit("\ncProfile: own time by package")
        more = ids[2 * n :]
        for label, call in [
            ("POST /tasks/bench_noop", lambda i: client.post("/tasks/bench_noop", json={})),
            *_single_reports(client, more),
            ("GET /jobs/<id>", lambda i: client.get(f"/jobs/{more[i]}")),
        ]:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(n):
                call(i)
            profiler.disable()
            by = collections.Counter()
            for func, (_cc, _nc, tottime, _ct, _callers) in pstats.Stats(profiler).stats.items():
                by[_package(func)] += tottime
            total = sum(by.values())
            emit(f"  {label}: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in by.most_common(6)))

        emit("\nmicro-benchmarks (µs per call):")
        sessions = services(app).sessions
        decrement = text("UPDATE job_counts SET count = count - :n WHERE task = :task AND status = :status")
        upsert = text(
            "INSERT INTO job_counts (task, status, count) VALUES (:task, :status, :n) "
            "ON CONFLICT (task, status) DO UPDATE SET count = count + excluded.count"
        )

        def prebuilt(s) -> None:
            s.execute(decrement, {"n": 1, "task": "t", "status": "QUEUED"})
            s.execute(upsert, {"n": 1, "task": "t", "status": "PROCESSING"})

        def as_is(s) -> None:
            counts.bump(s, "t", old="QUEUED", new="PROCESSING")

        for label, call in [
            ("counts.bump(old, new) as it is (statements built per call)", as_is),
            ("the same two statements prebuilt, as text() with parameters", prebuilt),
        ]:
            with sessions() as s:
                for _ in range(50):
                    call(s)
                t0 = time.perf_counter()
                for _ in range(2000):
                    call(s)
                emit(f"  {label:62} {(time.perf_counter() - t0) / 2000 * 1e6:7.1f}")
                s.rollback()
        manager = services(app).jobs
        by_id = select(Job.__table__).where(Job.__table__.c.id == bindparam("id"))

        def core(i: int) -> str:
            with engine.connect() as conn:
                row = conn.execute(by_id, {"id": ids[i % 200]}).mappings().first()
            return json.dumps(dict(row), default=str)

        from backend.service.representations import job_dict

        def orm(i: int) -> str:
            return json.dumps(job_dict(manager.get_job(ids[i % 200])))

        for label, call in [
            ("GET /jobs/<id> lookup: JobManager.get_job + job_dict + json", orm),
            ("the same row with a prebuilt Core select, row -> json", core),
        ]:
            for i in range(100):
                call(i)
            t0 = time.perf_counter()
            for i in range(2000):
                call(i)
            emit(f"  {label:62} {(time.perf_counter() - t0) / 2000 * 1e6:7.1f}")
    finally:
        redis.stop()
        workdir.cleanup()


# -- queries ------------------------------------------------------------------------------

TENANT_QUERIES = {
    "owner + status=FAILED": "owner = 'small' AND status = 'FAILED'",
    "owner + status=COMPLETED": "owner = 'small' AND status = 'COMPLETED'",
    "owner + task=word_count": "owner = 'small' AND task = 'word_count'",
}
PROPOSED_INDEXES = [
    "CREATE INDEX ix_jobs_owner_status_created ON jobs (owner, status, created_at, id)",
    "CREATE INDEX ix_jobs_owner_task_created ON jobs (owner, task, created_at, id)",
]


def query(args) -> None:
    workdir = Workdir()
    try:
        db = storedb.obtain(args.rows, workdir / "query.db", CACHE_DIR, log=emit)
        conn = sqlite3.connect(db)

        def run(title: str) -> None:
            emit(title)
            for label, where in TENANT_QUERIES.items():
                sql = f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 51"
                plan = "; ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
                conn.execute(sql).fetchall()
                t0 = time.perf_counter()
                for _ in range(5):
                    conn.execute(sql).fetchall()
                emit(f"  {label:26} {(time.perf_counter() - t0) / 5 * 1000:8.2f} ms   {plan}")

        run(f"as migrated ({args.rows} jobs):")
        for statement in PROPOSED_INDEXES:
            t0 = time.perf_counter()
            conn.execute(statement)
            emit(f"  {statement}  ({time.perf_counter() - t0:.1f} s)")
        run("with the two composite indexes:")
        conn.close()
    finally:
        workdir.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inproc")
    p.add_argument("-n", type=int, default=300)
    p.set_defaults(func=inproc)
    p = sub.add_parser("phases")
    p.add_argument("-n", type=int, default=1000)
    p.set_defaults(func=phases)
    p = sub.add_parser("spy")
    p.add_argument("scenario", choices=["drain", "poll", "submit"])
    p.add_argument("-n", type=int, default=1500)
    p.add_argument("--py-spy", default=None)
    p.add_argument("--out", default="/tmp/bench-profiles")
    p.set_defaults(func=spy)
    p = sub.add_parser("cpu")
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("-w", type=int, default=2)
    p.set_defaults(func=cpu)
    p = sub.add_parser("stores")
    p.add_argument("-n", type=int, default=300)
    p.set_defaults(func=stores)
    p = sub.add_parser("submit")
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--http", type=int, default=2000, help="jobs through gunicorn (0: in process only)")
    p.add_argument("--no-postgres", action="store_true")
    p.set_defaults(func=submit)
    p = sub.add_parser("lone")
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--py-spy", default=None)
    p.add_argument("--out", default="/tmp/bench-profiles")
    p.set_defaults(func=lone)
    p = sub.add_parser("query")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.set_defaults(func=query)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
