"""b. Submission: ``POST /tasks/bench_noop`` from C keep-alive clients, against the same
number of ``Queue.enqueue`` calls from C clients (threads, each with its own connection)."""

from __future__ import annotations

import threading
import time

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Stack, Workdir, emit, ms, pct, session, table


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


def run(workdir: Workdir, results: Results, *, count: int, clients: int) -> None:
    with Stack(workdir, "submission") as stack:
        url = f"{stack.url}/tasks/bench_noop"

        def post(http) -> None:
            r = http.post(url, json={"args": [], "kwargs": {}}, timeout=60)
            if r.status_code != 202:
                raise RuntimeError(f"POST {url} answered {r.status_code}: {r.text[:200]}")

        def enqueue(queue: Queue) -> None:
            queue.enqueue("bench.rawtasks.noop")

        # Warm both paths (connections, first requests of each gunicorn worker).
        _threads(clients * 4, clients, session, post)
        _threads(clients * 4, clients, lambda: Queue(RAW_QUEUE, connection=stack.redis_client(),
                                                     serializer=JSONSerializer), enqueue)  # fmt: skip
        ours_s, ours_lat = _threads(count, clients, session, post)
        raw_s, raw_lat = _threads(
            count,
            clients,
            lambda: Queue(RAW_QUEUE, connection=stack.redis_client(), serializer=JSONSerializer),
            enqueue,
        )
    ours_rate, raw_rate = count / ours_s, count / raw_s
    ratio = ours_rate / raw_rate
    emit(
        table(
            f"b. Submission: {count} jobs from {clients} concurrent clients",
            ["path", "jobs/s", "p50 ms", "p99 ms"],
            [
                ["POST /tasks/bench_noop (ours)", f"{ours_rate:.0f}", ms(pct(ours_lat, 50)), ms(pct(ours_lat, 99))],
                ["Queue.enqueue (raw RQ)", f"{raw_rate:.0f}", ms(pct(raw_lat, 50)), ms(pct(raw_lat, 99))],
                ["ours/raw", f"{ratio:.2f}", "", ""],
            ],
        )
    )
    results.ratio(f"submission C={clients} (ours/raw jobs/s)", ratio)
    results.check(f"submission C={clients}: ours/raw jobs/s", f"{ratio:.2f}", "(no target)", None)
