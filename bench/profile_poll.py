"""``python -m bench.profile_poll``: what one ``GET /jobs/<id>`` costs, layer by layer, in process.

Why: the polling target (issue 17, T3) compares the route with a hello-world Flask route under the
same gunicorn; gunicorn's own share (HTTP parsing, the access log) is the same for both, so what
separates them is the app's. This calls each app as WSGI directly (no test client, no HTTP), so
the CPU µs per request are the app's only, and takes each layer out in turn (a hook replaced by
nothing, the middleware bypassed, the view's service call alone, the store's read alone): the
difference is that layer's cost. Rounds alternate every variant, so load moves them alike; the
median of the rounds is printed. It also counts what does not depend on load: pool checkouts,
statements sent and Python function calls per request.

    .venv/bin/python -m bench.profile_poll [-n 2000] [--rounds 5] [--no-postgres]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import logging
import pstats
import statistics
import sys
import time
import types

from flask import Flask
from werkzeug.test import EnvironBuilder

from bench.common import TOKEN, Workdir, emit, start_redis
from bench.stores import POSTGRESQL, SQLITE, start_postgres

INTERNAL = {"X-Internal-Token": TOKEN}


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
            "HOUSEKEEPING_INTERVAL": 0,
        }
    )


def _completed_job(app) -> str:
    """A job ended COMPLETED the way a worker ends one (its reports), polled once."""
    client = app.test_client()
    job_id = client.post("/tasks/bench_noop", json={}).get_json()["job_id"]
    for event, body in (("started", {"worker": "w"}), ("completed", {"result": None})):
        answer = client.post(f"/internal/jobs/{job_id}/{event}", json={"attempt": 1, **body}, headers=INTERNAL)
        assert answer.status_code == 200, answer.get_data()
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "COMPLETED"
    return job_id


def _caller(app, path: str):
    """call(): one request to ``app`` as gunicorn would make it (loopback peer, a Host header)."""
    environ = EnvironBuilder(
        path=path, headers={"Host": "127.0.0.1:5000", "User-Agent": "wrk", "Accept": "*/*"}
    ).get_environ()
    environ.update(REMOTE_ADDR="127.0.0.1", REMOTE_PORT="40000", SERVER_SOFTWARE="gunicorn/27.0.1")
    status = []

    def start_response(code, headers, exc_info=None):
        status.append(code)

    def call() -> None:
        status.clear()
        body = app(dict(environ), start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not status[0].startswith("200"):
            raise RuntimeError(f"{path}: {status[0]}")

    return call


def _cpu_per_call(call, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - t0) / n


def _variants(app, job_id: str) -> list[tuple[str, object]]:
    """(label, call) per variant: the whole route, then with one layer taken out each."""
    from backend.api.context import services

    path = f"/jobs/{job_id}"
    full = _caller(app, path)
    reader = services(app).job_reader
    variants = [("GET /jobs/<id>, as served", full)]
    # The hooks this route runs (the app's and its blueprint's); the tasks blueprint's
    # authentication, which it does not run, is kept as a control: its row shows the noise.
    for key, funcs in list(app.before_request_funcs.items()) + list(app.after_request_funcs.items()):
        if key not in (None, "jobs", "tasks"):
            continue
        for func in list(funcs):
            variants.append(
                (f"  without {func.__qualname__.split('.')[-1]} ({key or 'app'})", _without(app, funcs, func))
            )

    def bypass() -> None:
        outer = app.wsgi_app
        app.wsgi_app = types.MethodType(Flask.wsgi_app, app)
        try:
            full()
        finally:
            app.wsgi_app = outer

    variants.append(("  without the WSGI wrappers (TrustedProxies, metrics clock)", bypass))
    variants.append(("JobReader.json alone (the service)", lambda: reader.json(job_id, owner=None)))
    stamps = getattr(reader, "_stamps", None)
    if stamps is not None:
        variants.append(("JobStamps.read alone (the store)", lambda: stamps.read(job_id)))
    return variants


def _without(app, funcs: list, func):
    """call() with ``func`` taken out of its hook list; authentication is replaced by setting the
    principal the view needs (an admin, as loopback is with no keys), which costs next to nothing."""
    from flask import g

    from backend.api.auth import Principal

    call = _caller_for(app)
    admin = Principal(owner="local", is_admin=True)

    def stub() -> None:
        g.principal = admin

    def run() -> None:
        index = funcs.index(func)
        funcs[index] = stub if func.__name__ == "authenticate_client" else None
        if funcs[index] is None:
            funcs.pop(index)
        try:
            call()
        finally:
            if funcs[index : index + 1] == [stub]:
                funcs[index] = func
            else:
                funcs.insert(index, func)

    return run


_CALLERS: dict[int, object] = {}


def _caller_for(app):
    return _CALLERS[id(app)]


def _counts(app, call, n: int) -> dict[str, float]:
    """Pool checkouts, statements executed (the raw stamp read included) and function calls per request."""
    from sqlalchemy import event

    from backend.api.context import services

    engine = services(app).engine
    seen = collections.Counter()

    def on_checkout(*_):
        seen["checkouts"] += 1

    event.listen(engine, "checkout", on_checkout)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        for _ in range(n):
            call()
        profiler.disable()
    finally:
        event.remove(engine, "checkout", on_checkout)
    stats = pstats.Stats(profiler).stats
    calls = sum(nc for (_cc, nc, _tt, _ct, _callers) in stats.values())
    executes = sum(
        nc
        for (filename, _line, name), (_cc, nc, _tt, _ct, _callers) in stats.items()
        if (name == "execute" and "psycopg" in filename) or "Cursor.execute" in name or "sqlite3.Cursor" in name
    )
    return {"checkouts": seen["checkouts"] / n, "executes": executes / n, "calls": calls / n}


def profile(args) -> None:
    from backend.app import stop_background
    from bench.hello_app import app as hello

    pg = None if args.no_postgres else start_postgres(log=emit)
    workdir = Workdir()
    redis = start_redis(workdir)
    apps = []
    try:
        targets = [(SQLITE, f"sqlite:///{workdir / 'poll.db'}")]
        if pg is not None:
            targets.append((POSTGRESQL, pg.database()))
        hello_call = _caller(hello, "/hello")
        table: dict[str, list[float]] = collections.defaultdict(list)
        plans = []
        for store, url in targets:
            app = _app(redis.url, url)
            apps.append(app)
            job_id = _completed_job(app)
            _CALLERS[id(app)] = _caller(app, f"/jobs/{job_id}")
            plans.append((store, app, job_id, _variants(app, job_id)))
        everything = [("hello-world (bench/hello_app.py)", hello_call)] + [
            (f"{store}: {label}", call) for store, _app_, _id, variants in plans for label, call in variants
        ]
        for _label, call in everything:  # warm-up
            _cpu_per_call(call, 200)
        for _ in range(args.rounds):
            for label, call in everything:
                table[label].append(_cpu_per_call(call, args.n))
        emit(
            f"in process, WSGI called directly (no gunicorn, no HTTP), CPU µs per request, median of "
            f"{args.rounds} alternating rounds of {args.n}"
        )
        emit(f"  {'':64} {'median':>7}  {'min-max':>9}  {'x hello':>7}  {'calls':>6}")
        hello_us = statistics.median(table[everything[0][0]]) * 1e6
        for label, call in everything:
            us = statistics.median(table[label]) * 1e6
            spread = f"{min(table[label]) * 1e6:.0f}-{max(table[label]) * 1e6:.0f}"
            emit(f"  {label:64} {us:7.1f}  {spread:>9}  {us / hello_us:7.2f}  {_calls(call, 200):6.0f}")
        emit("\nper request (not load dependent): pool checkouts, statements executed")
        for store, app, _job_id, _unused in plans:
            got = _counts(app, _CALLERS[id(app)], 500)
            emit(f"  {store:24} checkouts {got['checkouts']:4.1f}  statements {got['executes']:4.1f}")
    finally:
        for app in apps:
            stop_background(app)
        redis.stop()
        workdir.cleanup()
        if pg is not None:
            pg.stop()


def _calls(call, n: int) -> float:
    """Python function calls per request: a count that does not move with the machine's load."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        call()
    profiler.disable()
    return sum(nc for (_cc, nc, _tt, _ct, _callers) in pstats.Stats(profiler).stats.values()) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_poll", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    profile(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
