"""Run the benchmarks, each against its baseline measured in the same invocation on the same
Redis and machine, and print every table, every ratio and each target with PASS/MISS. Ours runs
on SQLite and on a PostgreSQL server the bench starts itself (when PostgreSQL is installed; else
it says why and measures SQLite only), and each PostgreSQL figure is set beside its SQLite one.

By default (what `make bench` runs) only the benchmarks that check issue 17's targets T1-T6, in
under 15 minutes; the summary prints those targets first. `--all` (`make bench-all`) runs every one.

    .venv/bin/python -m bench                 # issue 17's: a, b, c, e, h, k (what `make bench` runs)
    .venv/bin/python bench/run_all.py         # the same
    .venv/bin/python -m bench --all           # every benchmark (what `make bench-all` runs)
    .venv/bin/python -m bench --only a,c      # some: a execution (T4), b submission (T1), c polling (T3),
                                              #       d store scale, e latency (T5), f memory,
                                              #       g copy-store (into PostgreSQL),
                                              #       h event streams (1,000 open; latency) (T6),
                                              #       i fair share on/off (execution),
                                              #       j pruning under load (submission p99),
                                              #       k against Celery + Flower (T2; polling)
    .venv/bin/python -m bench --quick         # small counts, to check that it all works
    .venv/bin/python -m bench --no-postgres   # SQLite only
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run_all.py`: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from importlib.metadata import version  # noqa: E402

from backend.dev.redis_server import redis_server_binary  # noqa: E402
from bench import (  # noqa: E402,E501
    copy_store,
    execution,
    fair_share,
    latency,
    memory,
    peer,
    peer_bench,
    polling,
    prune,
    store_scale,
    stores,
    streams,
    submission,
)
from bench.common import PG_FLOOR, Check, Results, Workdir, emit, table  # noqa: E402

#: Issue 17's targets: what `make bench` must print with PASS/MISS, and which benchmark checks each
#: (their checks' names start with "T<n> ").
TARGETS = {
    "T1": ("b", "submission over HTTP, 8 clients, a worker draining: >= 1.5x Flower, >= 0.5x raw Queue.enqueue"),
    "T2": ("k", "end to end, N jobs over HTTP until all reported done: >= 1.5x Celery + Flower"),
    "T3": ("c", "polling a finished job GET /jobs/<id>: >= 0.9x the hello-world route"),
    "T4": ("a", "execution: >= 1.0x raw RQ, SimpleWorker and forking Worker, W = 1 and 2"),
    "T5": ("e", "enqueue-to-start p50 on an idle simple worker: < 4 ms"),
    "T6": ("h", "1,000 open event streams: GET /jobs/<id> >= 0.8x its figure without them"),
}
ISSUE17 = ",".join(sorted({key for key, _what in TARGETS.values()}))
EVERY = "a,b,c,d,e,f,g,h,i,j,k"


def machine(pg: stores.Postgres | None) -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[2]
    except (OSError, subprocess.CalledProcessError, FileNotFoundError, IndexError):
        redis_version = "unknown"
    wrk = shutil.which("wrk")
    wrk_version = "not installed (Python client)"
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        wrk_version = (out.stdout or out.stderr).split()[1] if (out.stdout or out.stderr) else "installed"
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("RQ", version("rq")),
        ("redis-py", version("redis")),
        ("Redis server", redis_version),
        ("Flask", version("flask")),
        ("gunicorn", version("gunicorn")),
        ("gevent", version("gevent")),
        ("SQLAlchemy", version("sqlalchemy")),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", f"{pg.version} (durable commits: {', '.join(stores.DURABLE)} on)" if pg else "not run"),
        ("psycopg", version("psycopg") if pg else "-"),
        ("wrk", wrk_version),
        ("peer (k, b)", peer.versions()),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmarks of the job service.")
    parser.add_argument("--only", default=ISSUE17, help=f"which benchmarks, e.g. a,c (default: issue 17's, {ISSUE17})")
    parser.add_argument("--all", action="store_true", help=f"every benchmark ({EVERY})")
    parser.add_argument("--quick", action="store_true", help="small counts: checks the benchmarks work, not speed")
    parser.add_argument("--exec-n-simple", type=int, default=1200, help="jobs per execution run, SimpleWorker")
    parser.add_argument("--exec-n-fork", type=int, default=400, help="jobs per execution run, forking Worker")
    parser.add_argument("--fair-n", type=int, default=2000, help="jobs per fair share on/off run (SimpleWorker)")
    # 2 rounds of a, not 3, and these counts, so that `make bench` fits in 15 minutes (a is its longest
    # part: 4 configurations x 3 sides x N jobs each round; at 2,000 / 500 jobs a took 422 s of 1,030 on
    # 2026-11-30's VM); more with --exec-rounds and the --*-n options.
    parser.add_argument("--exec-rounds", type=int, default=2, help="alternating ours/raw runs per configuration")
    parser.add_argument("--submit-n", type=int, default=1500, help="submissions per side")
    parser.add_argument("--submit-rounds", type=int, default=3, help="alternating rounds per side (best is kept)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent submission clients")
    parser.add_argument("--poll-seconds", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--poll-rounds", type=int, default=7, help="alternating ours/hello rounds (median ratio)")
    parser.add_argument(
        "--e2e-n", type=int, default=1000, help="jobs per end-to-end round in k (ours vs Celery+Flower)"
    )
    parser.add_argument("--e2e-rounds", type=int, default=3, help="rotating end-to-end rounds per side in k")
    parser.add_argument("--peer-poll-rounds", type=int, default=3, help="rotating polling rounds per server in k")
    parser.add_argument("--store-sizes", default="1000,1000000", help="job counts of the stores compared")
    parser.add_argument("--store-samples", type=int, default=400, help="requests per endpoint and size")
    parser.add_argument("--no-cache", action="store_true", help="build the large store instead of using bench/.cache")
    parser.add_argument("--latency-simple", type=int, default=200, help="jobs measured, simple worker")
    parser.add_argument("--latency-fork", type=int, default=60, help="jobs measured, forking worker")
    parser.add_argument("--memory-jobs", type=int, default=10000, help="jobs run before measuring memory")
    parser.add_argument("--copy-jobs", type=int, default=100_000, help="jobs of the store copy-store copies")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open in h")
    parser.add_argument("--streams-seconds", type=float, default=3, help="seconds of each load in each round of h")
    parser.add_argument("--streams-samples", type=int, default=30, help="event latency samples per store in h")
    parser.add_argument("--prune-n", type=int, default=500_000, help="ended jobs the store of j holds and prunes")
    parser.add_argument("--prune-seconds", type=float, default=20, help="seconds of submissions without the prune in j")
    parser.add_argument(
        "--prune-window", type=float, default=60, help="seconds of the prune measured in j, then it is stopped (0: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    parser.add_argument("--no-postgres", action="store_true", help="measure on SQLite only")
    args = parser.parse_args(argv)
    if args.all:
        args.only = EVERY
    if args.quick:
        args.exec_n_simple, args.exec_n_fork, args.submit_n, args.exec_rounds, args.submit_rounds = 200, 50, 200, 1, 1
        args.poll_seconds, args.poll_rounds, args.store_sizes, args.store_samples = 1, 3, "1000,20000", 50
        args.latency_simple, args.latency_fork, args.memory_jobs, args.copy_jobs = 20, 10, 1000, 2000
        args.streams, args.fair_n = 100, 200
        args.prune_n, args.prune_seconds = 5000, 3
        args.e2e_n, args.e2e_rounds, args.peer_poll_rounds = 200, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (timeout, a CI job cancelled) unwinds like Ctrl-C, so every server this run started stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    selected = {part.strip().lower() for part in args.only.split(",") if part.strip()}
    pg = None if args.no_postgres else stores.start_postgres(log=emit)
    emit(table("Machine", ["what", "value"], [list(row) for row in machine(pg)]))
    emit(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    workdir = Workdir()
    emit(f"temporary directory: {workdir.path}")
    results = Results()
    failures: list[str] = []
    plan = [
        ("a", "execution", lambda: execution.run(workdir, results, n_simple=args.exec_n_simple,
                                                 n_fork=args.exec_n_fork, rounds=args.exec_rounds, pg=pg)),
        ("b", "submission", lambda: submission.run(workdir, results, count=args.submit_n, clients=args.clients,
                                                   rounds=args.submit_rounds, pg=pg)),
        ("c", "polling", lambda: polling.run(workdir, results, connections=8, duration=args.poll_seconds,
                                             rounds=args.poll_rounds, pg=pg)),
        ("d", "store scale", lambda: store_scale.run(
            workdir, results, sizes=tuple(int(s) for s in args.store_sizes.split(",")),
            samples=args.store_samples, use_cache=not args.no_cache, pg=pg)),
        ("e", "latency", lambda: latency.run(workdir, results, samples_simple=args.latency_simple,
                                             samples_fork=args.latency_fork, pg=pg)),
        ("f", "memory", lambda: memory.run(workdir, results, count=args.memory_jobs)),
        ("g", "copy-store", lambda: copy_store.run(workdir, results, jobs=args.copy_jobs, pg=pg)),
        ("h", "event streams", lambda: streams.run(workdir, results, streams=args.streams, seconds=args.streams_seconds,
                                                   samples=20 if args.quick else args.streams_samples, pg=pg)),
        ("i", "fair share", lambda: fair_share.run(workdir, results, n=args.fair_n, rounds=args.exec_rounds)),
        ("j", "pruning under load", lambda: prune.run(workdir, results, total=args.prune_n, clients=args.clients,
                                                      seconds=args.prune_seconds, window=args.prune_window, pg=pg)),
        ("k", "against Celery + Flower", lambda: peer_bench.run(
            workdir, results, count=args.e2e_n, clients=args.clients, e2e_rounds=args.e2e_rounds, connections=8,
            poll_seconds=min(args.poll_seconds, 2), poll_rounds=args.peer_poll_rounds, pg=pg)),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        for key, name, bench in plan:
            if key not in selected:
                continue
            t0 = time.monotonic()
            emit(f"\n== {key}. {name} (load average {os.getloadavg()[0]:.2f}) ==")
            try:
                bench()
            except Exception:
                failures.append(name)
                emit(f"!! {name} failed:\n{traceback.format_exc()}")
            emit(f"({name}: {time.monotonic() - t0:.0f} s)")
    finally:
        if args.keep or failures:
            emit(f"kept {workdir.path} (logs of every process)")
        else:
            workdir.cleanup()
        if pg is not None:
            pg.stop()
    summary(results, failures, time.monotonic() - started, selected)
    return 1 if failures else 0


def _target_of(check: Check) -> str | None:
    """The issue-17 target a check is for ("T3" for one named "T3 polling ..."), else None."""
    head = check.name.split(" ", 1)[0]
    return head if head in TARGETS else None


def summary(results: Results, failures: list[str], elapsed: float, selected: set[str]) -> None:
    def result(c: Check) -> str:
        return "—" if c.ok is None else ("PASS" if c.ok else "MISS")

    ours = [c for c in results.checks if _target_of(c)]
    rows = []
    for target, (key, what) in TARGETS.items():
        mine = [[c.name, c.measured, c.target, result(c)] for c in ours if _target_of(c) == target]
        why = "not selected" if key not in selected else "benchmark failed or checked nothing"
        rows.extend(mine or [[f"{target} {what}", "—", "—", f"not measured ({key}: {why})"]])
    title = "Summary: issue 17 targets (each ours/baseline of the same run)"
    emit(table(title, ["figure", "measured", "target", "result"], rows))
    emit(
        table(
            "Summary: other targets",
            ["figure", "measured", "target", "result"],
            [[c.name, c.measured, c.target, result(c)] for c in results.checks if not _target_of(c)],
        )
    )
    emit(table("Summary: every ratio", ["ratio", "value"], [[name, f"{value:.2f}"] for name, value in results.ratios]))
    if results.stores:
        emit(
            table(
                "Summary: PostgreSQL beside SQLite (same run)",
                ["figure", "SQLite", "PostgreSQL", "PostgreSQL/SQLite (>1: PostgreSQL faster)", f">= {PG_FLOOR:.2f}"],
                [[name, a, b, f"{speed:.2f}", "PASS" if speed >= PG_FLOOR else "MISS"]
                 for name, a, b, speed in results.stores],
            )
        )  # fmt: skip
    passed = sum(1 for c in results.checks if c.ok)
    missed = sum(1 for c in results.checks if c.ok is False)
    passed17 = sum(1 for c in ours if c.ok)
    missed17 = sum(1 for c in ours if c.ok is False)
    emit(
        f"\nissue 17: {passed17} PASS, {missed17} MISS; all targets: {passed} PASS, {missed} MISS; total "
        f"{elapsed:.0f} s; load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if failures:
        emit(f"benchmarks that failed to run: {', '.join(failures)}")


if __name__ == "__main__":
    sys.exit(main())
