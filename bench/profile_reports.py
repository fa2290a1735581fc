"""What the API spends applying the workers' report batches, per job, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.profile_reports [-b 25] [-r 40] [--no-postgres] [--top 12]

In process (Flask's test client, no gunicorn, no HTTP): R batches of ``POST /internal/reports``,
each a start and an end of B no-op jobs, as a draining worker's reporter sends them. Per job: wall
µs, CPU µs of this process and of PostgreSQL's server processes, SQL statements; then cProfile's
functions by own time and our functions by cumulative time (where the batch's time goes by layer:
the route and protocol, the planner, the store's statements).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time

from sqlalchemy import event

from bench.common import Workdir, emit, start_redis
from bench.profile_stores import INTERNAL, _app, _server_cpu
from bench.stores import POSTGRESQL, SQLITE, start_postgres


def _batch(client, job_ids: list[str]):
    reports = []
    for job_id in job_ids:
        reports.append({"job_id": job_id, "attempt": 1, "event": "started", "worker": "w", "at": time.time()})
        reports.append({"job_id": job_id, "attempt": 1, "event": "completed", "result": None, "at": time.time()})
    answer = client.post("/internal/reports", json={"sent_at": time.time(), "reports": reports}, headers=INTERNAL)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]


def measure(store: str, database_url: str, redis_url: str, pg, b: int, r: int, top: int) -> None:
    from backend.api.context import services

    app = _app(redis_url, database_url)
    client = app.test_client()
    statements: collections.Counter = collections.Counter()
    event.listen(services(app).engine, "before_cursor_execute", lambda *a: statements.update(["n"]))
    ids = []
    while len(ids) < b * (2 * r + 2):
        body = {"jobs": [{}] * 500}
        ids += client.post("/tasks/bench_noop/batch", json=body).get_json()["job_ids"]
    _batch(client, ids[:b])  # warm-up: first statements prepared, caches filled
    _batch(client, ids[b : 2 * b])
    statements.clear()
    cpu0, server0, t0 = time.process_time(), _server_cpu(pg), time.perf_counter()
    for i in range(r):
        _batch(client, ids[(2 + i) * b : (3 + i) * b])
    wall, cpu, server = time.perf_counter() - t0, time.process_time() - cpu0, _server_cpu(pg) - server0
    jobs = b * r
    emit(
        f"\n{store}: {r} batches of {b} jobs (start + end each): per job {1e6 * wall / jobs:.0f} µs wall, "
        f"API CPU {1e6 * cpu / jobs:.0f} µs, PostgreSQL CPU {1e6 * server / jobs:.0f} µs, "
        f"{statements['n'] / r:.1f} SQL statements per batch"
    )
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(r):
        _batch(client, ids[(2 + r + i) * b : (3 + r + i) * b])
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(tottime for _cc, _nc, tottime, _ct, _callers in stats.values())
    emit(f"  cProfile, own time ({1e6 * total / jobs:.0f} µs per job profiled):")
    by_own = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    for (filename, line, name), (_cc, nc, tottime, _ct, _callers) in by_own:
        where = filename.split("site-packages/")[-1].split("/main/")[-1]
        emit(f"    {100 * tottime / total:5.1f}%  {nc / r:6.1f} calls/batch  {name} ({where}:{line})")
    emit("  ours, cumulative:")
    ours = [item for item in stats.items() if "/backend/" in item[0][0]]
    for (filename, line, name), (_cc, nc, _tt, cumtime, _callers) in sorted(ours, key=lambda i: -i[1][3])[:top]:
        where = filename.split("/main/")[-1]
        emit(f"    {100 * cumtime / total:5.1f}%  {nc / r:6.1f} calls/batch  {name} ({where}:{line})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_reports", description=__doc__.split("\n")[0])
    parser.add_argument("-b", type=int, default=25, help="jobs per batch")
    parser.add_argument("-r", type=int, default=40, help="batches measured (and as many profiled)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    workdir = Workdir()
    redis = start_redis(workdir)
    pg = None if args.no_postgres else start_postgres(emit)
    try:
        measure(SQLITE, f"sqlite:///{workdir / 'reports.db'}", redis.url, None, args.b, args.r, args.top)
        if pg is not None:
            measure(POSTGRESQL, pg.database(), redis.url, pg, args.b, args.r, args.top)
    finally:
        if pg is not None:
            pg.stop()
        redis.stop()
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
