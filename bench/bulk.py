"""``python -m bench.bulk``: a batch of N jobs and a bulk cancel of N, against the same N one by one.

Through the API as shipped (gunicorn), one client, no worker (the jobs stay queued), on SQLite and
(when it can run) PostgreSQL, in alternating rounds of one invocation:

- ``POST /tasks/bench_noop/batch`` with N jobs, against N ``POST /tasks/bench_noop`` and raw RQ's
  own ``Queue.enqueue_many`` of N (the library's bulk enqueue, from this process);
- ``POST /jobs/cancel`` of those N ids, against N ``POST /jobs/<id>/cancel``.

``--baseline-tree DIR`` (a ``git worktree`` of an older commit) serves the same rounds from that
tree's code too, for a before/after figure (``bench.tree_stack``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import Stack, Workdir, emit, session
from bench.rawtasks import noop
from bench.stores import POSTGRESQL, SQLITE, start_postgres
from bench.tree_stack import TreeStack


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _round(stack, n: int) -> dict[str, float]:
    """One round's seconds for each way, on ``stack``'s API and Redis."""
    url, spent = stack.url, {}
    with session() as http:

        def batch() -> list[str]:
            answer = http.post(f"{url}/tasks/bench_noop/batch", json={"jobs": [{}] * n}, timeout=600)
            answer.raise_for_status()
            return answer.json()["job_ids"]

        def singles() -> list[str]:
            return [http.post(f"{url}/tasks/bench_noop", json={}, timeout=60).json()["job_id"] for _ in range(n)]

        ids: list[list[str]] = []
        spent["batch"] = _timed(lambda: ids.append(batch()))
        spent["one by one"] = _timed(lambda: ids.append(singles()))

        def cancel_bulk() -> None:
            answer = http.post(f"{url}/jobs/cancel", json={"job_ids": ids[0]}, timeout=600)
            answer.raise_for_status()
            assert len(answer.json()["cancelled"]) == n, answer.json()["skipped"][:3]

        def cancel_singles() -> None:
            for job_id in ids[1]:
                http.post(f"{url}/jobs/{job_id}/cancel", json={}, timeout=60).raise_for_status()

        spent["bulk cancel"] = _timed(cancel_bulk)
        spent["cancel one by one"] = _timed(cancel_singles)
    queue = Queue("default", connection=stack.redis_client(), serializer=JSONSerializer)
    spent["raw RQ enqueue_many"] = _timed(
        lambda: queue.enqueue_many([Queue.prepare_data(noop, args=()) for _ in range(n)])
    )
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="jobs per batch and per bulk cancel")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    workdir = Workdir()
    pg = None if args.no_postgres else start_postgres(log=emit)
    try:
        sides = [("ours", None)] + ([("baseline", args.baseline_tree)] if args.baseline_tree else [])
        stores = [(SQLITE, None)] + ([(POSTGRESQL, pg)] if pg is not None else [])
        figures: dict[tuple[str, str], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for store, server in stores:
                for side, tree in sides:
                    name = f"{side}-{store}-{round_}".replace(" ", "")
                    url = server.database() if server is not None else None
                    stack = (
                        Stack(workdir, name, database_url=url)
                        if tree is None
                        else TreeStack(workdir, name, tree, database_url=url)
                    )
                    with stack:
                        figures.setdefault((store, side), []).append(_round(stack, args.n))
        emit(f"\nmedian seconds of {args.rounds} rounds, {args.n} jobs each (one client, no worker):")
        for (store, side), rounds in figures.items():
            medians = {way: statistics.median(r[way] for r in rounds) for way in rounds[0]}
            spread = {way: (min(r[way] for r in rounds), max(r[way] for r in rounds)) for way in rounds[0]}
            emit(f"  {store}, {side}:")
            for way, value in medians.items():
                low, high = spread[way]
                emit(f"    {way:22s} {value:7.2f} s  ({args.n / value:7.0f} jobs/s; rounds {low:.2f}-{high:.2f})")
    finally:
        if pg is not None:
            pg.stop()
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
