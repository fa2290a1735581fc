"""``python -m bench.profile phases`` and ``cpu``: what one job costs a worker, phase by phase,
and the CPU per job of the API, the workers and Redis while workers drain a queue."""

from __future__ import annotations

import collections
import json
import subprocess
import time

from bench.common import PY, ROOT, Stack, Workdir, emit, ms, pct, submit_batches
from bench.load import cpu_seconds


def phases(args) -> None:
    workdir = Workdir()
    try:
        with Stack(workdir, "phases") as stack:
            for simple, n in ((True, args.n), (False, max(50, args.n // 4))):
                submit_batches(stack.url, "bench_noop", n)
                timings = workdir / f"timings-{simple}.jsonl"
                command = [PY, str(ROOT / "bench" / "timed_worker.py"), "--name", f"timed-{simple}", "--burst"]
                if simple:
                    command.append("--simple")
                t0 = time.perf_counter()
                subprocess.run(command, cwd=ROOT, env=dict(stack.env, BENCH_TIMINGS=str(timings)), check=True)
                elapsed = time.perf_counter() - t0
                emit(
                    f"\n{'SimpleWorker' if simple else 'forking Worker'}: {n} jobs, {elapsed / n * 1000:.1f} ms per job"
                )
                groups: dict[str, list[float]] = collections.defaultdict(list)
                for line in timings.read_text().splitlines():
                    record = json.loads(line)
                    groups[record["what"]].append(record["seconds"])
                for what, values in groups.items():
                    emit(
                        f"  {what:48} p50 {ms(pct(values, 50)):>6} ms  mean {sum(values) / len(values) * 1000:6.2f} ms"
                    )
    finally:
        workdir.cleanup()


def cpu(args) -> None:
    """Where the CPU goes while W simple workers drain N jobs: ours against raw RQ.

    Counted from the moment the workers start (submission excluded) to the end of the drain;
    the workers' CPU is read from the exit accounting of this process's children.
    """
    import os

    from bench.execution import drain, enqueue_raw
    from bench.stores import completed_span

    workdir = Workdir()
    try:
        with Stack(workdir, "cpu") as stack:
            api_pids, redis_pid = [stack.api.process.pid, *stack.api.worker_pids()], [stack.redis.process.pid]
            for kind in ("ours", "raw"):
                ids = submit_batches(stack.url, "bench_noop", args.n) if kind == "ours" else enqueue_raw(stack, args.n)
                api0, redis0, children0 = cpu_seconds(api_pids), cpu_seconds(redis_pid), os.times()
                t0 = drain(stack, kind, True, args.w)
                if kind == "ours":
                    while completed_span(stack.database_url, ids)[2] < args.n:
                        time.sleep(0.01)
                elapsed = time.time() - t0
                children1 = os.times()
                workers = (children1.children_user - children0.children_user) + (
                    children1.children_system - children0.children_system
                )
                use = {
                    "api": cpu_seconds(api_pids) - api0,
                    "workers": workers,
                    "redis": cpu_seconds(redis_pid) - redis0,
                }
                emit(
                    f"{kind}: W={args.w} N={args.n}: {args.n / elapsed:.0f} jobs/s; CPU ms per job: "
                    + ", ".join(f"{name} {1e3 * value / args.n:.2f}" for name, value in use.items())
                    + f", total {1e3 * sum(use.values()) / args.n:.2f}"
                )
    finally:
        workdir.cleanup()
