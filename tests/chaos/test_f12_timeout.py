"""F12: jobs over their timeout, on a forking and on a simple worker, one of them blocked in
a child process of its own.

Passes when each is FAILED with a timeout error within its timeout + a few seconds, no
process is left behind (work-horse, or the task's child), and the worker goes on working.
"""

from __future__ import annotations

import time

from tests.chaos.harness import (
    Recorder,
    check_invariants,
    children_of,
    cmdline,
    pid_alive,
    wait_all_terminal,
    wait_until,
)

TIMEOUT = 2
SLACK = 5  # "a few seconds"


def test_f12_job_over_its_timeout_fails_in_time_without_orphans(cluster):
    cluster.start_redis()
    cluster.start_api()
    forking = cluster.start_worker("f12-fork", queues="high", wait=False)
    simple = cluster.start_worker("f12-simple", queues="low", simple=True, wait=False)
    for worker in (forking, simple):
        cluster.wait_worker_ready(worker)
    api = cluster.api
    # Pairs that run at the same time, one on each worker
    rounds = [
        [("chaos_sleep", "high", forking), ("chaos_subprocess", "low", simple)],
        [("chaos_subprocess", "high", forking), ("chaos_sleep", "low", simple)],
    ]
    with Recorder(api, interval=0.2) as recorder:
        job_ids: list[str] = []
        outcomes = {}
        for cases in rounds:
            submitted = [
                (api.submit(task, kwargs={"seconds": 60}, priority=priority, timeout=TIMEOUT, max_retries=0), task, w)
                for task, priority, w in cases
            ]
            watched = []
            for job, task, worker in submitted:
                run = cluster.wait_running(job["job_id"], timeout=10)
                # The task's own children: `sleep` processes under the process running it (the
                # simple worker also has RQ's scheduler as a child, which is not the job's).
                wait_until(
                    lambda run=run, task=task: (
                        task != "chaos_subprocess"
                        or any(cmdline(pid).startswith("sleep ") for pid in children_of(run.pid))
                    ),
                    timeout=TIMEOUT,
                    message=f"{task} started no child process",
                )
                descendants = [pid for pid in children_of(run.pid) if cmdline(pid).startswith("sleep ")]
                watched.append((job["job_id"], task, worker, run, descendants))
            for job_id, task, worker, run, descendants in watched:
                wait_until(
                    lambda job_id=job_id: api.job(job_id)["status"] == "FAILED",
                    timeout=max(0.1, run.started + TIMEOUT + SLACK - time.time()),
                    message=f"{task} on {worker.name} not FAILED within {TIMEOUT} + {SLACK} s of its start",
                )
                ended_after = time.time() - run.started
                time.sleep(0.3)
                leftovers = [pid for pid in descendants if pid_alive(pid)]
                if run.pid != worker.pid and pid_alive(run.pid):  # the forking worker's work-horse
                    leftovers.append(run.pid)
                outcomes[job_id] = (task, worker.name, round(ended_after, 1), leftovers)
                job_ids.append(job_id)

        jobs = wait_all_terminal(cluster, job_ids, timeout=10, recorder=recorder)
        for job_id, (task, worker_name, _, leftovers) in outcomes.items():
            error = jobs[job_id]["error"] or ""
            assert "timeout" in error.lower() or "timed out" in error.lower(), f"{task} on {worker_name}: {error!r}"
            assert not leftovers, f"{task} on {worker_name} left processes behind: {leftovers}"

        # And both workers go on working
        after = [api.submit("chaos_sleep", kwargs={"seconds": 0.1}, priority=p)["job_id"] for p in ("high", "low")]
        done = wait_all_terminal(cluster, after, timeout=15, recorder=recorder)
    print(f"\n[chaos F12] timeout={TIMEOUT}s outcomes={list(outcomes.values())}")
    assert all(job["status"] == "COMPLETED" for job in done.values())
    assert forking.alive() and simple.alive()
    check_invariants(cluster, {**jobs, **done}, recorder)
    assert not cluster.strays(), cluster.strays()
