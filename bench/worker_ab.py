"""Before/after of a change to the worker's path: ours at another tree against ours here and raw RQ,
rounds alternating in one invocation (execution, a; then enqueue-to-start, e).

    git archive HEAD | tar -x -C /tmp/after; cp -r /tmp/after /tmp/before; git show <commit>:<file> > /tmp/before/<file>
    .venv/bin/python -m bench.worker_ab /tmp/before --after /tmp/after [--store sqlite|postgresql] [--cls simple|fork]
        [-n 1000] [--rounds 3] [--workers 1,2] [--latency 60]

"before" runs the API (gunicorn) and the workers from the other tree's ``backend/`` with this
tree's venv; "after" from this tree; raw RQ on the "after" stack's Redis, as in a. Each round
runs the three sides in a rotating order; the table gives each side's best run and the ratios,
as bench/execution.py does, and the CPU per job the machine spent on each side's drains (median
run; every process of the run: both APIs, Redis, PostgreSQL, the workers): on a shared, loaded
machine the rates move with the neighbours, the CPU per job much less. A second table splits
each side's CPU per job by part (API, Redis, PostgreSQL, workers): ours pays the store's side of the
reports, raw RQ does not. Keep each invocation short (one store, one class: about 2 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import bench.common as common
from bench.common import Workdir, emit, pct, table
from bench.execution import run_ours, run_raw
from bench.latency import measure_ours, measure_raw
from bench.load import cpu_seconds
from bench.profile_stores import _server_cpu
from bench.stores import POSTGRESQL, SQLITE, start_postgres

BEFORE, AFTER, RAW = "before", "after", "raw"
EXECUTION_HEADERS = [
    "class", "W", "N", "before", "after", "raw", "before/raw", "after/raw", "each round before/raw",
    "each round after/raw", "CPU ms/job before", "after", "raw", "CPU raw/before", "CPU raw/after",
]  # fmt: skip


@contextlib.contextmanager
def at_root(root: Path):
    """Processes started meanwhile (gunicorn, workers) run the code of ``root``."""
    saved = common.ROOT
    common.ROOT = root
    try:
        yield
    finally:
        common.ROOT = saved


def _stacks(workdir: Workdir, roots: dict[str, Path], store: str, pg, exit_stack: contextlib.ExitStack) -> dict:
    stacks = {}
    for side, root in roots.items():
        url = pg.database() if store == POSTGRESQL else None
        with at_root(root):
            stacks[side] = exit_stack.enter_context(common.Stack(workdir, f"ab-{side}", database_url=url))
    return stacks


class Cpu(dict):
    """CPU seconds by part of the machine (API, Redis, PostgreSQL, workers); ordered by their total."""

    @property
    def total(self) -> float:
        return sum(self.values())

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu({part: seconds - other.get(part, 0.0) for part, seconds in self.items()})

    def __lt__(self, other: Cpu) -> bool:
        return self.total < other.total


PARTS = ["API", "Redis", "PostgreSQL", "workers"]


def _meter(stacks: dict, pg):
    """CPU seconds used so far by both APIs (gunicorn), both Redis servers, PostgreSQL's server and
    this process's waited-for children (the workers, and a forking worker's work-horses): all that
    a drain costs the machine, whichever side runs (the idle side's background is in every run),
    by part: where a side's time goes (ours pays the store's side of the reports, raw RQ does not)."""
    apis, redises = [], []
    for stack in stacks.values():
        apis += [stack.api.process.pid, *stack.api.worker_pids()]
        redises.append(stack.redis.process.pid)

    def meter() -> Cpu:
        children = os.times()
        return Cpu(zip(PARTS, (cpu_seconds(apis), cpu_seconds(redises), _server_cpu(pg),
                               children.children_user + children.children_system), strict=True))  # fmt: skip

    return meter


def execution(
    stacks: dict, roots: dict[str, Path], n: int, simple: bool, workers: list[int], rounds: int, pg, split_rows: list
) -> list:
    """The execution table's rows; ``split_rows`` gets each side's CPU per job by part (its median run)."""
    rows = []
    sides = [BEFORE, AFTER, RAW]
    meter = _meter(stacks, pg)
    for w in workers:
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for i in range(rounds):
            for side in sides[i % 3 :] + sides[: i % 3]:
                if side == RAW:
                    runs[side].append(run_raw(stacks[AFTER], n, w, simple, meter))
                else:
                    with at_root(roots[side]):
                        runs[side].append(run_ours(stacks[side], n, w, simple, meter))
        best = {side: n / min(run["elapsed"] for run in side_runs) for side, side_runs in runs.items()}
        median = {
            side: sorted(run["cpu"] for run in side_runs)[len(side_runs) // 2] for side, side_runs in runs.items()
        }
        cpu = {side: 1000 * median[side].total / n for side in sides}
        split_rows.extend(
            [side, w, *(f"{1000 * median[side][part] / n:.2f}" for part in PARTS), f"{cpu[side]:.2f}"] for side in sides
        )
        each = {
            side: [round(raw["elapsed"] / ours["elapsed"], 2) for ours, raw in zip(runs[side], runs[RAW], strict=True)]
            for side in sides
        }
        rows.append(
            [
                "simple" if simple else "fork", w, n, f"{best[BEFORE]:.0f}", f"{best[AFTER]:.0f}", f"{best[RAW]:.0f}",
                f"{best[BEFORE] / best[RAW]:.2f}", f"{best[AFTER] / best[RAW]:.2f}",
                " ".join(map(str, each[BEFORE])), " ".join(map(str, each[AFTER])),
                f"{cpu[BEFORE]:.2f}", f"{cpu[AFTER]:.2f}", f"{cpu[RAW]:.2f}",
                f"{cpu[RAW] / cpu[BEFORE]:.2f}", f"{cpu[RAW] / cpu[AFTER]:.2f}",
            ]
        )  # fmt: skip
    return rows


def latency(stacks: dict, roots: dict[str, Path], simple: bool, samples: int, chunks: int = 3) -> list:
    got: dict[str, dict[str, list[float]]] = {side: {"start": [], "worker": []} for side in (BEFORE, AFTER, RAW)}
    per = max(1, samples // chunks)
    for _ in range(chunks):
        for side in (BEFORE, AFTER, RAW):
            if side == RAW:
                out = measure_raw(stacks[AFTER], simple, per, warmup=3)
            else:
                with at_root(roots[side]):
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
    parser.add_argument(
        "--after", type=Path, default=common.ROOT, help="the tree measured against it (default: this one)"
    )
    parser.add_argument("--store", type=str.lower, choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--cls", choices=["simple", "fork"], default="simple")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--latency", type=int, default=0, help="enqueue-to-start samples per side (0: none)")
    args = parser.parse_args(argv)
    simple = args.cls == "simple"
    args.store = POSTGRESQL if args.store == "postgresql" else SQLITE
    workdir = Workdir()
    pg = start_postgres(emit) if args.store == POSTGRESQL else None
    try:
        with contextlib.ExitStack() as exit_stack:
            roots = {BEFORE: args.before.resolve(), AFTER: args.after.resolve()}
            stacks = _stacks(workdir, roots, args.store, pg, exit_stack)
            workers = [int(w) for w in args.workers.split(",") if w]
            if workers and args.n:
                split: list = []
                rows = execution(stacks, roots, args.n, simple, workers, args.rounds, pg, split)
                emit(
                    table(
                        f"a. execution before/after on {args.store} (jobs/s, best run; ratios against raw RQ)",
                        EXECUTION_HEADERS,
                        rows,
                    )
                )
                emit(table(f"CPU ms per job by part, median run ({args.cls})", ["side", "W", *PARTS, "total"], split))
            if args.latency:
                rows = latency(stacks, roots, simple, args.latency)
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
