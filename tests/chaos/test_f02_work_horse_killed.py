"""F2: only the work-horse (the forked child running the job) is SIGKILLed; the worker lives.

Passes when the job leaves PROCESSING within the recovery bound: retried when it has retries
left, else FAILED with a clear error.
"""

from __future__ import annotations

import time

from tests.chaos.harness import (
    RECOVERY_BOUND,
    TERMINAL,
    Recorder,
    check_invariants,
    executions_per_job,
    pid_alive,
    wait_all_terminal,
    wait_until,
)


def test_f2_work_horse_sigkilled_job_is_retried_or_failed_clearly(running):
    cluster = running
    worker = cluster.start_worker("f2-w")
    with Recorder(cluster.api, interval=0.2) as recorder:
        # Given a job with one retry left, whose first attempt would run for 30 s
        retried = cluster.api.submit(
            "chaos_sleep", kwargs={"seconds": 0.3, "first_attempt_seconds": 30}, max_retries=1
        )["job_id"]
        run = cluster.wait_running(retried, attempt=1)
        assert run.ppid == worker.pid, "the job should run in a work-horse forked by the worker"

        # When its work-horse is SIGKILLed
        kill = cluster.kill_horse(worker, retried)

        # Then the job leaves PROCESSING within the bound as a new attempt, which completes
        wait_until(
            lambda: cluster.api.job(retried)["attempt"] > 1 or cluster.api.job(retried)["status"] in TERMINAL,
            timeout=RECOVERY_BOUND,
            message=f"job {retried} still on attempt 1 {RECOVERY_BOUND} s after its work-horse was killed",
        )
        left_processing = time.time() - kill.at

        # Given a job without retries, whose work-horse is SIGKILLed too
        failed = cluster.api.submit("chaos_sleep", kwargs={"seconds": 30}, max_retries=0)["job_id"]
        cluster.wait_running(failed, attempt=1)
        cluster.kill_horse(worker, failed)
        jobs = wait_all_terminal(cluster, [retried, failed], timeout=RECOVERY_BOUND + 10, recorder=recorder)

    assert not pid_alive(run.pid)
    assert worker.alive(), f"the worker died with its work-horse:\n{worker.output()[-3000:]}"
    assert left_processing <= RECOVERY_BOUND
    assert jobs[retried]["status"] == "COMPLETED" and jobs[retried]["attempt"] == 2, cluster.describe(jobs[retried])
    attempts = cluster.api.get(f"/jobs/{retried}/attempts").json()["attempts"]
    assert attempts[0]["outcome"] == "FAILED" and attempts[0]["error"], attempts
    # Then the job without retries is FAILED, and its error says what happened
    assert jobs[failed]["status"] == "FAILED", cluster.describe(jobs[failed])
    error = jobs[failed]["error"] or ""
    assert "killed" in error.lower() or "signal 9" in error, f"unclear error: {error!r}"
    check_invariants(cluster, jobs, recorder)
    runs = executions_per_job(cluster, [retried, failed])
    assert [r.attempt for r in runs[retried]] == [1, 2]
    assert [r.attempt for r in runs[failed]] == [1]
