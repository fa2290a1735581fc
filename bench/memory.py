"""f. Memory: resident size (psutil RSS) of the API's processes and of one ``--simple`` worker
while it runs ``count`` no-op jobs (submitted in batches while it works)."""

from __future__ import annotations

import threading
import time

import psutil

from bench.common import Results, Stack, Workdir, emit, store_counts, submit_batches, table

MiB = 1 << 20


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def run(workdir: Workdir, results: Results, *, count: int) -> None:
    marks = sorted({1000, count // 2, count} - {0})
    samples = []
    with Stack(workdir, "memory") as stack:
        worker = stack.worker("ours", True, burst=False, name="memory-worker")
        submit_batches(stack.url, "bench_noop", 10)
        _wait_completed(stack, 10, timeout=60)
        gunicorn_workers = stack.api.worker_pids()

        def snapshot(label: str) -> None:
            api = [_rss(pid) for pid in gunicorn_workers]
            samples.append([label, _rss(worker.process.pid), _rss(stack.api.process.pid), api])

        snapshot("after 10 jobs")
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                submit_batches(stack.url, "bench_noop", count - 10)
            except BaseException as exc:  # reported below
                errors.append(exc)

        feeder = threading.Thread(target=feed)
        feeder.start()
        t0 = time.monotonic()
        for mark in marks:
            _wait_completed(stack, mark, timeout=900, errors=errors)
            snapshot(f"after {mark} jobs")
        elapsed = time.monotonic() - t0
        feeder.join()
        worker.stop()
    rows = []
    for label, w_rss, master, api in samples:
        rows.append(
            [label, f"{w_rss / MiB:.1f}", f"{master / MiB:.1f}", " / ".join(f"{a / MiB:.1f}" for a in api),
             f"{(master + sum(api)) / MiB:.1f}"]
        )  # fmt: skip
    emit(
        table(
            f"f. Memory (RSS, MiB): one --simple worker running {count} no-op jobs ({elapsed:.0f} s)",
            ["when", "worker", "gunicorn master", "gunicorn workers", "API total"],
            rows,
        )
    )
    first, last = samples[0], samples[-1]
    growth = (last[1] - first[1]) / MiB
    api_growth = (sum(last[3]) - sum(first[3])) / MiB
    emit(f"worker growth over {count - 10} jobs: {growth:+.1f} MiB; API workers' growth: {api_growth:+.1f} MiB")
    results.check(f"memory: worker RSS after {count} jobs", f"{last[1] / MiB:.1f} MiB", "(report)", None)
    results.check(
        f"memory: API RSS after {count} jobs (master + workers)",
        f"{(last[2] + sum(last[3])) / MiB:.1f} MiB",
        "(report)",
        None,
    )


def _wait_completed(stack: Stack, n: int, *, timeout: float, errors: list | None = None) -> None:
    deadline = time.monotonic() + timeout
    while store_counts(stack.url).get("COMPLETED", 0) < n:
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {n} jobs COMPLETED after {timeout:.0f} s")
        time.sleep(0.2)
