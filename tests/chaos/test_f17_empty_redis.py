"""F17: Redis replaced by an empty one under load (SIGKILLed, its data and AOF deleted, a fresh
one started on the same port): a managed Redis that came back without its data.

Redis is the transport and the store the record, so nothing acknowledged may be lost with it.
Passes when every acknowledged job ends COMPLETED (the reconciler re-enqueues from the store
what Redis forgot), no answer is a 5xx but a 503 with Retry-After, a job runs twice only when a
run of it was cut by the replacement, and both workers live on.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.chaos.failover import all_done_after, in_flight_at, made_before, unexplained_reruns
from tests.chaos.harness import (
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    executions_per_job,
    histogram,
    report_figures,
    scaled,
    wait_all_terminal,
    wait_until,
)
from tests.chaos.load import Load

JOBS = scaled(40, 600)
#: Submissions a second: the load outlasts the moment both workers are busy, so some
#: submissions meet the replacement.
RATE = scaled(20, 20)
#: The replacement comes once this many jobs are acknowledged (and both workers run one).
REPLACE_AFTER = scaled(10, 200)
#: How long each job sleeps.
LOW, HIGH = 0.05, 0.25
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


@pytest.mark.timeout(scaled(120, 900))
def test_f17_redis_replaced_by_an_empty_one_under_load(running):
    cluster = running
    workers = [cluster.start_worker(f"f17-w{i}", wait=False) for i in range(2)]
    for worker in workers:
        cluster.wait_worker_ready(worker)
    load = Load(cluster.api, total=JOBS, rate=RATE, seed=SEED, low=LOW, high=HIGH)
    started = time.monotonic()

    with Recorder(cluster.api, interval=0.3) as recorder:
        # Given jobs being submitted and running on both workers
        load.start()
        wait_until(
            lambda: len(load.acked) >= REPLACE_AFTER and all(cluster.inflight_on(worker) for worker in workers),
            timeout=20 + REPLACE_AFTER / RATE,
            message=f"not {REPLACE_AFTER} jobs acknowledged with both workers running one",
        )

        # When Redis is SIGKILLed and an empty one takes its place
        load_running = not load.finished.is_set()
        replaced_at = cluster.replace_redis_with_empty()
        back_at = time.time()
        load.join(timeout=JOBS / RATE + 60)

        # Then every acknowledged job ends
        stuck = None
        try:
            # The bound follows the work: the recovery bound, then the backlog on two workers.
            timeout = RECOVERY_BOUND + 60 + len(load.acked) * (HIGH + 0.2) / 2
            jobs = wait_all_terminal(cluster, load.acked, timeout=timeout, recorder=recorder, max_run=HIGH)
        except AssertionError as exc:  # report the figures first, then fail
            stuck = str(exc)
            jobs = {job["job_id"]: job for job in cluster.api.all_jobs() if job["job_id"] in set(load.acked)}

    # A run that a worker began while Redis was being replaced was cut by it too.
    in_flight = in_flight_at(cluster, replaced_at, until=back_at)
    runs = executions_per_job(cluster, load.acked)
    report_figures(
        "F17",
        {
            "jobs": len(load.acked),
            "answers": dict(load.answers),
            "runs_in_flight_at_replacement": len(in_flight),
            "executions_per_job": histogram(runs),
            "jobs_requeued_new_attempt": sum(1 for job in jobs.values() if job["attempt"] > 1),
            "redis_back_after_s": round(back_at - replaced_at, 2),
            "replacement_to_all_done_s": all_done_after(jobs, replaced_at),
            "seconds_total": round(time.monotonic() - started, 1),
            "seed": SEED,
        },
    )

    assert not load.problems, "\n".join(load.problems[:20])
    assert stuck is None, stuck
    assert load_running, "the load ended before the replacement: the scenario showed nothing"
    assert in_flight, "no run was in flight at the replacement"
    not_completed = [cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"]
    assert not not_completed, f"{len(not_completed)} job(s) did not complete:\n" + "\n".join(not_completed[:20])
    check_invariants(cluster, jobs, recorder, gone_ok=made_before(recorder, jobs, replaced_at))
    reruns = unexplained_reruns(runs, in_flight)
    assert not reruns, "jobs that ran again though the replacement cut no run of theirs:\n" + "\n".join(reruns[:20])
    never = [job_id for job_id, executions in runs.items() if not executions]
    assert not never, f"completed jobs that never ran: {never[:10]}"
    dead = [worker.name for worker in workers if not worker.alive()]
    assert not dead, f"workers that did not survive the replacement: {dead}"
