"""F11: ``python -m backend cleanup`` while long jobs run, with zombies injected.

The zombies: a job whose worker was SIGKILLed mid-run (PROCESSING in the store, ``started``
in RQ, no lease), a QUEUED job whose RQ job vanished, and Redis entries without a job hash
(in a queue list and in a started registry). The API's own reconciler is off, so cleanup is
what must find them. Passes when ``--dry-run`` changes nothing, and the real run ends the
zombies while the live jobs (running, and waiting in their queue) are untouched and complete.
"""

from __future__ import annotations

import time

from tests.chaos.harness import (
    LEASE_SECONDS,
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    executions_per_job,
    wait_all_terminal,
    wait_until,
)

QUEUES = ("high", "default", "low")


#: What a job's JSON says from the moment's Redis and workers, not from the store: a worker's
#: lease lapsing between two reads turns "queued" into "no_worker" with nothing written.
LIVE_FIELDS = ("waiting_reason", "resumes_at", "queue_position", "waiting_detail")


def stored(job: dict) -> dict:
    """The job as the store holds it (its JSON less the fields read live from Redis)."""
    return {key: value for key, value in job.items() if key not in LIVE_FIELDS}


def redis_snapshot(cluster, rq_ids) -> dict:
    """What cleanup could change in Redis: queue lists, started registries, RQ job statuses."""
    snapshot: dict = {}
    for queue in QUEUES:
        snapshot[f"queue:{queue}"] = sorted(raw.decode() for raw in cluster.rconn.lrange(f"rq:queue:{queue}", 0, -1))
        snapshot[f"wip:{queue}"] = sorted(raw.decode() for raw in cluster.rconn.zrange(f"rq:wip:{queue}", 0, -1))
    for rq_id in rq_ids:
        snapshot[rq_id] = cluster.rq_status(rq_id)
    return snapshot


def test_f11_cleanup_ends_zombies_and_leaves_live_jobs_alone(cluster):
    cluster.start_redis()
    cluster.start_api(RECONCILE_INTERVAL="0")
    live_workers = [cluster.start_worker(f"f11-live-{i}", queues="high,default", wait=False) for i in (1, 2)]
    doomed = cluster.start_worker("f11-doomed", queues="low", wait=False)
    for worker in [*live_workers, doomed]:
        cluster.wait_worker_ready(worker)
    api = cluster.api

    with Recorder(api, interval=0.3) as recorder:
        # Given a job whose worker is SIGKILLed mid-run (a zombie once its lease lapses)
        dead_run = api.submit("chaos_sleep", kwargs={"seconds": 60}, priority="low", max_retries=3)["job_id"]
        cluster.wait_running(dead_run)
        cluster.kill_worker(doomed, horse=True)

        # And live long jobs, running, and waiting behind them
        # (each runs until the scenario opens its gate: it outlasts the cleanup commands however
        # slow the machine; a fixed 20 s job once ended first on a loaded CI machine)
        gate = cluster.dir / "gate"
        running = [api.submit("chaos_wait_for_file", kwargs={"path": str(gate)})["job_id"] for _ in live_workers]
        waiting = [api.submit("chaos_sleep", kwargs={"seconds": 0.2})["job_id"] for _ in range(2)]
        wait_until(lambda: all(api.job(job_id)["status"] == "PROCESSING" for job_id in running), timeout=15)

        # And a QUEUED job whose RQ job vanished, and Redis entries without a job hash
        vanished = api.submit("chaos_sleep", kwargs={"seconds": 0.1}, priority="low")
        cluster.rconn.delete(f"rq:job:{vanished['rq_job_id']}")
        cluster.rconn.lrem("rq:queue:low", 0, vanished["rq_job_id"])
        cluster.rconn.rpush("rq:queue:low", "ghost-queued-1")
        cluster.rconn.zadd("rq:wip:low", {"ghost-started-1:exec-1": time.time() + 3600})
        wait_until(lambda: not cluster.lease_alive(doomed.name), timeout=LEASE_SECONDS + 5)
        zombies = {dead_run, vanished["job_id"]}
        live = set(running) | set(waiting)
        all_ids = zombies | live
        rq_ids = [api.job(job_id)["rq_job_id"] for job_id in all_ids]

        # When cleanup runs as a dry run
        store_before = {job_id: stored(api.job(job_id)) for job_id in all_ids}
        redis_before = redis_snapshot(cluster, rq_ids)
        dry = cluster.cli("cleanup", "--dry-run", "--older-than", "0")
        assert dry.returncode == 0, dry.stdout + dry.stderr

        # Then it names the zombies, not the live jobs, and changes nothing
        for needle in [*zombies, "ghost-queued-1", "ghost-started-1"]:
            assert needle in dry.stdout, f"dry run did not name {needle}:\n{dry.stdout}"
        for job_id in live:
            assert job_id not in dry.stdout, f"dry run would end live job {job_id}:\n{dry.stdout}"
        assert {job_id: stored(api.job(job_id)) for job_id in all_ids} == store_before, "the dry run changed the store"
        assert redis_snapshot(cluster, rq_ids) == redis_before, "the dry run changed Redis"

        # When cleanup runs for real
        real = cluster.cli("cleanup", "--older-than", "0")
        assert real.returncode == 0, real.stdout + real.stderr

        # Then the zombies are ended, the Redis leftovers gone, and the live jobs untouched
        for job_id in zombies:
            job = api.job(job_id)
            assert job["status"] == "FAILED" and "Cleanup" in (job["error"] or ""), job
        assert cluster.rq_status(store_before[dead_run]["rq_job_id"]) == "failed"
        assert b"ghost-queued-1" not in cluster.rconn.lrange("rq:queue:low", 0, -1)
        assert not [e for e in cluster.rconn.zrange("rq:wip:low", 0, -1) if e.startswith(b"ghost-started-1")]
        for job_id in live:
            job = api.job(job_id)
            before = store_before[job_id]
            # A live job may have moved on by itself meanwhile (picked up, or ended on its own
            # attempt under a loaded machine); cleanup touching it would end or re-attempt it.
            untouched = (
                job["attempt"] == before["attempt"]
                and "Cleanup" not in (job["error"] or "")
                and job["status"] in {before["status"], "PROCESSING", "COMPLETED"}
            )
            assert untouched, f"cleanup touched live job {job_id}: {before} -> {job}"
        for job_id in running:
            assert api.job(job_id)["status"] == "PROCESSING", "the long job ended before cleanup was done"
        gate.touch()

        # And the live jobs complete, each having run once
        jobs = wait_all_terminal(cluster, all_ids, timeout=RECOVERY_BOUND + 20, recorder=recorder)
    assert all(jobs[job_id]["status"] == "COMPLETED" for job_id in live), [cluster.describe(jobs[j]) for j in live]
    check_invariants(cluster, jobs, recorder, gone_ok={vanished["job_id"]})
    runs = executions_per_job(cluster, live)
    assert all(len(executions) == 1 for executions in runs.values()), runs
