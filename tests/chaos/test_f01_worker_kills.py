"""F1: 300+ jobs of 0.2-2 s; a random worker SIGKILLed every few seconds, and restarted.

Passes when all reach COMPLETED, none is left non-terminal after the recovery bound, and each
ran at least once, more only when its worker was killed mid-job.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chaos.harness import (
    RECOVERY_BOUND,
    SOAK,
    TERMINAL,
    Recorder,
    check_invariants,
    executions_per_job,
    histogram,
    kill_recovery_seconds,
    report_figures,
    scaled,
    unexplained_reruns,
    wait_all_terminal,
)

pytestmark = pytest.mark.one_pass(store="postgres", reason="workers killed under load")

WORKERS = 4
JOBS = scaled(200, 2000)
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


def durations(rng: random.Random, count: int) -> list[float]:
    """0.2-2 s, most of them short (mean ~0.5 s) so that 300+ jobs fit the suite's budget."""
    return [round(0.2 + 1.8 * rng.random() ** 5, 2) for _ in range(count)]


@pytest.mark.timeout(scaled(170, 1800))
def test_f1_random_worker_sigkilled_every_few_seconds(running):
    cluster = running
    rng = random.Random(SEED)
    generation = {slot: 0 for slot in range(WORKERS)}
    slots = {}
    for slot in range(WORKERS):
        slots[slot] = cluster.start_worker(f"f1-s{slot}-g0", wait=False)
    for worker in slots.values():
        cluster.wait_worker_ready(worker)

    plan = durations(rng, JOBS)
    started = time.monotonic()
    with Recorder(cluster.api, interval=0.3) as recorder:
        with ThreadPoolExecutor(4) as pool:
            submitted = list(
                pool.map(
                    lambda seconds: cluster.api.submit(
                        "chaos_sleep", kwargs={"seconds": seconds}, max_retries=10, max_interruptions=10
                    ),
                    plan,
                )
            )
        job_ids = [job["job_id"] for job in submitted]

        # Kill a random busy worker every 1.5-3.5 s until 90% of the jobs are done; two kills
        # in three take the work-horse with it (a machine or container dying), the third
        # leaves the horse orphaned (only the worker's main process dies).
        kill_phase_end = time.monotonic() + scaled(40, 900)
        while time.monotonic() < kill_phase_end:
            time.sleep(rng.uniform(1.5, 3.5))
            done = sum(1 for job in (recorder.poll() or []) if job["status"] in TERMINAL)
            if done >= 0.9 * JOBS:
                break
            busy = [slot for slot, worker in slots.items() if cluster.inflight_on(worker)]
            slot = rng.choice(busy or list(slots))
            cluster.kill_worker(slots[slot], horse=len(cluster.kills) % 3 != 2)
            generation[slot] += 1
            slots[slot] = cluster.start_worker(f"f1-s{slot}-g{generation[slot]}", wait=False)
        faults_stopped = time.monotonic()

        remaining = sum(plan) / WORKERS  # generous: the backlog if nothing were done yet
        stuck = None
        try:
            jobs = wait_all_terminal(cluster, job_ids, timeout=RECOVERY_BOUND + remaining, recorder=recorder, max_run=2)
        except AssertionError as exc:  # report the figures first, then fail
            stuck = str(exc)
            wanted = set(job_ids)
            jobs = {job["job_id"]: job for job in cluster.api.all_jobs() if job["job_id"] in wanted}
    drained = time.monotonic()

    runs = executions_per_job(cluster, job_ids)
    recoveries = kill_recovery_seconds(cluster, recorder)
    measured = [seconds for _, _, seconds in recoveries if seconds is not None]
    figures = {
        "seed": SEED,
        "jobs_submitted": len(job_ids),
        "workers": WORKERS,
        "workers_killed": len(cluster.kills),
        "kills_with_jobs_in_flight": sum(1 for kill in cluster.kills if kill.inflight),
        "jobs_interrupted_by_kills": len(recoveries),
        "longest_kill_to_requeued_or_done_s": round(max(measured), 2) if measured else None,
        "executions_per_job": histogram(runs),
        "statuses": dict(sorted({s: sum(1 for j in jobs.values() if j["status"] == s) for s in TERMINAL}.items())),
        "seconds_total": round(drained - started, 1),
        "seconds_after_faults_stopped": round(drained - faults_stopped, 1),
        "stray_processes_after_drain": cluster.strays(),
        "soak": SOAK,
    }
    report_figures("F1", figures)

    assert stuck is None, stuck

    not_completed = [cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"]
    assert not not_completed, "jobs not COMPLETED:\n" + "\n".join(not_completed[:20])
    check_invariants(cluster, jobs, recorder)
    never_ran = [job_id for job_id, executions in runs.items() if not executions]
    assert not never_ran, f"COMPLETED jobs that never ran: {never_ran[:10]}"
    reruns = unexplained_reruns(cluster, runs)
    assert not reruns, "jobs that ran again without their worker being killed:\n" + "\n".join(reruns[:20])
    slow = [(kill.worker, job_id, seconds) for kill, job_id, seconds in recoveries]
    slow = [entry for entry in slow if entry[2] is None or entry[2] > RECOVERY_BOUND]
    assert not slow, f"jobs of killed workers not back on a queue or done within {RECOVERY_BOUND} s: {slow}"
