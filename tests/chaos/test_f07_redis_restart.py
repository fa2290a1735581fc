"""F7: Redis SIGKILLed and restarted (AOF, fsync every second) while clients submit jobs and
workers run them.

Passes when no answer is a 500 (a 202 PENDING, or a 503 with Retry-After, while Redis is down)
and every acknowledged job completes. The outages leave a backlog that grows with the soak's
job count: the wait allows for it (``drain_timeout``) and fails instead on a job left behind
while later ones run (stuck, not draining).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import requests

from tests.chaos.checks import drain_timeout
from tests.chaos.harness import (
    Recorder,
    check_invariants,
    executions_per_job,
    histogram,
    report_figures,
    scaled,
    wait_all_terminal,
)
from tests.chaos.settings import SLOWEST_DRAIN_RATE

pytestmark = pytest.mark.one_pass(store="postgres", reason="Redis restarted under load")

OUTAGES = scaled(2, 15)
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


class Submitter(threading.Thread):
    """Submits short jobs every 50 ms until stopped; keeps the acknowledged ones and the answers."""

    def __init__(self, cluster, redis_down: threading.Event):
        super().__init__(name="submitter", daemon=True)
        self.cluster = cluster
        self.redis_down = redis_down
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.answers: dict[str, int] = {}
        self.problems: list[str] = []

    def run(self) -> None:
        rng = random.Random(SEED)
        while not self.stop.is_set():
            down = self.redis_down.is_set()
            body = {"kwargs": {"seconds": round(rng.uniform(0.05, 0.4), 2)}, "max_retries": 5}
            try:
                response = self.cluster.api.post_task("chaos_sleep", **body)
            except requests.RequestException as exc:
                self.problems.append(f"no answer from the API: {exc}")
                continue
            label = f"{response.status_code}{' (Redis down)' if down else ''}"
            if response.status_code == 202:
                job = response.json()
                self.acked.append(job["job_id"])
                label += f" {job['status']}"
                if not down and job["status"] not in ("QUEUED", "PENDING"):
                    self.problems.append(f"202 with status {job['status']}")
            elif response.status_code == 503:
                if not response.headers.get("Retry-After"):
                    self.problems.append("503 without Retry-After")
            else:
                self.problems.append(f"{response.status_code}: {response.text[:200]}")
            self.answers[label] = self.answers.get(label, 0) + 1
            time.sleep(0.05)


@pytest.mark.timeout(scaled(100, 1200))
def test_f7_redis_killed_and_restarted_under_submissions(running):
    cluster = running
    workers = [cluster.start_worker(f"f7-w{i}", wait=False) for i in range(3)]
    for worker in workers:
        cluster.wait_worker_ready(worker)
    redis_down = threading.Event()
    submitter = Submitter(cluster, redis_down)
    started = time.monotonic()

    with Recorder(cluster.api, interval=0.3) as recorder:
        submitter.start()
        for _ in range(OUTAGES):
            time.sleep(2.5)
            # When Redis is SIGKILLed, stays down for 3 s, and comes back on its AOF
            redis_down.set()
            cluster.kill_redis()
            time.sleep(3)
            cluster.start_redis()
            redis_down.clear()
        last_outage_ended = time.monotonic()
        time.sleep(2.5)
        submitter.stop.set()
        submitter.join(timeout=30)
        submissions_stopped = time.monotonic()

        # Then every acknowledged job completes: the backlog the outages left may take its
        # time (the bound grows with it; these jobs run at most 0.4 s, under a third of the
        # slowest rate's 1.5 s), but no job may be left behind while later ones run
        stuck = None
        jobs: dict[str, dict] = {}
        try:
            jobs = wait_all_terminal(
                cluster,
                submitter.acked,
                timeout=drain_timeout(len(submitter.acked), rate=SLOWEST_DRAIN_RATE * 3),
                recorder=recorder,
                max_run=0.5,
                fifo=True,
            )
        except AssertionError as exc:  # report the figures first, then fail
            stuck = str(exc)
    drained = time.monotonic()

    runs = executions_per_job(cluster, submitter.acked)
    report_figures(
        "F7",
        {
            "seed": SEED,
            "outages": OUTAGES,
            "acknowledged": len(submitter.acked),
            "answers": submitter.answers,
            "executions_per_job": histogram(runs),
            "jobs_retried": sum(1 for job in jobs.values() if job.get("retry_count")),
            "jobs_interrupted": sum(1 for job in jobs.values() if job.get("interruptions")),
            "seconds_of_faults": round(last_outage_ended - started, 1),
            "seconds_to_drain_after_submissions_stopped": round(drained - submissions_stopped, 1),
            "seconds_total": round(drained - started, 1),
        },
    )
    assert not submitter.problems, "\n".join(submitter.problems[:20])
    assert stuck is None, stuck
    assert any("(Redis down)" in label for label in submitter.answers), "no submission while Redis was down"
    not_completed = [cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"]
    assert not not_completed, "\n".join(not_completed[:20])
    # A run cut by a lost Redis is an interruption: re-queued at once, spending no retry.
    retried = [cluster.describe(job) for job in jobs.values() if job["retry_count"]]
    assert not retried, f"{len(retried)} job(s) spent a retry on an outage:\n" + "\n".join(retried[:20])
    check_invariants(cluster, jobs, recorder)
    dead = [worker.name for worker in workers if not worker.alive()]
    assert not dead, f"workers that did not survive the Redis restart: {dead}"
