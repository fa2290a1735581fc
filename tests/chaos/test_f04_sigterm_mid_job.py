"""F4: SIGTERM to a worker mid-job.

Passes when the job finishes (warm shutdown) or is re-queued; none is lost. A forking and a
simple worker each get one SIGTERM (warm shutdown: the job finishes there, once, and the
worker takes no new job and exits 0); a third worker gets two (RQ's cold shutdown: the job
is cut short, then re-queued and finished by another worker).
"""

from __future__ import annotations

import signal
import time

from tests.chaos.harness import (
    RECOVERY_BOUND,
    Kill,
    Recorder,
    check_invariants,
    executions_per_job,
    unexplained_reruns,
    wait_all_terminal,
    wait_until,
)


def test_f4_sigterm_mid_job_finishes_or_requeues(running):
    cluster = running
    warm = cluster.start_worker("f4-warm", wait=False)
    simple = cluster.start_worker("f4-simple", simple=True, wait=False)
    cold = cluster.start_worker("f4-cold", wait=False)
    for worker in (warm, simple, cold):
        cluster.wait_worker_ready(worker)

    with Recorder(cluster.api, interval=0.2) as recorder:
        job_ids = [
            cluster.api.submit("chaos_sleep", kwargs={"seconds": 2.0}, max_retries=2)["job_id"] for _ in range(5)
        ]
        wait_until(lambda: all(cluster.inflight_on(w) for w in (warm, simple, cold)), timeout=15)
        held = {w.name: next(iter(cluster.inflight_on(w))) for w in (warm, simple, cold)}
        cold_held = cluster.inflight_on(cold)

        # When the warm and simple workers get one SIGTERM, the cold one two
        termed_at = time.time()
        for worker in (warm, simple, cold):
            worker.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        cold.process.send_signal(signal.SIGTERM)
        cold_exit = cold.process.wait(timeout=10)
        # The cold-stopped worker counts as killed: its job may run again.
        cluster.kills.append(Kill(at=termed_at, worker=cold.name, pid=cold.pid, horses=[], inflight=cold_held))

        # Then the warm-shutdown workers finish their job and exit 0
        assert warm.process.wait(timeout=10) == 0, warm.output()[-3000:]
        assert simple.process.wait(timeout=10) == 0, simple.output()[-3000:]
        for worker in (warm, simple):
            job = cluster.api.job(held[worker.name])
            assert job["status"] == "COMPLETED" and job["worker"] == worker.name and job["attempt"] == 1, job
            later = [r for r in cluster.executions() if worker.pid in (r.pid, r.ppid) and r.started > termed_at]
            assert not later, f"{worker.name} started new work after SIGTERM: {later}"

        # And another worker finishes the rest, the cold-stopped job included
        cluster.start_worker("f4-spare")
        jobs = wait_all_terminal(cluster, job_ids, timeout=RECOVERY_BOUND + 30, recorder=recorder, max_run=2)

    assert cold_exit is not None
    cold_job = jobs[held[cold.name]]
    assert cold_job["attempt"] >= 2 or cold_job["worker"] == cold.name, cluster.describe(cold_job)
    assert all(job["status"] == "COMPLETED" for job in jobs.values()), [cluster.describe(j) for j in jobs.values()]
    check_invariants(cluster, jobs, recorder)
    runs = executions_per_job(cluster, job_ids)
    assert len(runs[held[warm.name]]) == 1 and len(runs[held[simple.name]]) == 1
    assert not unexplained_reruns(cluster, runs)
