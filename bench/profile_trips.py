"""Redis round trips and HTTP requests per job: our worker against ``rq worker``, same jobs.

    .venv/bin/python -m bench.profile_trips [-n 500] [--only simple|fork]

N no-op jobs drained by one burst worker of each kind, each run under ``bench/counted_worker.py``
(which counts what redis-py and requests send, never changing it). Counts do not depend on the
machine's load, so they can be compared while others measure. Printed per job: round trips by
thread and by process (a forking worker's work-horse apart), then each kind of round trip (the
commands it carried) that comes at least once every few jobs.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys

from bench.common import PY, RAW_WORKER_QUEUES, ROOT, Stack, Workdir, emit, submit_batches
from bench.execution import enqueue_raw

#: Round trips seen less often than this per job (start-up, maintenance) are summed, not listed.
LISTED_PER_JOB = 0.05


def _command(kind: str, simple: bool, name: str, env: dict) -> list[str]:
    launcher = [PY, str(ROOT / "bench" / "counted_worker.py")]
    if kind == "ours":
        return [*launcher, "ours", "--name", name, "--burst", *(["--simple"] if simple else [])]
    return [
        *launcher, "raw", "worker", "--name", name, "--burst",
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
    args = parser.parse_args(argv)
    workdir = Workdir()
    try:
        with Stack(workdir, "trips") as stack:
            for simple in (True, False):
                if args.only and args.only != ("simple" if simple else "fork"):
                    continue
                cls = "SimpleWorker" if simple else "forking Worker"
                for kind in ("ours", "raw"):
                    records = count(stack, workdir, kind, simple, args.n)
                    summary(records, args.n, f"{kind} {cls}, N={args.n}")
    finally:
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
