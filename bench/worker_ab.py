"""Before/after of a change to the worker's path: ours at another tree against ours here and raw RQ,
rounds alternating in one invocation (execution, a; then enqueue-to-start, e).

    cp -r . /tmp/before && git show <commit>:<file> > /tmp/before/<file> ...   # the tree to compare
    .venv/bin/python -m bench.worker_ab /tmp/before [--store sqlite|postgresql] [--cls simple|fork]
        [-n 1000] [--rounds 3] [--workers 1,2] [--latency 60]

"before" runs the API (gunicorn) and the workers from the other tree's ``backend/`` with this
tree's venv; "after" from this tree; raw RQ on the "after" stack's Redis, as in a. Each round
runs the three sides in a rotating order; the table gives each side's best run and the ratios,
as bench/execution.py does. Keep each invocation short (one store, one class: about 2 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import bench.common as common
from bench.common import Workdir, emit, pct, table
from bench.execution import run_ours, run_raw
from bench.latency import measure_ours, measure_raw
from bench.stores import POSTGRESQL, SQLITE, start_postgres

BEFORE, AFTER, RAW = "before", "after", "raw"


@contextlib.contextmanager
def at_root(root: Path):
    """Processes started meanwhile (gunicorn, workers) run the code of ``root``."""
    saved = common.ROOT
    common.ROOT = root
    try:
        yield
    finally:
        common.ROOT = saved


def _stacks(workdir: Workdir, before_root: Path, store: str, pg, exit_stack: contextlib.ExitStack) -> dict:
    stacks = {}
    for side, root in ((BEFORE, before_root), (AFTER, common.ROOT)):
        url = pg.database() if store == POSTGRESQL else None
        with at_root(root):
            stacks[side] = exit_stack.enter_context(common.Stack(workdir, f"ab-{side}", database_url=url))
    return stacks


def execution(stacks: dict, before_root: Path, n: int, simple: bool, workers: list[int], rounds: int) -> list:
    rows = []
    sides = [BEFORE, AFTER, RAW]
    for w in workers:
        runs: dict[str, list[float]] = {side: [] for side in sides}
        for i in range(rounds):
            for side in sides[i % 3 :] + sides[: i % 3]:
                if side == RAW:
                    runs[side].append(run_raw(stacks[AFTER], n, w, simple)["elapsed"])
                else:
                    with at_root(before_root if side == BEFORE else common.ROOT):
                        runs[side].append(run_ours(stacks[side], n, w, simple)["elapsed"])
        best = {side: n / min(times) for side, times in runs.items()}
        each = {side: [round(raw / ours, 2) for ours, raw in zip(runs[side], runs[RAW], strict=True)] for side in sides}
        rows.append(
            [
                "simple" if simple else "fork", w, n, f"{best[BEFORE]:.0f}", f"{best[AFTER]:.0f}", f"{best[RAW]:.0f}",
                f"{best[BEFORE] / best[RAW]:.2f}", f"{best[AFTER] / best[RAW]:.2f}",
                " ".join(map(str, each[BEFORE])), " ".join(map(str, each[AFTER])),
            ]
        )  # fmt: skip
    return rows


def latency(stacks: dict, before_root: Path, simple: bool, samples: int, chunks: int = 3) -> list:
    got: dict[str, dict[str, list[float]]] = {side: {"start": [], "worker": []} for side in (BEFORE, AFTER, RAW)}
    per = max(1, samples // chunks)
    for _ in range(chunks):
        for side in (BEFORE, AFTER, RAW):
            if side == RAW:
                out = measure_raw(stacks[AFTER], simple, per, warmup=3)
            else:
                with at_root(before_root if side == BEFORE else common.ROOT):
                    out = measure_ours(stacks[side], simple, per, warmup=3)
            got[side]["start"] += out["start"]
            got[side]["worker"] += out["worker"]
    return [
        [
            side,
            len(values["start"]),
            *(f"{1000 * pct(values[k], q):.2f}" for k, q in (("start", 50), ("start", 99), ("worker", 50))),
        ]  # fmt: skip
        for side, values in got.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_ab", description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="the other tree (its backend/ and bench/tasks.py are run)")
    parser.add_argument("--store", choices=[SQLITE, POSTGRESQL], default=SQLITE)
    parser.add_argument("--cls", choices=["simple", "fork"], default="simple")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--latency", type=int, default=0, help="enqueue-to-start samples per side (0: none)")
    args = parser.parse_args(argv)
    simple = args.cls == "simple"
    workdir = Workdir()
    pg = start_postgres(emit) if args.store == POSTGRESQL else None
    try:
        with contextlib.ExitStack() as exit_stack:
            stacks = _stacks(workdir, args.before.resolve(), args.store, pg, exit_stack)
            workers = [int(w) for w in args.workers.split(",") if w]
            if workers and args.n:
                rows = execution(stacks, args.before.resolve(), args.n, simple, workers, args.rounds)
                emit(
                    table(
                        f"a. execution before/after on {args.store} (jobs/s, best run; ratios against raw RQ)",
                        [
                            "class",
                            "W",
                            "N",
                            "before",
                            "after",
                            "raw",
                            "before/raw",
                            "after/raw",
                            "each round before/raw",
                            "each round after/raw",
                        ],  # fmt: skip
                        rows,
                    )
                )
            if args.latency:
                rows = latency(stacks, args.before.resolve(), simple, args.latency)
                emit(
                    table(
                        f"e. enqueue-to-start before/after on {args.store}, {args.cls} worker (ms)",
                        ["side", "jobs", "p50", "p99", "enqueued->start p50"],
                        rows,
                    )
                )
    finally:
        if pg is not None:
            pg.stop()
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
