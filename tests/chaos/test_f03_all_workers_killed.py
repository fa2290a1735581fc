"""F3: all workers SIGKILLed with jobs in flight, then restarted (under the same names, as a
supervisor or container restart policy would).

Passes when all jobs are recovered within the bound, complete without spending a retry (a
kill is an interruption, not a failure), and re-submitting a used idempotency key
is never blocked by a dead job: while the job is live the key returns it (200), but not the
attempt that died with its worker for longer than the recovery bound; once the job ended, the
key makes a new job (202).
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chaos.checks import drain_timeout
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
    wait_until,
)

pytestmark = pytest.mark.one_pass(reason="every worker killed at once")

NAMES = ["f3-a", "f3-b", "f3-c"]
ROUNDS = scaled(1, 6)
JOBS_PER_ROUND = scaled(24, 60)
#: The least time a job must have left to run for the kill to be sure to catch it in flight
#: (killing three workers takes a few reads of /proc and of the execution log each).
KILL_MARGIN = 0.8
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


class Keys:
    """The client's side of idempotency: which job each key stands for, and every answer."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.current: dict[str, str] = {}  # key -> job id of its latest job
        self.all_jobs: set[str] = set()
        self.answers = {"200 same job": 0, "202 new job after the old one ended": 0}
        self.problems: list[str] = []
        self.body: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}  # job id -> how long its task sleeps
        #: The longest time after a kill that a key still answered with the attempt that died.
        self.blocked_for = 0.0
        self.lock = threading.Lock()

    def submit(self, key: str, body: dict) -> dict:
        job = self.cluster.api.submit("chaos_sleep", idempotency_key=key, **body)
        with self.lock:
            self.body[key] = body
            self.current[key] = job["job_id"]
            self.all_jobs.add(job["job_id"])
            self.seconds[job["job_id"]] = body["kwargs"]["seconds"]
        return job

    def running(self, cluster, *, left: float) -> list[str]:
        """Jobs of these keys running on a live worker now (the tasks' execution log) with at
        least ``left`` seconds of their sleep still to go."""
        now = time.time()
        live = {worker.pid for worker in cluster.live_workers()}
        return [
            run.job_id
            for run in cluster.executions()
            if run.ended is None
            and live & {run.pid, run.ppid}
            and run.job_id in self.seconds
            and run.started + self.seconds[run.job_id] - now >= left
        ]

    def resubmit(self, key: str, *, dead: dict[str, int], killed_at: float) -> dict:
        """Submit ``key`` again and judge the answer; returns the job answered.

        Args:
            dead: job id -> the attempt that died with its worker.
            killed_at: when that worker died. Answering with the dead attempt is fair while
                the service cannot know yet; past the recovery bound, the key is blocked.
        """
        before = self.current[key]
        response = self.cluster.api.post_task("chaos_sleep", idempotency_key=key, **self.body[key])
        job = response.json()
        if response.status_code == 200:
            self.answers["200 same job"] += 1
            if job["job_id"] != before:
                self.problems.append(f"{key}: 200 with {job['job_id']}, but the key's job is {before}")
            if job["status"] == "PROCESSING" and dead.get(job["job_id"]) == job["attempt"]:
                blocked = time.time() - killed_at
                self.blocked_for = max(self.blocked_for, blocked)
                if blocked > RECOVERY_BOUND:
                    self.problems.append(
                        f"{key}: {blocked:.1f} s after its worker was killed, answered with the dead attempt "
                        f"{job['attempt']} of {job['job_id']} still PROCESSING on {job['worker']} (a zombie)"
                    )
        elif response.status_code == 202:
            self.answers["202 new job after the old one ended"] += 1
            old = self.cluster.api.job(before)
            if old["status"] not in TERMINAL:
                self.problems.append(f"{key}: 202 new job {job['job_id']} while {before} is {old['status']}")
            with self.lock:
                self.current[key] = job["job_id"]
                self.all_jobs.add(job["job_id"])
                self.seconds[job["job_id"]] = self.body[key]["kwargs"]["seconds"]
        else:
            self.problems.append(f"{key}: {response.status_code} {response.text[:200]}")
        return job


@pytest.mark.timeout(scaled(110, 1200))
def test_f3_all_workers_killed_in_flight_then_restarted(running):
    cluster = running
    rng = random.Random(SEED)
    workers = [cluster.start_worker(name, wait=False) for name in NAMES]
    for worker in workers:
        cluster.wait_worker_ready(worker)
    keys = Keys(cluster)
    started = time.monotonic()

    with Recorder(cluster.api, interval=0.3) as recorder:
        for round_number in range(ROUNDS):
            # Given jobs, one in three without retries, running on the workers
            round_keys = [f"f3-r{round_number}-k{i}" for i in range(JOBS_PER_ROUND)]
            for i, key in enumerate(round_keys):
                body = {"kwargs": {"seconds": round(rng.uniform(0.6, 1.5), 2), "tag": key}}
                body["max_retries"] = 0 if i % 3 == 0 else 3
                keys.submit(key, body)
            # (at least two jobs, this round's or an earlier one's, with time left to run, so
            # that the kill is sure to catch them in flight)
            wait_until(
                lambda: len(keys.running(cluster, left=KILL_MARGIN)) >= 2,
                timeout=20,
                message="fewer than two jobs in flight with time left to run",
            )

            # When every worker (and its work-horse) is SIGKILLed at once
            round_kills = [cluster.kill_worker(worker) for worker in cluster.live_workers()]
            killed_at = max(kill.at for kill in round_kills)
            dead = {job_id: attempt for kill in round_kills for job_id, attempt in kill.inflight.items()}
            in_flight_keys = [key for key, job_id in keys.current.items() if job_id in dead]
            assert len(in_flight_keys) >= 2, "the kill caught fewer than two jobs in flight"
            # Clients come back for some of these keys; the other jobs are the reconciler's alone.
            dead_keys = in_flight_keys[::2]

            # Then re-submitting their keys at once returns the same (still live) jobs
            for key in dead_keys:
                keys.resubmit(key, dead=dead, killed_at=killed_at)

            # And the workers come back under the same names as soon as their names are free,
            # while clients keep re-submitting the keys, until every job that died is back on
            # a queue (a new attempt) or ended
            def recovered(dead: dict[str, int] = dead) -> bool:
                return all(
                    job["attempt"] > dead[job_id] or job["status"] in TERMINAL
                    for job_id in dead
                    for job in [cluster.api.job(job_id)]
                )

            with ThreadPoolExecutor(len(NAMES)) as pool:
                restarts = [pool.submit(cluster.restart_worker_like_a_supervisor, name) for name in NAMES]
                while time.time() < killed_at + RECOVERY_BOUND + 2:
                    for key in dead_keys:
                        keys.resubmit(key, dead=dead, killed_at=killed_at)
                    if all(future.done() for future in restarts) and recovered():
                        break
                    time.sleep(0.3)
                for future in restarts:
                    future.result()

        faults_stopped = time.monotonic()
        stuck = None
        ended_keys: list[str] = []
        try:
            jobs = wait_all_terminal(
                cluster,
                keys.all_jobs,
                timeout=drain_timeout(len(keys.all_jobs)),
                recorder=recorder,
                max_run=1.5,
                fifo=True,
            )
            # Once a key's job has ended, the key makes a new job, which runs to its end too
            ended_keys = list(keys.current)
            for key in ended_keys:
                keys.resubmit(key, dead={}, killed_at=time.time())
            jobs = wait_all_terminal(
                cluster,
                keys.all_jobs,
                timeout=drain_timeout(len(keys.all_jobs)),
                recorder=recorder,
                max_run=1.5,
                fifo=True,
            )
        except AssertionError as exc:  # report the figures first, then fail
            stuck = str(exc)
            jobs = {job["job_id"]: job for job in cluster.api.all_jobs() if job["job_id"] in keys.all_jobs}
    drained = time.monotonic()

    runs = executions_per_job(cluster, keys.all_jobs)
    recoveries = kill_recovery_seconds(cluster, recorder)
    measured = [seconds for _, _, seconds in recoveries if seconds is not None]
    figures = {
        "seed": SEED,
        "jobs_submitted": len(keys.all_jobs),
        "workers_killed": len(cluster.kills),
        "jobs_in_flight_at_kills": len(recoveries),
        "longest_kill_to_requeued_or_done_s": round(max(measured), 2) if measured else None,
        "executions_per_job": histogram(runs),
        "statuses": {s: sum(1 for j in jobs.values() if j["status"] == s) for s in sorted(TERMINAL)},
        "idempotent_resubmissions": keys.answers,
        "longest_key_answered_with_dead_attempt_s": round(keys.blocked_for, 2),
        "seconds_total": round(drained - started, 1),
        "seconds_after_faults_stopped": round(drained - faults_stopped, 1),
        "soak": SOAK,
    }
    report_figures("F3", figures)

    assert stuck is None, stuck

    assert not keys.problems, "idempotency key answers:\n" + "\n".join(keys.problems[:20])
    assert keys.answers["202 new job after the old one ended"] >= len(ended_keys)
    check_invariants(cluster, jobs, recorder)
    slow = [(kill.worker, job_id, s) for kill, job_id, s in recoveries if s is None or s > RECOVERY_BOUND]
    assert not slow, f"jobs of killed workers not back on a queue or done within {RECOVERY_BOUND} s: {slow}"
    # A kill is an interruption, not a failure: every job completed, those without retries too,
    # having spent none, unless the kills caught it more than its max_interruptions times.
    for job in jobs.values():
        if job["status"] == "FAILED":
            assert (job["error"] or "").startswith("Interrupted"), cluster.describe(job)
        else:
            assert job["status"] == "COMPLETED", cluster.describe(job)
        assert job["retry_count"] == 0, cluster.describe(job)
    reruns = unexplained_reruns(cluster, runs)
    assert not reruns, "jobs that ran again without their worker being killed:\n" + "\n".join(reruns[:20])
