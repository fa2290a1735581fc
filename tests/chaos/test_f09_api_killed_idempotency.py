"""F9: the API SIGKILLed (and restarted) again and again while clients submit with
idempotency keys, retrying each key until they get an answer.

Passes when there is exactly one job per key, and every answer for a key names that job.

The jobs are submitted with no worker running, so every job is still live while its client
retries: a key is only promised to return its job while that job is live (a key whose job
has ended makes a new job, see F3).
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.chaos.checks import drain_timeout
from tests.chaos.harness import (
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    executions_per_job,
    scaled,
    wait_all_terminal,
    wait_until,
)

API_KILLS = scaled(4, 60)
CLIENTS = 4
RECONCILER_LOCK = "jobservice:reconciler:lock"
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


@pytest.mark.timeout(scaled(100, 1200))
def test_f9_api_killed_during_keyed_submissions_one_job_per_key(running):
    cluster = running
    rng = random.Random(SEED)
    answers: dict[str, set[str]] = {}
    problems: list[str] = []
    retries = {"no answer": 0, "503": 0}
    lock = threading.Lock()
    done = threading.Event()

    def submit(key: str) -> None:
        body = {"kwargs": {"seconds": 0.02, "tag": key}}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = cluster.api.post_task("chaos_sleep", headers={"Idempotency-Key": key}, **body)
            except requests.RequestException:
                with lock:
                    retries["no answer"] += 1
                time.sleep(0.1)
                continue
            if response.status_code in (200, 202):
                with lock:
                    answers.setdefault(key, set()).add(response.json()["job_id"])
                # A client that is unsure (its earlier try got no answer) asks once more.
                if rng.random() < 0.3:
                    continue
                return
            if response.status_code == 503:
                with lock:
                    retries["503"] += 1
                time.sleep(0.1)
                continue
            with lock:
                problems.append(f"{key}: {response.status_code} {response.text[:200]}")
            return
        with lock:
            problems.append(f"{key}: no 2xx within 60 s")

    kills = 0
    killed_holding_lock = False
    killer_failed: list[Exception] = []

    def killer() -> None:
        try:
            kill_and_restart()
        except Exception as exc:  # an API that did not come back, say: the test's failure
            killer_failed.append(exc)
        finally:  # the clients submit until this is set: a killer that failed must stop them too
            done.set()

    def kill_and_restart() -> None:
        nonlocal kills, killed_holding_lock
        for number in range(API_KILLS):
            time.sleep(rng.uniform(0.5, 1.5))
            if number == 1:
                # One crash lands in the middle of a reconciler pass (the API holds its lock):
                # any moment is a moment an API can die at.
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not cluster.rconn.exists(RECONCILER_LOCK):
                    time.sleep(0.002)
                killed_holding_lock = bool(cluster.rconn.exists(RECONCILER_LOCK))
            cluster.kill_api()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            cluster.start_api()
        time.sleep(0.5)

    def client(number: int) -> list[str]:
        mine = []
        while not done.is_set():
            key = f"f9-c{number}-{len(mine)}"
            mine.append(key)
            submit(key)
            time.sleep(0.15)
        return mine

    # When clients submit keyed jobs while the API is SIGKILLed and restarted again and again
    recorder = Recorder(cluster.api, interval=0.3).start()  # watches the whole scenario
    cluster.on_shutdown.append(recorder.stop)
    killing = threading.Thread(target=killer, daemon=True)
    killing.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        keys = [key for mine in pool.map(client, range(CLIENTS)) for key in mine]
    killing.join(timeout=30)
    assert not killer_failed, f"killing and restarting the API failed: {killer_failed[0]}"

    # Then there is one job per key, named by every answer for it
    listing = cluster.api.all_jobs()
    by_key: dict[str, list[str]] = {}
    for job in listing:
        by_key.setdefault(job["kwargs"]["tag"], []).append(job["job_id"])
    print(
        f"\n[chaos F9] keys={len(keys)} api_kills={kills} killed_mid_reconcile={killed_holding_lock} "
        f"client_retries={retries} jobs={len(listing)} "
        f"pending_after_kills={sum(1 for job in listing if job['status'] == 'PENDING')}"
    )
    assert not problems, "\n".join(problems[:20])
    assert retries["no answer"] > 0, "no request met a dead API: the scenario showed nothing"
    duplicates = {key: ids for key, ids in by_key.items() if len(ids) != 1}
    assert not duplicates, f"keys with more than one job: {duplicates}"
    assert set(by_key) == set(keys)
    disagreeing = {key: ids for key, ids in answers.items() if ids != set(by_key[key])}
    assert not disagreeing, f"answers naming another job than the key's: {disagreeing}"

    # And the restarted API reconciles within the bound, whenever its predecessor died: a
    # job that Redis loses now (its hash and queue entry deleted) is queued again in time
    lost = next(job for job in listing if job["status"] == "QUEUED")
    cluster.rconn.delete(f"rq:job:{lost['rq_job_id']}")
    cluster.rconn.lrem("rq:queue:default", 0, lost["rq_job_id"])
    lost_at = time.monotonic()
    try:
        wait_until(lambda: cluster.api.job(lost["job_id"])["attempt"] > 1, timeout=RECOVERY_BOUND)
    except AssertionError:
        raise AssertionError(
            f"a job lost from Redis was not re-queued within {RECOVERY_BOUND} s after the API restarts "
            f"({cluster.reconciler_lock()}): {cluster.describe(cluster.api.job(lost['job_id']))}"
        ) from None
    print(f"[chaos F9] lost job re-queued {time.monotonic() - lost_at:.1f} s after it was lost")

    # And every job runs once, those recorded by an API that died before enqueueing them too
    for name in ("f9-a", "f9-b", "f9-c"):
        cluster.start_worker(name, simple=True, wait=False)
    jobs = wait_all_terminal(
        cluster, [job["job_id"] for job in listing], timeout=drain_timeout(len(listing)), recorder=recorder, max_run=0.5
    )
    recorder.stop()
    assert all(job["status"] == "COMPLETED" for job in jobs.values()), [cluster.describe(j) for j in jobs.values()]
    check_invariants(cluster, jobs, recorder)
    runs = executions_per_job(cluster, jobs)
    assert all(len(executions) == 1 for executions in runs.values())
