"""Where the time goes: the profiles behind BENCHMARKS.md, re-runnable.

python -m bench.profile inproc           # per endpoint, in-process: ms, SQL statements, commits,
                                         #   cProfile time by package, and two micro-benchmarks
python -m bench.profile phases           # a worker's time per job: its reports vs the rest
python -m bench.profile spy drain|poll|submit [--py-spy PATH]
                                         # py-spy under load; needs py-spy, e.g.
                                         #   python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install py-spy
python -m bench.profile cpu [-w 2]       # CPU seconds per job of the API, the workers and Redis
                                         #   while W simple workers drain N jobs, ours and raw RQ
python -m bench.profile query            # the tenant list queries on the 1M store, with and
                                         #   without a composite index (on a scratch copy)
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import logging
import pstats
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench import storedb
from bench.common import (
    CACHE_DIR,
    PY,
    ROOT,
    TOKEN,
    Stack,
    Workdir,
    cpu_seconds,
    emit,
    ms,
    pct,
    session,
    start_hello,
    start_redis,
    submit_batches,
    wrk,
)

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

    from backend.store import counts
    from backend.store.models import Job

    workdir = Workdir()
    redis = start_redis(workdir)
    try:
        app = _app(workdir, redis.url)
        client = app.test_client()
        engine = app.extensions["engine"]
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
        sessions = app.extensions["jobs"].sessions
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
        manager = app.extensions["jobs"]
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


# -- a worker's phases --------------------------------------------------------------------


def phases(args) -> None:
    workdir = Workdir()
    try:
        with Stack(workdir, "phases") as stack:
            for simple, n in ((True, args.n), (False, max(50, args.n // 4))):
                submit_batches(stack.url, "bench_noop", n)
                timings = workdir / f"timings-{simple}.jsonl"
                command = [PY, str(ROOT / "bench" / "timed_worker.py"), "--name", f"timed-{simple}", "--burst"]
                if simple:
                    command.append("--simple")
                t0 = time.perf_counter()
                subprocess.run(command, cwd=ROOT, env=dict(stack.env, BENCH_TIMINGS=str(timings)), check=True)
                elapsed = time.perf_counter() - t0
                emit(
                    f"\n{'SimpleWorker' if simple else 'forking Worker'}: {n} jobs, {elapsed / n * 1000:.1f} ms per job"
                )
                groups: dict[str, list[float]] = collections.defaultdict(list)
                for line in timings.read_text().splitlines():
                    record = json.loads(line)
                    groups[record["what"]].append(record["seconds"])
                for what, values in groups.items():
                    emit(
                        f"  {what:48} p50 {ms(pct(values, 50)):>6} ms  mean {sum(values) / len(values) * 1000:6.2f} ms"
                    )
    finally:
        workdir.cleanup()


# -- py-spy -------------------------------------------------------------------------------


def _spy(py_spy: str, pid: int, out: Path, *flags: str) -> subprocess.Popen:
    command = [py_spy, "record", "--format", "raw", "--rate", "200", "--subprocesses", "-o", str(out)]
    return subprocess.Popen([*command, *flags, "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)


def summarize(path: Path, *, only: str | None = None, top: int = 30) -> None:
    """Inclusive share of the frames in py-spy's folded stacks (line numbers dropped)."""
    total = 0
    inclusive: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if only and only not in stack:
            continue
        n = int(count)
        total += n
        frames = {re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")}
        inclusive.update({frame: n for frame in frames})
    emit(f"{path.name}: {total} samples" + (f" in stacks through {only!r}" if only else ""))
    shown = 0
    for frame, n in inclusive.most_common():
        if frame.startswith("process ") or "threading.py" in frame or "runpy" in frame:
            continue
        emit(f"  {100 * n / total:5.1f}%  {frame}")
        shown += 1
        if shown >= top:
            break


def spy(args) -> None:
    py_spy = args.py_spy or shutil.which("py-spy") or "/tmp/benchvenv/bin/py-spy"
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install py-spy")
    workdir = Workdir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with Stack(workdir, "spy") as stack:
            if args.scenario == "drain":
                submit_batches(stack.url, "bench_noop", args.n)
                api = _spy(py_spy, stack.api.process.pid, out / "drain-api.txt", "--gil")
                worker = stack.worker("ours", True)
                wspy = _spy(py_spy, worker.process.pid, out / "drain-worker.txt", "--idle", "--nonblocking")
                worker.wait(timeout=600)
                _stop(api)
                wspy.wait(timeout=60)
                summarize(out / "drain-api.txt", only="ThreadWorker.handle")
                summarize(out / "drain-api.txt", only="PeriodicThread", top=8)
                summarize(out / "drain-worker.txt", only="BaseWorker.work", top=20)
            elif args.scenario == "poll":
                job_id = session().post(f"{stack.url}/tasks/bench_noop", json={}).json()["job_id"]
                stack.worker("ours", True).wait(timeout=120)
                hello = start_hello(stack.env, workdir)
                try:
                    for name, server, url in (
                        ("poll-ours", stack.api, f"{stack.url}/jobs/{job_id}"),
                        ("poll-hello", hello, f"{hello.url}/hello"),
                    ):
                        wrk(url, 8, 2)
                        recorder = _spy(py_spy, server.process.pid, out / f"{name}.txt", "--gil")
                        time.sleep(1)
                        got = wrk(url, 8, 8)
                        _stop(recorder)
                        emit(f"{name}: {got['rate']:.0f} req/s, p50 {ms(got['p50'])} ms (while profiled)")
                        summarize(out / f"{name}.txt", only="ThreadWorker.handle", top=25)
                finally:
                    hello.stop()
            elif args.scenario == "submit":
                from bench.submission import _threads

                url = f"{stack.url}/tasks/bench_noop"

                def post(http) -> None:
                    http.post(url, json={}, timeout=60)

                _threads(64, 8, session, post)
                recorder = _spy(py_spy, stack.api.process.pid, out / "submit-api.txt", "--idle")
                time.sleep(1)
                elapsed, latencies = _threads(args.n, 8, session, post)
                _stop(recorder)
                p50, p99 = ms(pct(latencies, 50)), ms(pct(latencies, 99))
                emit(f"submit: {args.n / elapsed:.0f}/s, p50 {p50} ms, p99 {p99} ms")
                summarize(out / "submit-api.txt", only="ThreadWorker.handle", top=25)
    finally:
        workdir.cleanup()
    emit(f"folded stacks in {out}")


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


# -- CPU by process -----------------------------------------------------------------------


def cpu(args) -> None:
    """Where the CPU goes while W simple workers drain N jobs: ours against raw RQ.

    Counted from the moment the workers start (submission excluded) to the end of the drain;
    the workers' CPU is read from the exit accounting of this process's children.
    """
    import os

    from bench.execution import _ours_span, drain, enqueue_raw

    workdir = Workdir()
    try:
        with Stack(workdir, "cpu") as stack:
            api_pids, redis_pid = [stack.api.process.pid, *stack.api.worker_pids()], [stack.redis.process.pid]
            for kind in ("ours", "raw"):
                ids = submit_batches(stack.url, "bench_noop", args.n) if kind == "ours" else enqueue_raw(stack, args.n)
                api0, redis0, children0 = cpu_seconds(api_pids), cpu_seconds(redis_pid), os.times()
                t0 = drain(stack, kind, True, args.w)
                if kind == "ours":
                    while _ours_span(stack.db_path, ids)[2] < args.n:
                        time.sleep(0.01)
                elapsed = time.time() - t0
                children1 = os.times()
                workers = (children1.children_user - children0.children_user) + (
                    children1.children_system - children0.children_system
                )
                use = {
                    "api": cpu_seconds(api_pids) - api0,
                    "workers": workers,
                    "redis": cpu_seconds(redis_pid) - redis0,
                }
                emit(
                    f"{kind}: W={args.w} N={args.n}: {args.n / elapsed:.0f} jobs/s; CPU ms per job: "
                    + ", ".join(f"{name} {1e3 * value / args.n:.2f}" for name, value in use.items())
                    + f", total {1e3 * sum(use.values()) / args.n:.2f}"
                )
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
    p = sub.add_parser("query")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.set_defaults(func=query)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
