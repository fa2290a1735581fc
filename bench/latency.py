"""e. Enqueue-to-start latency on an idle worker, one job at a time.

The task (``bench.rawtasks.stamp``) records ``time.time()`` as its first statement and pushes
it to a Redis list; the client BLPOPs it and compares with its own time just before sending.
Ours: send = just before ``POST /tasks/bench_stamp``; raw RQ: just before ``Queue.enqueue``.
After each job the client waits for it to end (COMPLETED in the store / finished in RQ)
and a further 20 ms, so that every job finds the worker idle. "enqueued->start" splits the worker's
part off: from the RQ job's ``enqueued_at`` (written by whoever enqueued it, the API or the client,
on this machine's clock) to the task's first line.

Target (issue 17, T5): p50 under 4 ms for the simple worker, on each store.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import RAW_QUEUE, Results, Stack, Workdir, emit, ms, pct, session, table
from bench.stores import POSTGRESQL, SQLITE, Postgres, store_stacks

KEY = "bench:stamps"
IDLE_GAP = 0.02
#: T5 (issue 17): the simple worker's p50 enqueue-to-start, seconds.
TARGET = 0.004


def _enqueued_at(redis, rq_id: str) -> float | None:
    """The RQ job's ``enqueued_at`` (Unix time), or None when its hash is gone or lacks it."""
    raw = redis.hget(f"rq:job:{rq_id}", "enqueued_at")
    if not raw:
        return None
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def measure_ours(stack: Stack, simple: bool, samples: int, warmup: int) -> dict[str, list[float]]:
    worker = stack.worker("ours", simple, burst=False)
    redis = stack.redis_client()
    out: dict[str, list[float]] = {"start": [], "accepted": [], "store": [], "worker": []}
    try:
        with session() as http:
            for i in range(warmup + samples):
                redis.delete(KEY)
                t0 = time.time()
                r = http.post(f"{stack.url}/tasks/bench_stamp", json={"kwargs": {"key": KEY}}, timeout=30)
                t_accepted = time.time()
                if r.status_code != 202:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:200]}")
                job_id = r.json()["job_id"]
                popped = redis.blpop([KEY], timeout=60)
                if popped is None:
                    raise RuntimeError(f"job {job_id} never started; see {worker.log_path}")
                started = float(popped[1])
                enqueued = _enqueued_at(redis, f"{job_id}-1")
                deadline = time.monotonic() + 30
                while True:
                    job = http.get(f"{stack.url}/jobs/{job_id}", timeout=30).json()
                    if job["status"] == "COMPLETED":
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"job {job_id} did not complete: {job}")
                    time.sleep(0.002)
                if i >= warmup:
                    out["start"].append(started - t0)
                    out["accepted"].append(t_accepted - t0)
                    if enqueued is not None:
                        out["worker"].append(started - enqueued)
                    if job.get("started_at") and job.get("created_at"):
                        out["store"].append(_iso(job["started_at"]) - _iso(job["created_at"]))
                time.sleep(IDLE_GAP)
    finally:
        worker.stop()
    return out


def measure_raw(stack: Stack, simple: bool, samples: int, warmup: int) -> dict[str, list[float]]:
    worker = stack.worker("raw", simple, burst=False)
    redis = stack.redis_client()
    queue = Queue(RAW_QUEUE, connection=redis, serializer=JSONSerializer)
    out: dict[str, list[float]] = {"start": [], "accepted": [], "worker": []}
    try:
        for i in range(warmup + samples):
            redis.delete(KEY)
            t0 = time.time()
            job = queue.enqueue("bench.rawtasks.stamp", key=KEY)
            t_accepted = time.time()
            popped = redis.blpop([KEY], timeout=60)
            if popped is None:
                raise RuntimeError(f"raw job {job.id} never started; see {worker.log_path}")
            started = float(popped[1])
            enqueued = _enqueued_at(redis, job.id)
            deadline = time.monotonic() + 30
            while redis.hget(job.key, "status") != b"finished":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"raw job {job.id} did not finish")
                time.sleep(0.002)
            if i >= warmup:
                out["start"].append(started - t0)
                out["accepted"].append(t_accepted - t0)
                if enqueued is not None:
                    out["worker"].append(started - enqueued)
            time.sleep(IDLE_GAP)
    finally:
        worker.stop()
    return out


def run(
    workdir: Workdir,
    results: Results,
    *,
    samples_simple: int,
    samples_fork: int,
    warmup: int = 10,
    pg: Postgres | None = None,
) -> None:
    rows = []
    with store_stacks(workdir, "latency", pg) as stacks:
        for simple, samples in ((True, samples_simple), (False, samples_fork)):
            cls = "simple" if simple else "fork"
            ours = {store: measure_ours(stack, simple, samples, warmup) for store, stack in stacks.items()}
            raw = measure_raw(stacks[SQLITE], simple, samples, warmup)
            for store, got in ours.items():
                rows.append(
                    [
                        f"ours on {store}, {cls}", samples,
                        ms(pct(got["start"], 50)), ms(pct(got["start"], 99)),
                        ms(pct(got["accepted"], 50)), ms(pct(got["worker"], 50)), ms(pct(got["store"], 50)),
                    ]
                )  # fmt: skip
            rows.append(
                [
                    f"raw RQ, {cls}", samples,
                    ms(pct(raw["start"], 50)), ms(pct(raw["start"], 99)),
                    ms(pct(raw["accepted"], 50)), ms(pct(raw["worker"], 50)), "",
                ]
            )  # fmt: skip
            for store, got in ours.items():
                p50 = pct(got["start"], 50)
                where = "" if store == SQLITE else f" on {store}"
                results.ratio(f"enqueue-to-start {cls}{where} p50 (ours/raw)", p50 / pct(raw["start"], 50))
                results.ratio(
                    f"enqueued-to-start {cls}{where} p50, the worker's part (ours/raw)",
                    pct(got["worker"], 50) / pct(raw["worker"], 50),
                )
                if simple:
                    results.check(
                        f"T5 enqueue-to-start p50, simple worker{where}", f"{p50 * 1000:.2f} ms", "< 4 ms", p50 < TARGET
                    )
                else:
                    results.check(
                        f"enqueue-to-start p50, forking worker{where}", f"{p50 * 1000:.2f} ms", "(no target)", None
                    )
            if POSTGRESQL in ours:
                sqlite, postgresql = pct(ours[SQLITE]["start"], 50), pct(ours[POSTGRESQL]["start"], 50)
                results.stores_compared(
                    f"enqueue-to-start {cls} p50 ms", ms(sqlite), ms(postgresql), sqlite / postgresql
                )
    emit(
        table(
            "e. Enqueue-to-start on an idle worker (client send -> first line of the task)",
            [
                "worker",
                "jobs",
                "p50 ms",
                "p99 ms",
                "send->accepted p50 ms",
                "enqueued->start p50 ms",
                "store created->started p50 ms",
            ],
            rows,
        )
    )
    emit(
        "accepted: the 202 of POST /tasks (ours) or the return of Queue.enqueue (raw); enqueued->start: from the\n"
        "RQ job's enqueued_at to the task's first line (the worker's part)."
    )
