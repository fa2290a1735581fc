"""Redis round trips and HTTP requests per job: our worker against ``rq worker``, same jobs.

    .venv/bin/python -m bench.profile_trips [-n 500] [--only simple|fork] [--start-path 60]

N no-op jobs drained by one burst worker of each kind, each run under ``bench/counted_worker.py``
(which counts what redis-py and requests send, never changing it). Counts do not depend on the
machine's load, so they can be compared while others measure. Printed per job: round trips by
thread and by process (a forking worker's work-horse apart), then each kind of round trip (the
commands it carried) that comes at least once every few jobs.

``--start-path K``: K jobs one at a time on an idle (non-burst) worker of each kind, each job sent
when the last has finished: per job, from the moment the worker's BLPOP returned it to the moment
RQ called the task's function, the main thread's CPU time (simple worker only: a work-horse's
clock starts afresh), the wall time and the round trips (p50 of the K jobs). The part of
enqueue-to-start that is the worker's own work, apart from what the machine's load adds.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import time

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import PY, RAW_QUEUE, RAW_WORKER_QUEUES, ROOT, Stack, Workdir, emit, pct, session, submit_batches
from bench.execution import enqueue_raw

#: Round trips seen less often than this per job (start-up, maintenance) are summed, not listed.
LISTED_PER_JOB = 0.05


def _command(kind: str, simple: bool, name: str, env: dict, burst: bool = True) -> list[str]:
    launcher = [PY, str(ROOT / "bench" / "counted_worker.py")]
    drain = ["--burst"] if burst else []
    if kind == "ours":
        return [*launcher, "ours", "--name", name, *drain, *(["--simple"] if simple else [])]
    return [
        *launcher, "raw", "worker", "--name", name, *drain,
        "--worker-class", "rq.SimpleWorker" if simple else "rq.Worker",
        "--serializer", "rq.serializers.JSONSerializer", "--url", env["REDIS_URL"],
        "--logging_level", "WARNING", *RAW_WORKER_QUEUES,
    ]  # fmt: skip


def count(stack: Stack, workdir: Workdir, kind: str, simple: bool, n: int) -> list[dict]:
    """Drain ``n`` jobs with one counted worker; its processes' records."""
    if kind == "ours":
        submit_batches(stack.url, "bench_noop", n)
    else:
        enqueue_raw(stack, n)
    path = workdir / f"trips-{kind}-{simple}.jsonl"
    name = f"trips-{kind}-{'simple' if simple else 'fork'}"
    env = dict(stack.env, BENCH_TRIPS=str(path))
    with open(workdir / f"{name}.log", "ab") as log:
        subprocess.run(_command(kind, simple, name, env), cwd=ROOT, env=env, check=True, stdout=log, stderr=log)
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_path(stack: Stack, workdir: Workdir, kind: str, simple: bool, k: int) -> list[list[float]]:
    """``k`` jobs one at a time on an idle counted worker; its ``[cpu, wall, trips]`` per job."""
    path = workdir / f"starts-{kind}-{simple}.jsonl"
    name = f"starts-{kind}-{'simple' if simple else 'fork'}"
    env = dict(stack.env, BENCH_TRIPS=str(path))
    redis = stack.redis_client()
    queue = Queue(RAW_QUEUE, connection=redis, serializer=JSONSerializer)
    with open(workdir / f"{name}.log", "ab") as log:
        worker = subprocess.Popen(_command(kind, simple, name, env, burst=False), cwd=ROOT, env=env, stdout=log,
                                  stderr=log)  # fmt: skip
        try:
            time.sleep(2.0)  # started and idle
            with session() as http:
                for _ in range(k):
                    if kind == "ours":
                        job_id = http.post(f"{stack.url}/tasks/bench_noop", json={}, timeout=30).json()["job_id"]
                        key = f"rq:job:{job_id}-1"
                    else:
                        key = queue.enqueue("bench.rawtasks.noop").key
                    deadline = time.monotonic() + 30
                    while redis.hget(key, "status") != b"finished":
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{key} did not finish; see {workdir / name}.log")
                        time.sleep(0.002)
                    time.sleep(0.05)  # the worker idle again, blocked in its BLPOP
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    return [start for line in path.read_text().splitlines() for start in json.loads(line)["starts"]]


def summary(records: list[dict], n: int, title: str) -> dict[str, float]:
    """Print per job what ``records`` hold; the totals per job by where they were sent."""
    by_place: collections.Counter = collections.Counter()
    by_kind: collections.Counter = collections.Counter()
    http: collections.Counter = collections.Counter()
    for record in records:
        for thread, names, times in record["trips"]:
            place = "work-horse" if record["role"] == "horse" else f"worker {thread}"
            by_place[place] += times
            by_kind[(place, names)] += times
        for thread, method, shape, times in record["http"]:
            place = "work-horse" if record["role"] == "horse" else f"worker {thread}"
            http[(place, f"{method} {shape}")] += times
    emit(f"\n{title}: {sum(by_place.values()) / n:.2f} Redis round trips per job")
    for place, times in sorted(by_place.items()):
        emit(f"  {place:28} {times / n:6.2f} per job")
    rest: collections.Counter = collections.Counter()
    for (place, names), times in sorted(by_kind.items(), key=lambda item: -item[1]):
        if times / n >= LISTED_PER_JOB:
            emit(f"    {times / n:5.2f}  {place:22} {names[:150]}")
        else:
            rest[place] += times
    for place, times in rest.items():
        emit(f"    {times / n:5.2f}  {place:22} (the rest: start-up, maintenance)")
    for (place, what), times in sorted(http.items()):
        emit(f"  HTTP {place:23} {what:40} {times / n:6.3f} per job ({times} requests)")
    return {"trips": sum(by_place.values()) / n, "http": sum(http.values()) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_trips", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--only", choices=["simple", "fork"], default=None)
    parser.add_argument("--start-path", type=int, default=0, help="jobs one at a time on an idle worker (0: none)")
    args = parser.parse_args(argv)
    workdir = Workdir()
    try:
        with Stack(workdir, "trips") as stack:
            for simple in (True, False):
                if args.only and args.only != ("simple" if simple else "fork"):
                    continue
                cls = "SimpleWorker" if simple else "forking Worker"
                for kind in ("ours", "raw"):
                    if args.n:
                        records = count(stack, workdir, kind, simple, args.n)
                        summary(records, args.n, f"{kind} {cls}, N={args.n}")
                    if args.start_path:
                        starts = start_path(stack, workdir, kind, simple, args.start_path)
                        cpu, wall, trips = (pct([s[i] for s in starts], 50) for i in range(3))
                        emit(
                            f"\n{kind} {cls}, start path of {len(starts)} jobs on an idle worker (p50): "
                            f"{1e6 * wall:.0f} µs wall, "
                            + (f"{1e6 * cpu:.0f} µs main-thread CPU, " if simple else "")
                            + f"{trips:.0f} Redis round trips"
                        )
    finally:
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
