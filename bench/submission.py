"""b. Submission: ``POST /tasks/bench_noop`` from C keep-alive clients, against the same
number of ``Queue.enqueue`` calls from C clients (threads, each with its own connection); ours
on SQLite and, when it runs, on PostgreSQL."""

from __future__ import annotations

import threading
import time

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Stack, Workdir, emit, ms, pct, session, table
from bench.stores import POSTGRESQL, SQLITE, store_stacks

RAW = "raw RQ"


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


def run(workdir: Workdir, results: Results, *, count: int, clients: int, rounds: int = 3, pg=None) -> None:
    """``rounds`` alternating rounds of ``count`` submissions on each side (ours on each store, raw
    RQ), the order rotating; each side's best round is compared."""
    with store_stacks(workdir, "submission", pg) as stacks:
        sqlite = stacks[SQLITE]

        def post_to(stack: Stack):
            url = f"{stack.url}/tasks/bench_noop"

            def post(http) -> None:
                r = http.post(url, json={"args": [], "kwargs": {}}, timeout=60)
                if r.status_code != 202:
                    raise RuntimeError(f"POST {url} answered {r.status_code}: {r.text[:200]}")

            return post

        def enqueue(queue: Queue) -> None:
            queue.enqueue("bench.rawtasks.noop")

        def raw_client() -> Queue:
            return Queue(RAW_QUEUE, connection=sqlite.redis_client(), serializer=JSONSerializer)

        sides = {store: (session, post_to(stack)) for store, stack in stacks.items()}
        sides[RAW] = (raw_client, enqueue)
        # Warm every path (connections, first requests of each gunicorn worker).
        for make_client, call in sides.values():
            _threads(clients * 4, clients, make_client, call)
        runs: dict[str, list[tuple[float, list[float]]]] = {side: [] for side in sides}
        order = list(sides)
        for i in range(rounds):
            for side in order[i % len(order) :] + order[: i % len(order)]:
                runs[side].append(_threads(count, clients, *sides[side]))
    best = {side: min(got, key=lambda r: r[0]) for side, got in runs.items()}
    rates = {side: count / elapsed for side, (elapsed, _lat) in best.items()}
    rows = []
    for side, (_elapsed, lat) in best.items():
        path = "Queue.enqueue (raw RQ)" if side == RAW else f"POST /tasks/bench_noop (ours, {side})"
        each = " ".join(f"{count / e:.0f}" for e, _ in runs[side])
        ratio = "" if side == RAW else f"{rates[side] / rates[RAW]:.2f}"
        rows.append([path, f"{rates[side]:.0f}", ms(pct(lat, 50)), ms(pct(lat, 99)), each, ratio])
    emit(
        table(
            f"b. Submission: {count} jobs from {clients} concurrent clients, best of {rounds} alternating rounds",
            ["path", "jobs/s", "p50 ms", "p99 ms", "each round's jobs/s", "ours/raw"],
            rows,
        )
    )
    for store in stacks:
        ratio = rates[store] / rates[RAW]
        where = "" if store == SQLITE else f" on {store}"
        results.ratio(f"submission C={clients}{where} (ours/raw jobs/s)", ratio)
        results.check(f"submission C={clients}{where}: ours/raw jobs/s", f"{ratio:.2f}", "(no target)", None)
    if POSTGRESQL in stacks:
        results.stores_compared(
            f"submission C={clients} jobs/s",
            f"{rates[SQLITE]:.0f}",
            f"{rates[POSTGRESQL]:.0f}",
            rates[POSTGRESQL] / rates[SQLITE],
        )
