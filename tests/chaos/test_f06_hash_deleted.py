"""F6: a queued job's hash deleted from Redis (evicted, or deleted by hand).

Passes when the reconciler re-queues it (a new attempt with a new RQ job), and workers, which
still find the dangling id in the queue list, neither crash nor lose any other job.
"""

from __future__ import annotations

from tests.chaos.harness import (
    RECOVERY_BOUND,
    Recorder,
    check_invariants,
    executions_per_job,
    wait_all_terminal,
    wait_until,
)


def test_f6_deleted_job_hash_is_requeued(running):
    cluster = running
    with Recorder(cluster.api, interval=0.2) as recorder:
        # Given queued jobs and no worker yet
        jobs = [cluster.api.submit("chaos_sleep", kwargs={"seconds": 0.1}, max_retries=1) for _ in range(10)]
        assert all(job["status"] == "QUEUED" for job in jobs)
        job_ids = [job["job_id"] for job in jobs]

        # When some lose their hash but stay listed in the queue, and some lose both
        hash_only = jobs[:3]
        hash_and_entry = jobs[3:6]
        for job in hash_only + hash_and_entry:
            assert cluster.rconn.delete(f"rq:job:{job['rq_job_id']}") == 1
        for job in hash_and_entry:
            assert cluster.rconn.lrem("rq:queue:default", 0, job["rq_job_id"]) == 1
        tampered = {job["job_id"] for job in hash_only + hash_and_entry}

        # Then the reconciler puts each back as a new attempt, on the queue, within the bound
        def requeued() -> bool:
            listed = {raw.decode() for raw in cluster.rconn.lrange("rq:queue:default", 0, -1)}
            for job_id in tampered:
                job = cluster.api.job(job_id)
                if job["attempt"] < 2 or job["status"] != "QUEUED" or job["rq_job_id"] not in listed:
                    return False
                if not cluster.rconn.exists(f"rq:job:{job['rq_job_id']}"):
                    return False
            return True

        wait_until(requeued, timeout=RECOVERY_BOUND, message="deleted jobs not re-queued within the bound")
        for job_id in set(job_ids) - tampered:
            assert cluster.api.job(job_id)["attempt"] == 1, "an untouched job was re-queued"

        # And workers run everything once, skipping the dangling ids
        workers = [cluster.start_worker("f6-a"), cluster.start_worker("f6-b", simple=True)]
        final = wait_all_terminal(cluster, job_ids, timeout=RECOVERY_BOUND + 20, recorder=recorder, max_run=0.5)

    assert all(job["status"] == "COMPLETED" for job in final.values()), [cluster.describe(j) for j in final.values()]
    check_invariants(cluster, final, recorder)
    runs = executions_per_job(cluster, job_ids)
    assert all(len(executions) == 1 for executions in runs.values()), runs
    assert all(runs[job_id][0].attempt == 2 for job_id in tampered)
    assert all(worker.alive() for worker in workers), [w.output()[-2000:] for w in workers]
