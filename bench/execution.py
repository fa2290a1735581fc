"""a. Execution: N no-op jobs drained by W burst workers, ours against raw RQ.

Ours: N jobs submitted through ``POST /tasks/bench_noop/batch`` (not timed), then W
``backend/worker.py --burst`` workers; elapsed = from starting the workers to the moment the
store recorded the last completion (the last ``updated_at``, written by the API when it applies
a report; ``completed_at`` is the worker's time of the end), once the store says COMPLETED for
all N.
Raw: the same N calls of the same function put on a queue with ``Queue.enqueue`` (JSON
serializer), then W ``rq worker --burst`` of the same class; elapsed = from starting the
workers to the last job's ``ended_at`` in RQ.
Both sides also get a steady-state rate: N / (last end - first start), without start-up.

Each configuration runs ``rounds`` times, ours and raw alternating; the ratio is each side's
best run against the other's (the median of the runs' ratios is printed too): on this shared
VM raw RQ's own W=2 rate moved between 550 and 810 jobs/s from one run to the next.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Stack, Workdir, emit, store_counts, submit_batches, table


def _sqlite_time(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _rq_time(raw: bytes) -> float:
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _ours_span(db_path, ids: list[str]) -> tuple[float, float, int]:
    """(first started_at, last updated_at, completed count) of ``ids`` in the store."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    first, last, done = float("inf"), 0.0, 0
    try:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            row = conn.execute(
                f"SELECT min(started_at), max(updated_at), count(*) FROM jobs "
                f"WHERE status = 'COMPLETED' AND id IN ({marks})",
                chunk,
            ).fetchone()
            if row[2]:
                first = min(first, _sqlite_time(row[0]))
                last = max(last, _sqlite_time(row[1]))
                done += row[2]
    finally:
        conn.close()
    return first, last, done


def drain(stack: Stack, kind: str, simple: bool, workers: int) -> float:
    """Run ``workers`` burst workers of ``kind`` ("ours" or "raw") until the queues are empty;
    the time they were started."""
    procs = [stack.worker(kind, simple) for _ in range(workers)]
    for p in procs:
        code = p.wait(timeout=600)
        if code != 0:
            raise RuntimeError(f"{kind} worker {p.name} exited {code}; see {p.log_path}")
    return min(p.started for p in procs)


def enqueue_raw(stack: Stack, n: int) -> list[str]:
    """``n`` no-op jobs put straight on raw RQ's queue; their ids."""
    queue = Queue(RAW_QUEUE, connection=stack.redis_client(), serializer=JSONSerializer)
    return [queue.enqueue("bench.rawtasks.noop").id for _ in range(n)]


def run_ours(stack: Stack, n: int, workers: int, simple: bool) -> dict:
    ids = submit_batches(stack.url, "bench_noop", n)
    before = store_counts(stack.url).get("COMPLETED", 0)
    t0 = drain(stack, "ours", simple, workers)
    deadline = time.monotonic() + 60
    while store_counts(stack.url).get("COMPLETED", 0) - before < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store never said COMPLETED for all {n} jobs")
        time.sleep(0.05)
    first, last, done = _ours_span(stack.db_path, ids)
    assert done == n, (done, n)
    return {"elapsed": last - t0, "steady": last - first}


def run_raw(stack: Stack, n: int, workers: int, simple: bool) -> dict:
    ids = enqueue_raw(stack, n)
    t0 = drain(stack, "raw", simple, workers)
    redis = stack.redis_client()
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "started_at", "ended_at")
        rows = pipe.execute()
    bad = [r for r in rows if r[0] != b"finished"]
    if bad:
        raise RuntimeError(f"{len(bad)} raw RQ jobs did not finish: {bad[:3]}")
    first = min(_rq_time(r[1]) for r in rows)
    last = max(_rq_time(r[2]) for r in rows)
    return {"elapsed": last - t0, "steady": last - first}


def run(
    workdir: Workdir, results: Results, *, n_simple: int, n_fork: int, rounds: int = 3, worker_counts=(1, 2)
) -> None:
    rows = []
    with Stack(workdir, "execution") as stack:
        for simple, n in ((True, n_simple), (False, n_fork)):
            cls = "SimpleWorker" if simple else "Worker (fork)"
            for w in worker_counts:
                pairs = [(run_ours(stack, n, w, simple), run_raw(stack, n, w, simple)) for _ in range(rounds)]
                ours = min((o for o, _ in pairs), key=lambda t: t["elapsed"])
                raw = min((r for _, r in pairs), key=lambda t: t["elapsed"])
                ours_rate, raw_rate = n / ours["elapsed"], n / raw["elapsed"]
                ratio = ours_rate / raw_rate
                steady = (n / min(o["steady"] for o, _ in pairs)) / (n / min(r["steady"] for _, r in pairs))
                each = sorted(r["elapsed"] / o["elapsed"] for o, r in pairs)
                median = each[len(each) // 2]
                rows.append(
                    [
                        cls, w, n,
                        f"{ours_rate:.0f}", f"{raw_rate:.0f}", f"{ratio:.2f}",
                        f"{steady:.2f}", " ".join(f"{x:.2f}" for x in each), f"{median:.2f}",
                    ]
                )  # fmt: skip
                emit(f"  execution {cls} W={w} N={n}: ours {ours_rate:.0f}/s, raw {raw_rate:.0f}/s, ratio {ratio:.2f}")
                label = f"execution {'simple' if simple else 'fork'} W={w}"
                results.ratio(f"{label} (ours/raw, best run of each, start to last completion)", ratio)
                results.ratio(f"{label} (ours/raw, best run of each, steady state)", steady)
                results.ratio(f"{label} (ours/raw, median of the runs' ratios)", median)
                results.check(f"{label}: ours/raw jobs/s", f"{ratio:.2f}", ">= 0.70", ratio >= 0.7)
    emit(
        table(
            "a. Execution: no-op jobs drained by burst workers (jobs/s)",
            [
                "worker class", "W", "N", "ours (best)", "raw RQ (best)", "ours/raw",
                "steady ratio", "each run's ratio", "median",
            ],
            rows,
        )
    )  # fmt: skip
    emit(
        "ours/raw: best run of each side, from starting the workers to the last completion recorded\n"
        "in the store (ours) or in RQ (raw); steady: the same without process start-up, N / (last end -\n"
        "first start); each run's ratio: ours and raw of the same round."
    )
