"""b. Submission (T1): ``POST /tasks/bench_noop`` from C keep-alive clients, ours on SQLite and, when
it runs, on PostgreSQL, against Celery + Flower's ``POST /api/task/async-apply/bench_noop`` (the
peer, ``bench/peer.py``) and against ``Queue.enqueue`` from C clients (threads, each with its own
connection), each side with one worker draining its queue meanwhile (issue 17's condition): ours
one ``backend/worker.py --simple``, raw RQ one ``rq worker`` (SimpleWorker), the peer one Celery
worker (solo pool).

The sides take turns in rotating rounds; after each round the side's worker finishes its backlog
(untimed) before the next side starts, so no side's round pays for another's drain. Each side's
best round is compared. Targets: ours >= 1.5x Flower and >= 0.5x raw ``Queue.enqueue``.

    .venv/bin/python -m bench.submission [--count 2000] [--rounds 3] [--no-postgres] [--no-flower]
    .venv/bin/python -m bench.submission --baseline-tree /tmp/base   # before/after: a checkout of
                                                                     # another commit, same rounds
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Workdir, WorkerProc, emit, ms, pct, session, table
from bench.profile_stores import _server_cpu
from bench.stores import POSTGRESQL, SQLITE, start_postgres, store_stacks

RAW = "raw RQ"
#: T1's second half: ours against raw ``Queue.enqueue`` from as many clients (issue 17).
RAW_TARGET = 0.5
#: Longest wait for a side's worker to finish its backlog after a round.
DRAIN_TIMEOUT = 120.0


def _threads(count: int, clients: int, make_client, call) -> tuple[float, list[float]]:
    """Run ``count`` calls spread over ``clients`` threads; (elapsed seconds, latencies)."""
    per = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def work(i: int) -> None:
        client = make_client()
        try:
            barrier.wait()
            for _ in range(per[i]):
                t0 = time.perf_counter()
                call(client)
                latencies[i].append(time.perf_counter() - t0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed, [x for lst in latencies for x in lst]


def _drained(redis, keys: list[str]) -> None:
    """Wait until every list of ``keys`` on ``redis`` is empty (the side's worker took its backlog)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if not any(redis.llen(key) for key in keys):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the worker did not drain {keys} within {DRAIN_TIMEOUT:.0f} s")


def _post_to(url: str):
    def post(http) -> None:
        r = http.post(url, json={"args": [], "kwargs": {}}, timeout=60)
        if r.status_code != 202:
            raise RuntimeError(f"POST {url} answered {r.status_code}: {r.text[:200]}")

    return post


def _enqueue(queue: Queue) -> None:
    queue.enqueue("bench.rawtasks.noop")


def run(
    workdir: Workdir,
    results: Results,
    *,
    count: int,
    clients: int,
    rounds: int = 3,
    pg=None,
    flower: bool = True,
    baseline: Path | None = None,
) -> dict[str, list[float]]:
    """``rounds`` rotating rounds of ``count`` submissions on each side; returns each side's rates.

    ``baseline``: a checkout of another commit (``git worktree add``) whose API is measured in the
    same rounds, on each store ("<store> before"), for a before/after figure."""
    with contextlib.ExitStack() as stack:
        stacks = stack.enter_context(store_stacks(workdir, "submission", pg))
        if baseline is not None:
            from bench.tree_stack import TreeStack

            for store in list(stacks):
                url = None if store == SQLITE else pg.database()
                stacks[f"{store} before"] = stack.enter_context(
                    TreeStack(workdir, f"submission-before-{store.lower()}", baseline, database_url=url)
                )
        sqlite = stacks[SQLITE]
        sides: dict[str, Side] = {}
        for name, st in stacks.items():
            worker = st.worker("ours", True, burst=False, name=f"drain-{name.replace(' ', '-').lower()}")
            sides[name] = Side(
                session,
                _post_to(f"{st.url}/tasks/bench_noop"),
                st.redis_client(),
                ["rq:queue:default"],
                # Read when measured: gunicorn may have replaced a worker process.
                lambda st=st, worker=worker: [*st.api.worker_pids(), worker.process.pid, st.redis.process.pid],
                pg if name.startswith(POSTGRESQL) else None,
            )
        raw_worker = WorkerProc("raw", True, "drain-raw", sqlite.env, workdir / "drain-raw.log", burst=False)
        stack.callback(raw_worker.stop)

        def raw_client() -> Queue:
            return Queue(RAW_QUEUE, connection=sqlite.redis_client(), serializer=JSONSerializer)

        sides[RAW] = Side(
            raw_client,
            _enqueue,
            sqlite.redis_client(),
            [f"rq:queue:{RAW_QUEUE}"],
            lambda: [raw_worker.process.pid, sqlite.redis.process.pid],
        )
        peer = None
        if flower:
            from bench import peer as peer_module

            peer = peer_module
            celery = stack.enter_context(peer.celery_flower(workdir, log=emit))
            sides[peer.FLOWER] = Side(
                session,
                celery.submit,
                Redis.from_url(celery.redis.url),
                ["celery"],
                lambda: [*(p.pid for p in celery.processes.values()), celery.redis.process.pid],
            )
        # Warm every path (connections, first requests of each gunicorn worker), drained.
        for side in sides.values():
            _threads(clients * 4, clients, side.make_client, side.call)
            _drained(side.redis, side.keys)
        runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in sides}
        order = list(sides)
        for i in range(rounds):
            for name in order[i % len(order) :] + order[: i % len(order)]:
                side = sides[name]
                before = side.cpu()
                runs[name].append(_threads(count, clients, side.make_client, side.call))
                _drained(side.redis, side.keys)
                side.spent.append(tuple(after - was for after, was in zip(side.cpu(), before, strict=True)))
    _report(results, runs, sides, count=count, clients=clients, rounds=rounds, peer=peer)
    return {name: [count / e for e, _ in got] for name, got in runs.items()}


@dataclass
class Side:
    """One side of the rounds: its client, its call, the lists its worker drains and its processes."""

    make_client: Callable
    call: Callable
    redis: Redis
    keys: list[str]
    #: The pids of the side's servers: its API (or Flower), its worker and its Redis.
    pids: Callable[[], list[int]]
    pg: object = None
    #: CPU seconds of each round, from its first call to its worker's drain: (servers, clients).
    spent: list[tuple[float, float]] = field(default_factory=list)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by the side's servers (PostgreSQL's too), and by this process."""
        total = _server_cpu(self.pg) if self.pg is not None else 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                for proc in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True)):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        times = proc.cpu_times()
                        total += times.user + times.system
        return total, time.process_time()


def _label(side: str) -> str:
    if side == RAW:
        return "Queue.enqueue (raw RQ)"
    if side in (SQLITE, POSTGRESQL) or side.endswith(" before"):
        return f"POST /tasks/bench_noop (ours, {side})"
    return f"POST /api/task/async-apply/bench_noop ({side})"


def _report(results: Results, runs: dict, sides: dict, *, count: int, clients: int, rounds: int, peer) -> None:
    best = {side: min(got, key=lambda r: r[0]) for side, got in runs.items()}
    # CPU per job, the median round's: what the rate would be on the 2 cores with nothing else.
    servers = {name: statistics.median(s for s, _ in side.spent) / count for name, side in sides.items()}
    clients_cpu = {name: statistics.median(c for _, c in side.spent) / count for name, side in sides.items()}
    rates = {side: count / elapsed for side, (elapsed, _lat) in best.items()}
    rows = []
    for side, (_elapsed, lat) in best.items():
        each = [count / e for e, _ in runs[side]]
        ratio = "" if side == RAW else f"{rates[side] / rates[RAW]:.2f}"
        rows.append(
            [
                _label(side),
                f"{rates[side]:.0f}",
                f"{statistics.median(each):.0f}",
                ms(pct(lat, 50)),
                ms(pct(lat, 99)),
                " ".join(f"{r:.0f}" for r in each),
                ratio,
                f"{servers[side] * 1e6:.0f}",
                f"{clients_cpu[side] * 1e6:.0f}",
            ]
        )
    emit(
        table(
            f"b. Submission: {count} jobs from {clients} concurrent clients, one worker draining per side, "
            f"best of {rounds} rotating rounds",
            [
                "path",
                "jobs/s (best)",
                "median",
                "p50 ms",
                "p99 ms",
                "each round's jobs/s",
                "/raw",
                "servers' CPU µs/job",
                "clients' CPU µs/job",
            ],  # fmt: skip
            rows,
        )
    )
    emit("servers' CPU: the side's API (or Flower), its draining worker, its Redis (and PostgreSQL), from the")
    emit("round's first call to the end of its worker's drain, median round; clients': this process's threads.")
    if peer is not None and peer.FLOWER in servers:
        for store in (SQLITE, POSTGRESQL):
            if store in servers:
                by_cpu = (servers[peer.FLOWER] + clients_cpu[peer.FLOWER]) / (servers[store] + clients_cpu[store])
                emit(f"{store}: ours/{peer.FLOWER} by CPU per job (servers + clients): {by_cpu:.2f}")
    for side in runs:
        if not side.endswith(" before"):
            continue
        store = side.removesuffix(" before")
        each = " ".join(f"{a / b:.2f}" for (b, _), (a, _) in zip(runs[store], runs[side], strict=True))
        emit(f"{store}: after/before {rates[store] / rates[side]:.2f} by the best rounds (each round: {each})")
    for store in (SQLITE, POSTGRESQL):
        if store not in rates:
            continue
        ratio = rates[store] / rates[RAW]
        where = "" if store == SQLITE else f" on {store}"
        results.ratio(f"submission C={clients}{where} (ours/raw jobs/s)", ratio)
        results.check(
            f"T1 submission C={clients}{where}: ours/raw Queue.enqueue jobs/s",
            f"{ratio:.2f}",
            f">= {RAW_TARGET:.2f}",
            ratio >= RAW_TARGET,
        )
    if peer is not None:
        peer.check_submission(results, rates, clients)
    if POSTGRESQL in rates:
        results.stores_compared(
            f"submission C={clients} jobs/s",
            f"{rates[SQLITE]:.0f}",
            f"{rates[POSTGRESQL]:.0f}",
            rates[POSTGRESQL] / rates[SQLITE],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.submission", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="submissions per side and round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="a checkout of the commit to compare with")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    pg = None if args.no_postgres else start_postgres(log=emit)
    workdir = Workdir()
    results = Results()
    try:
        run(
            workdir,
            results,
            count=args.count,
            clients=args.clients,
            rounds=args.rounds,
            pg=pg,
            flower=not args.no_flower,
            baseline=args.baseline_tree,
        )
    finally:
        if args.keep:
            emit(f"kept {workdir.path}")
        else:
            workdir.cleanup()
        if pg is not None:
            pg.stop()
    for check in results.checks:
        emit(f"{check.name}: {check.measured} (target {check.target}) {'PASS' if check.ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
