"""F16: the Redis master SIGKILLed under load; Sentinel promotes the replica.

A Redis master, its replica and three Sentinels of the test's own (the master is killed, so not
the session's group); the API and two workers reach Redis through the ``redis+sentinel://`` URL
only. Jobs are submitted and running on both workers when the master dies. Passes when every
acknowledged job ends COMPLETED within 60 s of the promotion, a job runs twice only when a run of
it was cut by the failover, nothing answers a 5xx but a 503 with Retry-After, and both workers
live on. Reports the time from the kill to the first job completed on the new master.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.chaos.failover import (
    all_done_after,
    first_completed_after,
    in_flight_at,
    unexplained_reruns,
)
from tests.chaos.harness import (
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
from tests.sentinels import SentinelGroup

pytestmark = pytest.mark.one_pass(store="postgres", reason="a Sentinel failover under load")

JOBS = scaled(60, 300)
RATE = scaled(20, 20)
#: The kill comes once this many jobs are acknowledged (and both workers run one): the rest of
#: the load meets the failover.
KILL_AFTER = scaled(10, 100)
#: How long each job sleeps: short enough that 300 run on two workers within the bound.
LOW, HIGH = 0.05, 0.25
#: The promise: every acknowledged job done within this many seconds of the promotion.
AFTER_PROMOTION = 60.0
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


@pytest.mark.timeout(scaled(150, 900))
def test_f16_master_killed_under_load_and_sentinel_promotes_the_replica(cluster, tmp_path):
    group = SentinelGroup.start(tmp_path / "sentinels")
    cluster.on_shutdown.append(group.close)
    cluster.broker_url = group.url
    cluster.start_api()
    workers = [cluster.start_worker(f"f16-w{i}", wait=False) for i in range(2)]
    for worker in workers:
        cluster.wait_worker_ready(worker)
    load = Load(cluster.api, total=JOBS, rate=RATE, seed=SEED, low=LOW, high=HIGH)
    started = time.monotonic()

    with Recorder(cluster.api, interval=0.3) as recorder:
        # Given jobs being submitted and running on both workers
        load.start()
        wait_until(
            lambda: len(load.acked) >= KILL_AFTER and all(cluster.inflight_on(worker) for worker in workers),
            timeout=20 + KILL_AFTER / RATE,
            message=f"not {KILL_AFTER} jobs acknowledged with both workers running one",
        )

        # When the master is SIGKILLed and the Sentinels promote the replica
        load_running = not load.finished.is_set()
        old_master = group.master_address()
        killed_at = time.time()
        group.kill_master()
        dead_at = time.time()
        new_master = group.wait_promoted(timeout=30)
        promoted_at = time.time()
        load.join(timeout=JOBS / RATE + 60)

        # Then every acknowledged job ends, within the bound after the promotion
        stuck = None
        try:
            jobs = wait_all_terminal(
                cluster,
                load.acked,
                timeout=AFTER_PROMOTION + promoted_at - time.time(),
                recorder=recorder,
                max_run=HIGH,
            )
        except AssertionError as exc:  # report the figures first, then fail
            stuck = str(exc)
            jobs = {job["job_id"]: job for job in cluster.api.all_jobs() if job["job_id"] in set(load.acked)}

    # A run that a worker began while the kill was on its way was cut by it too.
    in_flight = in_flight_at(cluster, killed_at, until=dead_at)
    runs = executions_per_job(cluster, load.acked)
    done_after = all_done_after(jobs, promoted_at)
    report_figures(
        "F16",
        {
            "jobs": len(load.acked),
            "answers": dict(load.answers),
            "503_with_retry_after": cluster.api.unavailable,
            "runs_in_flight_at_kill": len(in_flight),
            "executions_per_job": histogram(runs),
            "kill_to_promotion_seen_s": round(promoted_at - killed_at, 2),
            "kill_to_first_completion_on_new_master_s": first_completed_after(jobs, runs, killed_at),
            "promotion_to_all_done_s": done_after,
            "seconds_total": round(time.monotonic() - started, 1),
            "old_master": f"{old_master[0]}:{old_master[1]}",
            "new_master": f"{new_master[0]}:{new_master[1]}",
            "seed": SEED,
        },
    )

    assert not load.problems, "\n".join(load.problems[:20])
    assert stuck is None, stuck
    assert new_master != old_master, f"the Sentinels named the killed master {old_master} again"
    assert load_running, "the load ended before the kill: the scenario showed nothing"
    assert in_flight, "no run was in flight at the kill"
    not_completed = [cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"]
    assert not not_completed, f"{len(not_completed)} job(s) did not complete:\n" + "\n".join(not_completed[:20])
    assert done_after is not None and done_after <= AFTER_PROMOTION, (
        f"the last job ended {done_after} s after the promotion (bound {AFTER_PROMOTION} s)"
    )
    check_invariants(cluster, jobs, recorder)
    reruns = unexplained_reruns(runs, in_flight)
    assert not reruns, "jobs that ran again though the failover cut no run of theirs:\n" + "\n".join(reruns[:20])
    never = [job_id for job_id, executions in runs.items() if not executions]
    assert not never, f"completed jobs that never ran: {never[:10]}"
    dead = [worker.name for worker in workers if not worker.alive()]
    assert not dead, f"workers that did not survive the failover: {dead}"
