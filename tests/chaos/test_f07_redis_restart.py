"""F7: Redis SIGKILLed and restarted (AOF, fsync every second) while clients submit jobs and
workers run them.

Passes when no answer is a 500 (a 202 PENDING, or a 503 with Retry-After, while Redis is down)
and every acknowledged job completes.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import requests

from tests.chaos.harness import (
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    scaled,
    wait_all_terminal,
)

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
        time.sleep(2.5)
        submitter.stop.set()
        submitter.join(timeout=30)

        # Then every acknowledged job completes
        stuck = None
        try:
            jobs = wait_all_terminal(
                cluster, submitter.acked, timeout=RECOVERY_BOUND + 60, recorder=recorder, max_run=0.5
            )
        except AssertionError as exc:
            stuck = str(exc)

    print(f"\n[chaos F7] outages={OUTAGES} acknowledged={len(submitter.acked)} answers={submitter.answers}")
    assert not submitter.problems, "\n".join(submitter.problems[:20])
    assert stuck is None, stuck
    assert any("(Redis down)" in label for label in submitter.answers), "no submission while Redis was down"
    not_completed = [cluster.describe(job) for job in jobs.values() if job["status"] != "COMPLETED"]
    assert not not_completed, "\n".join(not_completed[:20])
    check_invariants(cluster, jobs, recorder)
    dead = [worker.name for worker in workers if not worker.alive()]
    assert not dead, f"workers that did not survive the Redis restart: {dead}"
