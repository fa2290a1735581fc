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

Target (issue 17, T4): ours/raw >= 1.00 for SimpleWorker and the forking Worker at W = 1 and 2,
on each store. Each configuration runs ``rounds`` times, ours and raw alternating; the ratio is
each side's best run against the other's (the median of the runs' ratios is printed too): on this shared
VM raw RQ's own W=2 rate moved between 550 and 810 jobs/s from one run to the next. With
PostgreSQL, ours runs on both stores in every round (the order rotating), each against the same
raw RQ runs, and each PostgreSQL rate is compared with the SQLite rate of the same configuration.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Stack, Workdir, emit, store_counts, submit_batches, table
from bench.stores import POSTGRESQL, SQLITE, Postgres, completed_span, store_stacks

RAW = "raw"
#: T4 (issue 17): ours with the store's bookkeeping at least as fast as raw RQ.
TARGET = 1.0


def _rq_time(raw: bytes) -> float:
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


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


def run_ours(stack: Stack, n: int, workers: int, simple: bool, meter=None) -> dict:
    """One drain of ours; ``meter`` (optional): a function giving CPU seconds used so far, read
    around the drain (not the submission), for a "cpu" entry."""
    ids = submit_batches(stack.url, "bench_noop", n)
    before = store_counts(stack.url).get("COMPLETED", 0)
    cpu0 = meter() if meter else 0.0
    t0 = drain(stack, "ours", simple, workers)
    deadline = time.monotonic() + 60
    while store_counts(stack.url).get("COMPLETED", 0) - before < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store never said COMPLETED for all {n} jobs")
        time.sleep(0.05)
    cpu = meter() - cpu0 if meter else None
    first, last, done = completed_span(stack.database_url, ids)
    assert done == n, (done, n)
    return {"elapsed": last - t0, "steady": last - first, "cpu": cpu}


def run_raw(stack: Stack, n: int, workers: int, simple: bool, meter=None) -> dict:
    ids = enqueue_raw(stack, n)
    cpu0 = meter() if meter else 0.0
    t0 = drain(stack, "raw", simple, workers)
    cpu = meter() - cpu0 if meter else None
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
    return {"elapsed": last - t0, "steady": last - first, "cpu": cpu}


def _rounds(stacks: dict[str, Stack], n: int, w: int, simple: bool, rounds: int) -> dict[str, list[dict]]:
    """Each side's runs: ours on every store and raw RQ (on the SQLite stack's Redis), the order
    rotating from round to round so that no side always runs first."""
    sides = [*stacks, RAW]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            if side == RAW:
                runs[side].append(run_raw(stacks[SQLITE], n, w, simple))
            else:
                runs[side].append(run_ours(stacks[side], n, w, simple))
    return runs


def run(
    workdir: Workdir,
    results: Results,
    *,
    n_simple: int,
    n_fork: int,
    rounds: int = 3,
    worker_counts=(1, 2),
    pg: Postgres | None = None,
) -> None:
    rows = []
    with store_stacks(workdir, "execution", pg) as stacks:
        for simple, n in ((True, n_simple), (False, n_fork)):
            cls = "SimpleWorker" if simple else "Worker (fork)"
            for w in worker_counts:
                runs = _rounds(stacks, n, w, simple, rounds)
                raw = min(runs[RAW], key=lambda t: t["elapsed"])
                raw_rate = n / raw["elapsed"]
                rates = {}
                for store in stacks:
                    ours = min(runs[store], key=lambda t: t["elapsed"])
                    rates[store] = ours_rate = n / ours["elapsed"]
                    ratio = ours_rate / raw_rate
                    steady = min(r["steady"] for r in runs[RAW]) / min(o["steady"] for o in runs[store])
                    each = sorted(r["elapsed"] / o["elapsed"] for o, r in zip(runs[store], runs[RAW], strict=True))
                    median = each[len(each) // 2]
                    rows.append(
                        [
                            cls, w, n, store,
                            f"{ours_rate:.0f}", f"{raw_rate:.0f}", f"{ratio:.2f}",
                            f"{steady:.2f}", " ".join(f"{x:.2f}" for x in each), f"{median:.2f}",
                        ]
                    )  # fmt: skip
                    emit(
                        f"  execution {cls} W={w} N={n} on {store}: ours {ours_rate:.0f}/s, raw {raw_rate:.0f}/s, "
                        f"ratio {ratio:.2f}"
                    )
                    label = f"execution {'simple' if simple else 'fork'} W={w}"
                    if store != SQLITE:
                        label += f" on {store}"
                    results.ratio(f"{label} (ours/raw, best run of each, start to last completion)", ratio)
                    results.ratio(f"{label} (ours/raw, best run of each, steady state)", steady)
                    results.ratio(f"{label} (ours/raw, median of the runs' ratios)", median)
                    # Issue 17's target: no slower than raw RQ, all bookkeeping included.
                    results.check(f"T4 {label}: ours/raw jobs/s", f"{ratio:.2f}", ">= 1.00", ratio >= TARGET)
                if POSTGRESQL in rates:
                    results.stores_compared(
                        f"execution {'simple' if simple else 'fork'} W={w} jobs/s",
                        f"{rates[SQLITE]:.0f}",
                        f"{rates[POSTGRESQL]:.0f}",
                        rates[POSTGRESQL] / rates[SQLITE],
                    )
    emit(
        table(
            "a. Execution: no-op jobs drained by burst workers (jobs/s)",
            [
                "worker class", "W", "N", "store", "ours (best)", "raw RQ (best)", "ours/raw",
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
