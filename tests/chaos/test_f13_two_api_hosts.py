"""F13: two API hosts on one PostgreSQL and one Redis, behind a round-robin client, under keyed
submissions with idempotency races (one key sent to both hosts at the same moment) and cross-host
cancels (submitted on one host, cancelled on the other); host A SIGKILLed mid-load and restarted.

Real workers run the jobs (half report to each host) and both hosts run the reconciler. Passes
when every acknowledged job is terminal (CANCELLED when its cancel was answered 200, either end
when the cancel met the killed host and then a 409 on the other, else
COMPLETED), there is exactly one job per key and every answer for a key names it, the counts of
GET /monitoring/queue/stats and /metrics equal a GROUP BY over the jobs, no host answered a 5xx
(503 included: nothing here is down but the host that was killed, which answers nothing), and
PostgreSQL logged no ``deadlock detected`` while the scenario ran.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.api_hosts import ApiHost, worker_reports_5xx
from tests.chaos.harness import (
    RECOVERY_BOUND,
    TERMINAL,
    Recorder,
    executions_per_job,
    report_figures,
    scaled,
    store_rq_mismatches,
    wait_all_terminal,
)
from tests.chaos.pg_store import LogMark, database_name, status_counts, task_status_counts
from tests.chaos.round_robin import RoundRobin

KEYS = scaled(300, 3000)
API_KILLS = scaled(1, 5)
CLIENTS = 6
WORKERS = 4
#: Of the keys: the share sent as an idempotency race, and the share submitted then cancelled.
RACES = 0.2
CANCELS = 0.2
#: Between two requests of one client: about 35 keys a second in all, so that the load lasts
#: through a kill and the restart (a few seconds).
PAUSE = 0.15
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


def stats_counts(host: ApiHost) -> dict[str, int]:
    """status -> jobs, as GET /monitoring/queue/stats says (its maintained counters)."""
    jobs = host.api.get("/monitoring/queue/stats").json()["jobs"]
    return {status: count for status, count in jobs.items() if count}


def metrics_counts(host: ApiHost) -> dict[tuple[str, str], int]:
    """(task, status) -> jobs, as /metrics says (``jobservice_jobs``)."""
    found: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(host.api.get("/metrics").text):
        if family.name == "jobservice_jobs":
            for sample in family.samples:
                if sample.value:
                    found[(sample.labels["task"], sample.labels["status"])] = int(sample.value)
    return found


def longest_pending(recorder: Recorder) -> float:
    """The longest any job was seen PENDING (recorded, not yet on a queue): the jobs an API
    that died between its commit and its enqueue leaves to the reconciler."""
    longest = 0.0
    with recorder._lock:
        histories = [list(history) for history in recorder.history.values()]
    for history in histories:
        for (at, _, status, _), (later, *_) in zip(history, history[1:], strict=False):
            if status == "PENDING":
                longest = max(longest, later - at)
    return longest


def reused_after_end(listing: list[dict], job_ids: list[str], client: RoundRobin) -> bool:
    """Whether each of a key's jobs was made only after the one before it had ended: a client whose
    request met a host dying after its commit sends the key again, and a key only names its job
    while that job is live (see F3), so a job of 0.02 s may already be done and a new one made.

    A job's ``created_at`` is read before its INSERT, which may then wait on the key's unique
    index until the job before ends (a race answered after it ran), so the bound of its making is
    the first answer that named it, else the end of the key's last request (a host that died
    after its commit answered none)."""
    jobs = sorted((job for job in listing if job["job_id"] in job_ids), key=lambda job: job["created_at"])
    key = jobs[0]["kwargs"]["tag"]
    return all(
        earlier["status"] in TERMINAL
        and _epoch(earlier["completed_at"])
        <= client.first_named_at.get(later["job_id"], client.last_request_end.get(key, 0.0))
        for earlier, later in zip(jobs, jobs[1:], strict=False)
    )


def _epoch(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@pytest.mark.timeout(scaled(180, 1800))
def test_f13_two_api_hosts_on_postgresql_with_races_cancels_and_a_host_killed(cluster, postgres_server):
    rng = random.Random(SEED)
    cluster.store_url = postgres_server.create_database()
    database = database_name(cluster.store_url)
    mark = LogMark.now(postgres_server)
    cluster.start_redis()
    host_a, host_b = ApiHost(cluster, "a"), ApiHost(cluster, "b")
    host_a.launch()
    host_b.launch()
    host_a.wait_up()
    host_b.wait_up()
    cluster.api = host_b.api  # the harness's reads (held_by, describe) go to the host never killed
    workers = [
        cluster.start_worker(f"f13-w{i}", wait=False, env={"API_BASE_URL": (host_a, host_b)[i % 2].base_url})
        for i in range(WORKERS)
    ]
    for worker in workers:
        cluster.wait_worker_ready(worker)

    client = RoundRobin([host_a, host_b])
    plan = []
    for number in range(KEYS):
        roll = rng.random()
        kind = "race" if roll < RACES else "cancel" if roll < RACES + CANCELS else "plain"
        seconds = 1.5 if kind == "cancel" else round(rng.uniform(0.02, 0.25), 2)
        plan.append((kind, f"f13-{number}", {"kwargs": {"seconds": seconds, "tag": f"f13-{number}"}}))
    todo = iter(plan)
    todo_lock = threading.Lock()
    done_keys = Counter()
    back_after: list[float] = []

    def client_loop(_: int) -> None:
        while True:
            with todo_lock:
                step = next(todo, None)
            if step is None:
                return
            kind, key, body = step
            if kind == "race":
                client.race(key, body)
            elif kind == "cancel":
                client.submit_and_cancel(key, body)
            else:
                client.submit(key, body)
            with todo_lock:
                done_keys["done"] += 1
            time.sleep(PAUSE)

    def killer() -> None:
        for number in range(API_KILLS):
            # Spread over the load: the k-th kill once k/(kills+1) of the keys are done.
            while done_keys["done"] < KEYS * (number + 1) / (API_KILLS + 1):
                time.sleep(0.05)
            killed_at = host_a.kill()
            time.sleep(rng.uniform(0.3, 1.0))
            host_a.start()
            back_after.append(time.time() - killed_at)

    # When the round-robin client submits, races and cancels while host A is killed and restarted
    started = time.monotonic()
    recorder = Recorder(host_b.api, interval=0.5).start()
    cluster.on_shutdown.append(recorder.stop)
    killing = threading.Thread(target=killer, daemon=True)
    killing.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_loop, range(CLIENTS)))
    load_seconds = time.monotonic() - started
    killing.join(timeout=60)
    assert len(back_after) == API_KILLS, f"host A was killed {len(host_a.kills)}x, back {len(back_after)}x"

    # Then every acknowledged job is terminal
    jobs = wait_all_terminal(cluster, client.acked, timeout=RECOVERY_BOUND + 120, recorder=recorder, max_run=1.5)
    recorder.poll()
    recorder.stop()
    listing = host_b.api.all_jobs()
    by_key: dict[str, list[str]] = {}
    for job in listing:
        by_key.setdefault(job["kwargs"]["tag"], []).append(job["job_id"])
    reused = {key: ids for key, ids in by_key.items() if len(ids) > 1 and reused_after_end(listing, ids, client)}
    runs = executions_per_job(cluster, jobs)
    deadlocks = mark.deadlocks()
    server_errors = [error for host in (host_a, host_b) for error in host.server_errors()]
    server_errors += worker_reports_5xx(cluster, allow_503=False)
    report_figures(
        "F13",
        {
            "keys": KEYS,
            "requests": client.answered(),
            "jobs": len(listing),
            "races": dict(client.race_outcomes),
            "cancels": dict(client.cancel_answers),
            "cross_host_cancels": client.cross_host_cancels,
            "cancels_met_the_killed_host_then_409": len(client.cancel_unknown),
            "statuses": Counter(job["status"] for job in listing),
            "keys_sent_again_after_their_job_ended": len(reused),
            "api_kills": len(host_a.kills),
            "requests_meeting_a_dead_host": client.unanswered(),
            "api_back_after_s": round(max(back_after), 1),
            "longest_pending_s": round(longest_pending(recorder), 1),
            "load_s": round(load_seconds, 1),
            "5xx": len(server_errors),
            "deadlocks": len(deadlocks),
            "seed": SEED,
        },
    )

    assert not client.problems, f"{len(client.problems)} problem(s):\n" + "\n".join(client.problems[:20])
    assert not deadlocks, f"PostgreSQL logged {len(deadlocks)} deadlock(s):\n" + "\n".join(deadlocks[:20])
    assert not server_errors, f"{len(server_errors)} 5xx:\n" + "\n".join(server_errors[:20])
    assert client.unanswered() > 0, "no request met the killed host: the scenario showed nothing"
    assert client.cross_host_cancels > 0 and client.race_outcomes

    # And exactly one job per key (but for a key sent again after its job ended), named by every
    # answer for that key
    duplicates = {key: ids for key, ids in by_key.items() if len(ids) != 1 and key not in reused}
    assert not duplicates, f"{len(duplicates)} key(s) with more than one job: {list(duplicates.items())[:10]}"
    assert set(by_key) == {key for _, key, _ in plan}, "keys without a job"
    disagreeing = {key: ids for key, ids in client.answers.items() if not ids or not ids <= set(by_key[key])}
    assert not disagreeing, f"answers naming another job than the key's: {list(disagreeing.items())[:10]}"

    # And a job ends CANCELLED when its cancel was answered 200, else COMPLETED (either, when the
    # killed host may have cancelled it before dying: a 409 from the other then), run once at most
    wrong = [
        cluster.describe(job)
        for job_id, job in jobs.items()
        if job["status"] != ("CANCELLED" if job_id in client.cancelled else "COMPLETED")
        and not (job_id in client.cancel_unknown and job["status"] == "CANCELLED")
    ]
    assert not wrong, f"{len(wrong)} job(s) ended wrong:\n" + "\n".join(wrong[:20])
    twice = {job_id: len(executions) for job_id, executions in runs.items() if len(executions) > 1}
    assert not twice, f"jobs that ran more than once though no worker died: {twice}"
    # (a job the killed host cancelled before dying, its cancel a 409 from the other, ended
    # CANCELLED above without running: rightly never run)
    never = [job_id for job_id, executions in runs.items() if not executions and jobs[job_id]["status"] == "COMPLETED"]
    assert not never, f"completed jobs that never ran: {never[:10]}"
    mismatches = store_rq_mismatches(cluster, jobs.values())
    assert not mismatches, "\n".join(mismatches[:20])
    backwards = recorder.violations()
    assert not backwards, "\n".join(backwards[:20])

    # And the counts both hosts show equal a GROUP BY over the jobs
    counted = status_counts(postgres_server, database)
    per_task = task_status_counts(postgres_server, database)
    for host in (host_a, host_b):
        assert stats_counts(host) == counted, f"{host.name}'s stats {stats_counts(host)} != GROUP BY {counted}"
        assert metrics_counts(host) == per_task, f"{host.name}'s metrics {metrics_counts(host)} != {per_task}"
