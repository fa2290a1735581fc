"""c. Polling: ``GET /jobs/<id>`` of a COMPLETED job at 8 connections, against a hello-world
Flask route served by the same gunicorn configuration (``bench/hello_app.py``).

The two servers are loaded in alternating short rounds (wrk, else a Python keep-alive client).
The ratio is each side's best round against the other's (as ``timeit`` takes the fastest of
its repeats): on this shared VM either server sometimes runs a whole round at ~40% of its
usual rate with ~1.6x the CPU per request, and that can hit most rounds of one side (once, 5 of
7 hello-world rounds), which makes the median of the rounds' ratios swing from 0.3 to 2. The
median is printed too. Each run also records the CPU time the server's gunicorn workers used
per request.
"""

from __future__ import annotations

import requests

from bench.common import Results, Stack, Workdir, cpu_seconds, emit, ms, start_hello, table, wrk


def _run(server, url: str, connections: int, duration: float) -> dict:
    pids = server.worker_pids()
    before = cpu_seconds(pids)
    got = wrk(url, connections, duration)
    got["cpu_per_request"] = (cpu_seconds(pids) - before) / max(got["requests"], 1)
    return got


def run(workdir: Workdir, results: Results, *, connections: int, duration: float, rounds: int) -> None:
    with Stack(workdir, "polling") as stack:
        job_id = requests.post(f"{stack.url}/tasks/bench_noop", json={}, timeout=30).json()["job_id"]
        stack.worker("ours", True).wait(timeout=120)
        job = requests.get(f"{stack.url}/jobs/{job_id}", timeout=30).json()
        if job["status"] != "COMPLETED":
            raise RuntimeError(f"the polled job is {job['status']}, expected COMPLETED")
        hello = start_hello(stack.env, workdir)
        try:
            ours_url, hello_url = f"{stack.url}/jobs/{job_id}", f"{hello.url}/hello"
            wrk(ours_url, connections, 2)  # warm-up
            wrk(hello_url, connections, 2)
            runs = []
            for i in range(rounds):
                # Alternate which side goes first.
                if i % 2 == 0:
                    ours = _run(stack.api, ours_url, connections, duration)
                    base = _run(hello, hello_url, connections, duration)
                else:
                    base = _run(hello, hello_url, connections, duration)
                    ours = _run(stack.api, ours_url, connections, duration)
                runs.append((ours, base))
        finally:
            hello.stop()
    rows = []
    ratios, cpu_ratios = [], []
    for i, (ours, base) in enumerate(runs, 1):
        ratio = ours["rate"] / base["rate"]
        cpu_ratio = base["cpu_per_request"] / ours["cpu_per_request"]
        ratios.append(ratio)
        cpu_ratios.append(cpu_ratio)
        for name, got, extra in (
            ("GET /jobs/<id>", ours, ["", ""]),
            ("GET /hello", base, [f"{ratio:.2f}", f"{cpu_ratio:.2f}"]),
        ):
            rows.append(
                [f"{name} (round {i})", f"{got['rate']:.0f}", ms(got["p50"]), ms(got["p99"]),
                 f"{got['cpu_per_request'] * 1e6:.0f}", *extra]
            )  # fmt: skip
    median = sorted(ratios)[len(ratios) // 2]
    cpu_median = sorted(cpu_ratios)[len(cpu_ratios) // 2]
    ratio = max(o["rate"] for o, _ in runs) / max(b["rate"] for _, b in runs)
    cpu_ratio = min(b["cpu_per_request"] for _, b in runs) / min(o["cpu_per_request"] for o, _ in runs)
    emit(
        table(
            f"c. Polling: {connections} connections, {duration:.0f} s per run, {rounds} alternating rounds "
            f"({runs[0][0]['tool']})",
            ["route", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "ours/hello req/s", "ours/hello by CPU"],
            rows,
        )
    )
    emit(
        f"ours/hello, best round of each: {ratio:.2f} by req/s, {cpu_ratio:.2f} by server CPU per request "
        f"(hello's CPU µs/req / ours); median of the rounds' ratios: {median:.2f} by req/s, "
        f"{cpu_median:.2f} by CPU"
    )
    results.ratio(f"polling c={connections} (GET /jobs/<id> / hello req/s, best round of each)", ratio)
    results.ratio(f"polling c={connections} (hello / GET /jobs/<id> server CPU per request, best of each)", cpu_ratio)
    results.ratio(f"polling c={connections} (req/s, median of the rounds' ratios)", median)
    results.check("polling: GET /jobs/<id> / hello-world req/s", f"{ratio:.2f}", ">= 0.70", ratio >= 0.7)
