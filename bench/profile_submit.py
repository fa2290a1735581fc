"""``python -m bench.profile submit``: where one ``POST /tasks/<name>`` spends its time, by layer.

Two parts, on SQLite and (when it can run) PostgreSQL:

1. In process (Flask's test client, no gunicorn, one client): wall µs per request in each layer,
   timed by wrapping the functions that mark the layer's edges (the request hooks, the body's
   parse, its validation, the service's store unit, the enqueue, the response), and counts that
   do not depend on the machine's load: SQL statements, commits and pool checkouts per request,
   Redis round trips (what redis-py sends on a socket) and commands (Redis' own
   ``INFO commandstats``), and on PostgreSQL the statements the server received (its log).
2. Through gunicorn (the API as shipped, 8 keep-alive clients, one simple worker draining): CPU
   µs per job of each process on the 2 cores: the API's gunicorn workers, the clients, Redis,
   PostgreSQL and the worker. Why: what the HTTP layer costs is what gunicorn's CPU per request
   has on top of the in-process figure, and the rate is bound by all of them together.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time

import psutil
from redis import Redis
from redis.connection import AbstractConnection
from sqlalchemy import event

from bench.common import Stack, Workdir, emit, session, start_redis
from bench.profile_stores import _app, _server_cpu, _statements
from bench.stores import POSTGRESQL, SQLITE, start_postgres, store_stacks

WSGI = "Flask + werkzeug (the whole WSGI call)"


class Timers:
    """Wall time spent inside wrapped functions, by label (nested labels each count their own)."""

    def __init__(self) -> None:
        self.spent: collections.Counter = collections.Counter()
        self.cpu: collections.Counter = collections.Counter()  # this thread's CPU time inside
        self.labels: list[str] = []  # in the order wrapped: outer layers first
        self._undo: list = []

    def wrap(self, owner, name: str, label: str) -> None:
        """Time ``owner.name`` (an attribute, or an item when ``owner`` is a dict) under ``label``."""
        get, put = (owner.get, owner.__setitem__) if isinstance(owner, dict) else (
            lambda n: getattr(owner, n), lambda n, v: setattr(owner, n, v))  # fmt: skip
        original = get(name)
        spent, cpu = self.spent, self.cpu

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0
                cpu[label] += time.thread_time() - c0

        put(name, timed)
        self.labels.append(label)
        self._undo.append((put, name, original))

    def wrap_hooks(self, hooks: dict, label: str) -> None:
        """Each request hook of a Flask ``*_request_funcs`` dict, timed under ``label``."""
        for key, funcs in hooks.items():
            for i, func in enumerate(funcs):
                holder = {"f": func}
                self.wrap(holder, "f", f"{label} {func.__name__}" + ("" if key is None else f" ({key})"))
                funcs[i] = holder["f"]

    def undo(self) -> None:
        for put, name, original in reversed(self._undo):
            put(name, original)


class RedisTrips:
    """Round trips to Redis: every send on a redis-py connection (a pipeline's batch is one)."""

    def __init__(self) -> None:
        self.sends = 0
        self._original = AbstractConnection.send_packed_command
        trips = self

        def counted(connection, command, check_health=True):
            trips.sends += 1
            return trips._original(connection, command, check_health)

        AbstractConnection.send_packed_command = counted

    def undo(self) -> None:
        AbstractConnection.send_packed_command = self._original


def _commands(redis: Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in redis.info("commandstats").items()}


def _layer_timers(app) -> Timers:
    import backend.api.tasks as tasks_routes
    from backend.broker.queues import QueueAdapter
    from backend.service.job_manager import JobManager

    timers = Timers()
    timers.wrap(app, "wsgi_app", WSGI)
    timers.wrap_hooks(app.before_request_funcs, "hook before")
    timers.wrap_hooks(app.after_request_funcs, "hook after")
    timers.wrap(app.view_functions, "tasks.submit", "view (route, limiter wrapper included)")
    timers.wrap(tasks_routes, "json_body", "  parse: json_body")
    timers.wrap(tasks_routes, "job_request", "  validate: job_request")
    timers.wrap(JobManager, "submit", "  service: JobManager.submit")
    timers.wrap(JobManager, "create_job", "    store: create_job (row built, INSERTs, commit)")
    timers.wrap(QueueAdapter, "enqueue", "    redis: QueueAdapter.enqueue")
    timers.wrap(JobManager, "waiting_for", "  response: waiting_for")
    timers.wrap(tasks_routes, "job_dict", "  response: job_dict")
    timers.wrap(tasks_routes, "jsonify", "  response: jsonify")
    timers.wrap(tasks_routes, "url_for", "  response: url_for")
    return timers


def inproc(store: str, url: str, redis_url: str, server, n: int) -> None:
    """Print one store's per-layer table for ``n`` submissions in process."""
    from backend.api.context import services
    from backend.app import stop_background

    app = _app(redis_url, url)
    client = app.test_client()
    engine = services(app).engine
    redis = Redis.from_url(redis_url)
    counts: collections.Counter = collections.Counter()
    sql_time = [0.0]
    started: dict = {}

    def before(conn, cursor, statement, *_):
        counts["SQL statements"] += 1
        started[id(cursor)] = time.perf_counter()

    def after(conn, cursor, statement, *_):
        sql_time[0] += time.perf_counter() - started.pop(id(cursor), time.perf_counter())

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "commit", lambda *_: counts.update(["commits"]))
    event.listen(engine, "checkout", lambda *_: counts.update(["pool checkouts"]))
    try:
        for _ in range(50):  # warm: connections, compiled statements, RQ's server version
            client.post("/tasks/bench_noop", json={})
        counts.clear()
        sql_time[0] = 0.0
        timers = _layer_timers(app)
        trips = RedisTrips()
        offset = server.server.log_path.stat().st_size if server else 0
        before_commands = _commands(redis)
        trips.sends = 0
        cpu0, server0, t0 = time.process_time(), _server_cpu(server), time.perf_counter()
        for _ in range(n):
            answer = client.post("/tasks/bench_noop", json={})
            if answer.status_code != 202:
                raise RuntimeError(f"POST /tasks/bench_noop on {store}: {answer.status_code}")
        wall = time.perf_counter() - t0
        cpu, server_cpu = time.process_time() - cpu0, _server_cpu(server) - server0
        sends = trips.sends
        trips.undo()
        timers.undo()
        after_commands = _commands(redis)
        commands = collections.Counter({k: after_commands[k] - before_commands.get(k, 0) for k in after_commands})
        commands["cmdstat_info"] -= 1  # our own read of the stats
        said = _statements(server, offset) if server else collections.Counter()
    finally:
        stop_background(app)
    emit(f"\n{store}: {n} submissions in process: {wall / n * 1e6:.0f} µs wall, {cpu / n * 1e6:.0f} µs CPU per request"
         + (f", PostgreSQL's server {server_cpu / n * 1e6:.0f} µs CPU" if server else ""))  # fmt: skip
    emit(f"  {'layer':58} {'wall µs':>7} {'share':>6} {'CPU µs':>7} {'share':>6}")
    whole = wall / n
    for label in timers.labels:
        spent, used = timers.spent[label], timers.cpu[label]
        if spent * 1e6 / n < 0.5:
            continue  # a hook of another blueprint
        emit(f"  {label:58} {spent / n * 1e6:7.0f} {100 * spent / n / whole:5.0f}% {used / n * 1e6:7.0f} "
             f"{100 * used / cpu:5.0f}%")  # fmt: skip
    emit(f"  {'    store: SQL statements executing (DB-API execute)':58} {sql_time[0] / n * 1e6:7.0f}")
    outside = whole - timers.spent[WSGI] / n
    emit(f"  {'test client (outside the WSGI call)':58} {outside * 1e6:7.0f}")
    emit("  per request: " + ", ".join(f"{k} {v / n:.2f}" for k, v in counts.items())
         + f", Redis round trips {sends / n:.2f}, Redis commands {sum(commands.values()) / n:.2f}")  # fmt: skip
    emit("  Redis commands per request: " + ", ".join(
        f"{k.removeprefix('cmdstat_')} {v / n:.2f}" for k, v in commands.most_common() if v))  # fmt: skip
    if said:
        emit("  PostgreSQL received per request: " + ", ".join(f"{k} {v / n:.2f}" for k, v in said.most_common()))


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def through_gunicorn(stack: Stack, store: str, pg, n: int, clients: int, *, drain: bool = True) -> None:
    """CPU µs per job of each process while ``clients`` submit ``n`` jobs (and one worker drains)."""
    worker = stack.worker("ours", True, burst=False, name=f"profile-{store}-{drain}") if drain else None
    url = f"{stack.url}/tasks/bench_noop"
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def post(count: int) -> None:
        with session() as http:
            barrier.wait()
            for _ in range(count):
                r = http.post(url, json={}, timeout=60)
                if r.status_code != 202:
                    raise RuntimeError(f"{url}: {r.status_code}")

    try:
        time.sleep(1.0)  # the worker's start-up is not the submission's
        api = stack.api.worker_pids()
        places = {"API (gunicorn workers)": api, "Redis": [stack.redis.process.pid]}
        if worker is not None:
            places["worker"] = [worker.process.pid]
        threads = [threading.Thread(target=post, args=(c,)) for c in per]
        for t in threads:
            t.start()
        before = {k: _cpu(v) for k, v in places.items()}
        client0, server0 = time.process_time(), _server_cpu(pg)
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if worker is not None:  # its drain is part of each job's cost: counted to the last pop
            redis = stack.redis_client()
            deadline = time.monotonic() + 120
            while redis.llen("rq:queue:default") and time.monotonic() < deadline:
                time.sleep(0.05)
        used = {k: _cpu(v) - before[k] for k, v in places.items()}
        used["clients (this process)"] = time.process_time() - client0
        if pg is not None:
            used["PostgreSQL"] = _server_cpu(pg) - server0
    finally:
        if worker is not None:
            worker.stop()
    how = "one simple worker draining" if drain else "no worker"
    emit(f"\n{store}: {n} jobs through gunicorn, {clients} clients, {how}: {n / wall:.0f} jobs/s")
    for place, seconds in used.items():
        emit(f"  {place:28} {seconds / n * 1e6:7.0f} µs CPU per job")
    per_job = sum(used.values()) / n
    emit(f"  {'all':28} {per_job * 1e6:7.0f} µs CPU per job (on 2 cores: {2 / per_job:.0f} jobs/s at best)")


def submit(args) -> None:
    pg = None if args.no_postgres else start_postgres(log=emit)
    workdir = Workdir()
    redis = start_redis(workdir)
    try:
        if pg is not None:
            pg.server.execute("ALTER SYSTEM SET log_statement = 'all'")
            pg.server.execute("SELECT pg_reload_conf()")
        targets = [(SQLITE, f"sqlite:///{workdir / 'profile.db'}", None)]
        if pg is not None:
            targets.append((POSTGRESQL, pg.database(), pg))
        for store, url, server in targets:
            inproc(store, url, redis.url, server, args.n)
        if pg is not None:
            pg.server.execute("ALTER SYSTEM SET log_statement = 'none'")
            pg.server.execute("SELECT pg_reload_conf()")
        if args.http:
            with store_stacks(workdir, "profile-submit", pg) as stacks:
                for store, stack in stacks.items():
                    for drain in (False, True):
                        through_gunicorn(stack, store, pg if store == POSTGRESQL else None, args.http, 8, drain=drain)
    finally:
        redis.stop()
        workdir.cleanup()
        if pg is not None:
            pg.stop()
