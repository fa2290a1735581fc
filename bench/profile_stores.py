"""``python -m bench.profile stores``: what one request costs on SQLite and on PostgreSQL, in process.

Per endpoint and store: wall ms per request (one client, no gunicorn, no HTTP), CPU µs per
request of this process and of PostgreSQL's server processes (on a 2-core machine the server's
CPU is taken from the same cores as the API's), pool checkouts per request (each costs a ping on
PostgreSQL: ``pool_pre_ping``), the statements PostgreSQL received per request (its log with
``log_statement = all``, by first words: BEGIN, ROLLBACK, SELECT ...), and cProfile's own time by
package. Why: a PostgreSQL figure below its SQLite one is explained by where these differ.
"""

from __future__ import annotations

import collections
import cProfile
import logging
import pstats
import re
import time

import psutil
from sqlalchemy import event

from bench.common import TOKEN, Workdir, emit, start_redis
from bench.stores import POSTGRESQL, SQLITE, start_postgres

INTERNAL = {"X-Internal-Token": TOKEN}
STATEMENT = re.compile(r"(?:statement|execute [^:]*): (\w+(?: \w+)?)")


def _app(redis_url: str, database_url: str):
    from backend.app import create_app

    logging.disable(logging.WARNING)
    return create_app(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "INTERNAL_SERVICE_TOKEN": TOKEN,
            "TASK_MODULES": "backend.tasks.examples,bench.tasks",
            "RATE_LIMIT_ENABLED": 0,
            "LOG_LEVEL": "WARNING",
            "RECONCILE_INTERVAL": 0,
            "WEBHOOK_INTERVAL": 0,
        }
    )


def _cases(client, ids: list[str], n: int) -> list[tuple[str, int, object]]:
    """(label, requests, call(i)) for the endpoints the benchmarks load."""

    def batch(i: int):
        reports = []
        for job_id in ids[n + 10 * i : n + 10 * i + 10]:
            reports.append({"job_id": job_id, "attempt": 1, "event": "started", "worker": "w"})
            reports.append({"job_id": job_id, "attempt": 1, "event": "completed", "result": None})
        return client.post("/internal/reports", json={"sent_at": time.time(), "reports": reports}, headers=INTERNAL)

    return [
        ("POST /tasks/bench_noop", n, lambda i: client.post("/tasks/bench_noop", json={})),
        ("GET /jobs/<id> (first poll: built)", n, lambda i: client.get(f"/jobs/{ids[i]}")),
        ("GET /jobs/<id> (again, unchanged)", n, lambda i: client.get(f"/jobs/{ids[i]}")),
        ("POST /internal/reports (10 jobs, 20)", n // 10, batch),
        ("GET /jobs?limit=50", n // 5, lambda i: client.get("/jobs?limit=50")),
        ("GET /monitoring/queue/stats", n, lambda i: client.get("/monitoring/queue/stats")),
    ]


def _server_cpu(pg) -> float:
    """CPU seconds used so far by every PostgreSQL server process."""
    if pg is None:
        return 0.0
    pid = int(pg.server.data_dir.joinpath("postmaster.pid").read_text().split()[0])
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children()]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _statements(pg, offset: int) -> collections.Counter:
    """The statements PostgreSQL logged after ``offset`` in its log, by first words."""
    time.sleep(0.2)  # the logging collector writes asynchronously
    with open(pg.server.log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return collections.Counter(m.group(1).upper() for m in STATEMENT.finditer(text))


def _package(func: tuple) -> str:
    filename, _line, name = func
    if filename == "~":
        return "sqlite3 (C)" if "sqlite3" in name else "C built-ins"
    for key in ("sqlalchemy", "psycopg", "werkzeug", "flask", "redis", "rq/", "prometheus_client", "backend/"):
        if key in filename:
            return key.rstrip("/")
    return "other Python"


def _measure(store: str, url: str, server, redis_url: str, n: int, profiles: dict) -> None:
    """Print one store's line per endpoint; put its cProfile summaries into ``profiles``."""
    from backend.api.context import services
    from backend.app import stop_background

    app = _app(redis_url, url)
    client = app.test_client()
    checkouts = collections.Counter()
    event.listen(services(app).engine, "checkout", lambda *_: checkouts.update(["checkout"]))
    ids = [client.post("/tasks/bench_noop", json={}).get_json()["job_id"] for _ in range(2 * n)]
    try:
        for label, count, call in _cases(client, ids, n):
            offset = server.server.log_path.stat().st_size if server else 0
            checkouts.clear()
            cpu0, server0, t0 = time.process_time(), _server_cpu(server), time.perf_counter()
            for i in range(count):
                answer = call(i)
                if answer.status_code >= 300:
                    raise RuntimeError(f"{label} on {store}: {answer.status_code} {answer.get_data()[:200]}")
            wall = (time.perf_counter() - t0) / count
            cpu, server_cpu = (time.process_time() - cpu0) / count, (_server_cpu(server) - server0) / count
            said = _statements(server, offset) if server else collections.Counter()
            emit(
                f"{label:38} {store:10} {wall * 1e3:7.2f} {cpu * 1e6:10.0f} {server_cpu * 1e6:9.0f} "
                f"{checkouts['checkout'] / count:9.1f}  "
                + ", ".join(f"{k} {v / count:.1f}" for k, v in said.most_common())
            )
        more = [client.post("/tasks/bench_noop", json={}).get_json()["job_id"] for _ in range(10)]
        for label, call in [
            ("POST /tasks/bench_noop", lambda i: client.post("/tasks/bench_noop", json={})),
            ("GET /jobs/<id> (unchanged)", lambda i: client.get(f"/jobs/{more[i % 10]}")),
            ("GET /jobs?limit=50", lambda i: client.get("/jobs?limit=50")),
        ]:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(n):
                call(i)
            profiler.disable()
            by: collections.Counter = collections.Counter()
            for func, (_cc, _nc, tottime, _ct, _callers) in pstats.Stats(profiler).stats.items():
                by[_package(func)] += tottime
            profiles[label, store] = (sum(by.values()) / n, by)
    finally:
        stop_background(app)


def stores(args) -> None:
    pg = start_postgres(log=emit)
    workdir = Workdir()
    redis = start_redis(workdir)
    try:
        targets = [(SQLITE, f"sqlite:///{workdir / 'profile.db'}")]
        if pg is not None:
            pg.server.execute("ALTER SYSTEM SET log_statement = 'all'")
            pg.server.execute("SELECT pg_reload_conf()")
            targets.append((POSTGRESQL, pg.database()))
        emit(f"in process (Flask test client), {args.n} requests per endpoint (reports: {args.n // 10} batches)")
        header = f"{'endpoint':38} {'store':10} {'ms/req':>7} {'API CPU µs':>10} {'PG CPU µs':>9} {'checkouts':>9}"
        emit(header + "  statements PostgreSQL received per request")
        profiles: dict = {}
        for store, url in targets:
            _measure(store, url, pg if store == POSTGRESQL else None, redis.url, args.n, profiles)
        emit("\ncProfile: own time per request, by package")
        for (label, store), (total, by) in profiles.items():
            shares = ", ".join(f"{k} {100 * v / sum(by.values()):.0f}%" for k, v in by.most_common(6))
            emit(f"  {label:28} {store:10} {total * 1e3:6.2f} ms: {shares}")
    finally:
        redis.stop()
        workdir.cleanup()
        if pg is not None:
            pg.stop()
