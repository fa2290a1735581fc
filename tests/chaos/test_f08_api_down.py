"""F8: the API SIGKILLed while workers finish jobs, restarted a few seconds later.

Passes when the workers' reports, retried meanwhile, land once it is back, every job completes
once, and replayed reports (started, progress, completed, failed; current and older attempts)
change nothing.
"""

from __future__ import annotations

import time

from tests.chaos.harness import (
    RECOVERY_BOUND,
    TOKEN,
    Recorder,
    check_invariants,
    executions_per_job,
    wait_all_terminal,
    wait_until,
)

COMPARED = ("status", "attempt", "result", "error", "progress", "worker", "started_at", "completed_at", "updated_at")


def test_f8_reports_land_after_the_api_comes_back_and_replays_change_nothing(running):
    cluster = running
    workers = [cluster.start_worker("f8-a"), cluster.start_worker("f8-b", simple=True)]
    with Recorder(cluster.api, interval=0.2) as recorder:
        job_ids = [cluster.api.submit("chaos_sleep", kwargs={"seconds": 1.5})["job_id"] for _ in range(6)]
        wait_until(lambda: all(cluster.inflight_on(w) for w in workers), timeout=15)

        # When the API dies while both workers are mid-job, and stays down for 4 s
        cluster.kill_api()
        time.sleep(4)
        assert any(run.ended for run in cluster.executions()), "no job ended while the API was down"
        cluster.start_api()

        # Then every job completes
        jobs = wait_all_terminal(cluster, job_ids, timeout=RECOVERY_BOUND + 20, recorder=recorder)
    assert all(job["status"] == "COMPLETED" for job in jobs.values()), [cluster.describe(j) for j in jobs.values()]
    check_invariants(cluster, jobs, recorder)
    runs = executions_per_job(cluster, job_ids)
    assert all(len(executions) == 1 for executions in runs.values()), runs
    retried = sum(worker.output().count("will retry") for worker in workers)
    assert retried, "no worker had to retry a report: the API outage showed nothing"

    # And replaying any report, for the current or an older attempt, changes nothing
    headers = {"X-Internal-Token": TOKEN}
    for job in jobs.values():
        before = cluster.api.job(job["job_id"])
        for attempt in (job["attempt"], job["attempt"] - 1):
            replays = {
                "started": {"attempt": attempt, "worker": "someone-else"},
                "progress": {"attempt": attempt, "progress": 10, "message": "late"},
                "completed": {"attempt": attempt, "result": {"forged": True}},
                "failed": {"attempt": attempt, "error": "late failure"},
            }
            for event, body in replays.items():
                response = cluster.api.post(f"/internal/jobs/{job['job_id']}/{event}", json=body, headers=headers)
                assert response.status_code in (200, 409), f"{event} replay: {response.status_code} {response.text}"
        after = cluster.api.job(job["job_id"])
        changed = {key: (before[key], after[key]) for key in COMPARED if before[key] != after[key]}
        assert not changed, f"a replayed report changed job {job['job_id']}: {changed}"
    check_invariants(cluster, {job_id: cluster.api.job(job_id) for job_id in job_ids}, recorder)
