"""F5: workers listening on several queues (RQ pops those with LPOP, not the atomic LMOVE)
SIGKILLed every second under many short jobs.

Passes when, after reconciliation, no job is QUEUED in the store but absent from Redis: the
jobs that a worker popped and died with before registering them are found and re-queued.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.chaos.harness import (
    RECOVERY_BOUND,
    TERMINAL,
    Recorder,
    check_invariants,
    executions_per_job,
    histogram,
    scaled,
    unexplained_reruns,
    wait_all_terminal,
    wait_until,
)

pytestmark = pytest.mark.one_pass(store="postgres", reason="workers killed under load")

QUEUES = "high,default,low"
WORKERS = 3
JOBS = scaled(200, 1500)
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


def redis_holds(cluster) -> set[str]:
    """Every RQ job id waiting in a queue list or a scheduled registry."""
    held: set[str] = set()
    for queue in QUEUES.split(","):
        held.update(raw.decode() for raw in cluster.rconn.lrange(f"rq:queue:{queue}", 0, -1))
        held.update(raw.decode() for raw in cluster.rconn.zrange(f"rq:scheduled:{queue}", 0, -1))
    return held


@pytest.mark.timeout(scaled(120, 1800))
def test_f5_multi_queue_workers_killed_every_second(running):
    cluster = running
    rng = random.Random(SEED)
    workers = [cluster.start_worker(f"f5-w{i}-g0", queues=QUEUES, wait=False) for i in range(WORKERS)]
    for worker in workers:
        cluster.wait_worker_ready(worker)

    with Recorder(cluster.api, interval=0.3) as recorder:
        job_ids = [
            cluster.api.submit(
                "chaos_sleep",
                kwargs={"seconds": round(rng.uniform(0.02, 0.15), 3)},
                priority=rng.choice(["high", "default", "low"]),
                max_retries=20,
                # Kills are interruptions (issue 13 item 4): a job may be under several of them.
                max_interruptions=20,
            )["job_id"]
            for _ in range(JOBS)
        ]

        # When a random worker is SIGKILLed every second, and replaced at once, until 60% are done
        kill_until = time.monotonic() + scaled(20, 300)
        generation = 0
        while time.monotonic() < kill_until:
            time.sleep(rng.uniform(0.6, 1.2))
            if sum(1 for job in recorder.poll() or [] if job["status"] in TERMINAL) >= 0.6 * JOBS:
                break
            live = cluster.live_workers()
            victim = rng.choice(live)
            cluster.kill_worker(victim, horse=rng.random() < 0.7)
            generation += 1
            slot = victim.name.split("-")[1]
            cluster.start_worker(f"f5-{slot}-g{generation}", queues=QUEUES, wait=False)

        # And then every worker at once, so that nothing is between a queue and a worker
        for worker in cluster.live_workers():
            cluster.kill_worker(worker, horse=True)

        # Then, once reconciled, every live job is QUEUED and waiting in Redis
        problems: list[str] = []

        def reconciled() -> bool:
            jobs = recorder.poll() or []
            held = redis_holds(cluster)
            problems[:] = [
                cluster.describe(job)
                for job in jobs
                if job["status"] not in TERMINAL and (job["status"] != "QUEUED" or job["rq_job_id"] not in held)
            ]
            return not problems

        wait_until(reconciled, timeout=RECOVERY_BOUND, interval=0.5, message="")
        assert not problems, "live jobs not waiting in Redis after reconciliation:\n" + "\n".join(problems[:20])
        waiting = sum(1 for job in recorder.poll() or [] if job["status"] == "QUEUED")

        # And fresh workers finish them all
        for i in range(WORKERS):
            cluster.start_worker(f"f5-fresh{i}", queues=QUEUES, wait=False)
        jobs = wait_all_terminal(cluster, job_ids, timeout=RECOVERY_BOUND + 60, recorder=recorder, max_run=0.5)

    runs = executions_per_job(cluster, job_ids)
    lost = [j for j, executions in runs.items() if jobs[j]["attempt"] > 1 and 1 not in {r.attempt for r in executions}]
    print(
        f"\n[chaos F5] jobs={len(job_ids)} kills={len(cluster.kills)} waiting_after_reconcile={waiting} "
        f"requeued_before_ever_running={len(lost)} executions={histogram(runs)}"
    )
    assert waiting > 0, "the scenario ended with no job waiting: it showed nothing"
    assert all(job["status"] == "COMPLETED" for job in jobs.values()), [
        cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"
    ][:20]
    check_invariants(cluster, jobs, recorder)
    assert not [job_id for job_id, executions in runs.items() if not executions]
    reruns = unexplained_reruns(cluster, runs)
    assert not reruns, "\n".join(reruns[:20])
