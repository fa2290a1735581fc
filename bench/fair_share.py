"""i. Execution with fair share on and off: N no-op jobs of two owners drained by W burst workers.

Two APIs on SQLite, alike but for FAIR_SHARE (true: each submission also writes the owner index,
and the workers' pop script takes jobs by owner; false: the index is not written and the pop is
first come, first served, still one script that reads the paused set), plus raw RQ in the same
run (on one API's Redis, then the other's, round by round). Owners alice and bob each submit half
of the N jobs, alice's batches first (the list holds alice's jobs ahead of bob's: with fair share
on, every other pop takes bob's oldest job from behind alice's backlog, the removal's longest
walk). Elapsed: from starting the workers to the last completion the store recorded; each
configuration runs ``rounds`` times, the sides rotating, and the best run of each side is compared
(the issue's bound: fair share costs at most 10% of execution throughput, i.e. on/off >= 0.90).
"""

from __future__ import annotations

import time

from bench.common import Results, Stack, Workdir, emit, session, table
from bench.execution import RAW, drain, run_raw
from bench.stores import completed_span

KEYS = {"alice": "bench-alice-key-0123456789abcdef", "bob": "bench-bob-key-0123456789abcdef"}
API_KEYS = ",".join(f"{owner}:{key}" for owner, key in KEYS.items())
ON, OFF = "fair share on", "fair share off"


def submit_owners(stack: Stack, n: int, size: int = 1000) -> list[str]:
    """Half of ``n`` no-op jobs by each owner, alice's first; their ids."""
    ids: list[str] = []
    with session() as http:
        for owner, count in (("alice", n - n // 2), ("bob", n // 2)):
            sent = 0
            while sent < count:
                k = min(size, count - sent)
                r = http.post(
                    f"{stack.url}/tasks/bench_noop/batch",
                    json={"jobs": [{}] * k},
                    headers={"Authorization": f"Bearer {KEYS[owner]}"},
                    timeout=300,
                )
                r.raise_for_status()
                ids.extend(r.json()["job_ids"])
                sent += k
    return ids


def run_ours(stack: Stack, n: int, workers: int, simple: bool) -> dict:
    ids = submit_owners(stack, n)
    t0 = drain(stack, "ours", simple, workers)
    deadline = time.monotonic() + 60
    while True:
        first, last, done = completed_span(stack.database_url, ids)
        if done == n:
            return {"elapsed": last - t0, "steady": last - first}
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store said COMPLETED for {done} of {n} jobs")
        time.sleep(0.1)


def pop_micros(stack: Stack) -> float:
    """Redis's own time per call of the pop script (``INFO commandstats``, microseconds) since the
    last reset: what fair share adds inside Redis, unaffected by the machine's other load."""
    stats = stack.redis_client().info("commandstats")
    entry = stats.get("cmdstat_evalsha") or {}
    return float(entry.get("usec_per_call", 0.0))


def run(workdir: Workdir, results: Results, *, n: int, rounds: int = 3, worker_counts=(1, 2), simple=True) -> None:
    rows = []
    cls = "SimpleWorker" if simple else "Worker (fork)"
    with (
        Stack(workdir, "fair-on", API_KEYS=API_KEYS, FAIR_SHARE="true") as on,
        Stack(workdir, "fair-off", API_KEYS=API_KEYS, FAIR_SHARE="false") as off,
    ):
        stacks = {ON: on, OFF: off}
        sides = [ON, OFF, RAW]
        for w in worker_counts:
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for stack in stacks.values():
                stack.redis_client().config_resetstat()
            for i in range(rounds):
                for side in sides[i % 3 :] + sides[: i % 3]:
                    stack = stacks.get(side) or (on if i % 2 else off)  # raw RQ beside each in turn
                    runs[side].append(run_raw(stack, n, w, simple) if side == RAW else run_ours(stack, n, w, simple))
            rate = {side: n / min(r["elapsed"] for r in runs[side]) for side in sides}
            steady = {side: n / min(r["steady"] for r in runs[side]) for side in sides}
            ratio, steady_ratio = rate[ON] / rate[OFF], steady[ON] / steady[OFF]
            median = sorted(f["elapsed"] / o["elapsed"] for o, f in zip(runs[ON], runs[OFF], strict=True))[rounds // 2]
            pops = {side: pop_micros(stack) for side, stack in stacks.items()}
            each = " ".join(f"{f['elapsed'] / o['elapsed']:.2f}" for o, f in zip(runs[ON], runs[OFF], strict=True))
            rows.append(
                [cls, w, n, f"{rate[ON]:.0f}", f"{rate[OFF]:.0f}", f"{rate[RAW]:.0f}", f"{ratio:.2f}",
                 f"{steady_ratio:.2f}", each, f"{median:.2f}", f"{pops[ON]:.1f} / {pops[OFF]:.1f}"]
            )  # fmt: skip
            emit(f"  fair share {cls} W={w} N={n}: on {rate[ON]:.0f}/s, off {rate[OFF]:.0f}/s, raw {rate[RAW]:.0f}/s")
            label = f"execution {'simple' if simple else 'fork'} W={w}, fair share on/off"
            results.ratio(f"{label} (best run of each, start to last completion)", ratio)
            results.ratio(f"{label} (steady state)", steady_ratio)
            results.ratio(f"{label} (median of the rounds' ratios)", median)
            results.check(f"{label}: jobs/s", f"{ratio:.2f}", ">= 0.90", ratio >= 0.9)
    emit(
        table(
            "i. Execution with fair share on and off: no-op jobs of two owners, burst workers (jobs/s)",
            ["worker class", "W", "N", "on (best)", "off (best)", "raw RQ (best)", "on/off", "steady on/off",
             "each round's on/off", "median", "pop script in Redis, µs/call (on / off)"],
            rows,
        )
    )  # fmt: skip
    emit(
        "on/off: best run of each side, from starting the workers to the last completion in the store;\n"
        "steady: N / (last end - first start), without process start-up; half the jobs are alice's, half bob's;\n"
        "pop script: Redis's own time per EVALSHA (INFO commandstats), the whole pop inside Redis."
    )
