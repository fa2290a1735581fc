"""F18: a task that saves a checkpoint at each of its 100 steps has its worker SIGKILLed at
step ~60; its next attempt resumes from the checkpoint.

Passes when the job completes on attempt 2, every step ran, the second attempt started right
after the last saved step, and no step ran twice except (at most) the one in flight at the kill.
"""

from __future__ import annotations

from tests.chaos.harness import (
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    report_figures,
    wait_all_terminal,
    wait_until,
)
from tests.chaos.settings import SOAK

TO = 100
KILL_AT = 60
#: Seconds per step: 5 s of counting under make test, 10 s in the soak.
STEP_SECONDS = 0.1 if SOAK else 0.05


def steps_run(cluster, job_id: str) -> list[tuple[int, int]]:
    """(attempt, step) of every step the task ran, in order, from the execution log."""
    if not cluster.exec_log.exists():
        return []
    found = []
    for line in cluster.exec_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == "step" and parts[1] == job_id:
            found.append((int(parts[2]), int(parts[3])))
    return found


def test_f18_a_killed_count_resumes_from_its_checkpoint(running):
    cluster = running
    worker = cluster.start_worker("f18-w")
    with Recorder(cluster.api, interval=0.2) as recorder:
        # Given a job counting to 100, a checkpoint saved after each step
        job_id = cluster.api.submit("chaos_count", kwargs={"to": TO, "delay": STEP_SECONDS}, max_retries=0)["job_id"]

        # When its worker (and work-horse) is SIGKILLed once it has run step 60
        wait_until(
            lambda: any(step >= KILL_AT for _, step in steps_run(cluster, job_id)),
            timeout=60,
            message=f"job {job_id} never reached step {KILL_AT}",
        )
        cluster.kill_worker(worker)
        at_kill = steps_run(cluster, job_id)
        saved = cluster.api.job(job_id)["checkpoint_at"]
        cluster.start_worker("f18-spare")
        jobs = wait_all_terminal(cluster, [job_id], timeout=RECOVERY_BOUND + 30, recorder=recorder, max_run=20)

    # Then it completes on attempt 2 (an interruption: no retry was needed or spent)
    job = jobs[job_id]
    assert job["status"] == "COMPLETED" and job["attempt"] == 2, cluster.describe(job)
    assert job["retry_count"] == 0 and saved is not None, job
    first = [step for attempt, step in at_kill if attempt == 1]
    assert first == list(range(1, len(first) + 1)) and first[-1] >= KILL_AT, first
    second = [step for attempt, step in steps_run(cluster, job_id) if attempt == 2]
    # Attempt 2 ran only from the checkpoint on: at most the step in flight at the kill again
    assert second == list(range(second[0], TO + 1)), second
    assert first[-1] <= second[0] <= first[-1] + 1, (first[-1], second[0])
    assert not [s for s in steps_run(cluster, job_id) if s[0] == 1 and s[1] > first[-1]], (
        "attempt 1 ran on after the kill"
    )
    assert job["result"] == {"resumed_after": second[0] - 1, "attempt": 2}, job["result"]
    check_invariants(cluster, jobs, recorder)
    report_figures(
        "f18",
        {"killed_after_step": first[-1], "attempt_2_from_step": second[0], "steps_run": len(first) + len(second)},
    )
