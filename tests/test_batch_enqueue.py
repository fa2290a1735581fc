"""A batch's jobs go to Redis together (``QueueAdapter.enqueue_many``) and to QUEUED together
(``queue_many``): a batch of 1,000 took ~5 s in process when each job was read twice, enqueued
under its own WATCH (3 round trips) and moved in its own transaction."""

from __future__ import annotations

from redis.client import Pipeline

from backend.api.context import services
from backend.broker.queues import QueueAdapter
from tests.helpers import get_job, submit_add


def _attempt(job_id: str, owner: str = "alice") -> dict:
    return {
        "job_id": job_id, "attempt": 1, "func_path": "backend.tasks.examples.add", "args": [1, 2],
        "kwargs": {}, "priority": "default", "timeout": 60, "owner": owner,
    }  # fmt: skip


def queue_ids(redis_conn, name: str = "default") -> list[str]:
    return [rq_id.decode() for rq_id in redis_conn.lrange(f"rq:queue:{name}", 0, -1)]


def test_a_batch_goes_to_redis_in_a_few_round_trips_in_its_order_and_all_queued(client, redis_conn, sent_to_redis):
    # Given a warm API (its pools open)
    submit_add(client)
    redis_conn.delete("rq:queue:default")
    sent_to_redis.clear()
    # When a batch of 300 is submitted
    body = client.post("/tasks/add/batch", json={"jobs": [{"args": [i, 1]} for i in range(300)]}).get_json()
    # Then Redis was sent a handful of writes, not some per job (900 before)
    assert len(sent_to_redis) <= 5, len(sent_to_redis)
    # And the queue holds each job once, in the batch's order, each with fair share's index
    assert queue_ids(redis_conn) == [f"{job_id}-1" for job_id in body["job_ids"]]
    index = redis_conn.hgetall("jobservice:fair:default:index")
    assert all(index[f"{job_id}-1".encode()] for job_id in body["job_ids"])
    # And every job is QUEUED, in the batch's counts and in each job's own view
    assert client.get(f"/batches/{body['batch_id']}").get_json()["counts"]["QUEUED"] == 300
    assert get_job(client, body["job_ids"][299])["status"] == "QUEUED"
    assert client.get("/monitoring/queue/stats").status_code == 200


def test_a_job_another_host_enqueued_first_is_on_the_queue_once(redis_conn):
    # Given one attempt of three already enqueued (another host's reconciler got there first)
    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    adapter.enqueue(**_attempt("job_b"))
    # When the three are enqueued together
    adapter.enqueue_many([_attempt("job_a"), _attempt("job_b"), _attempt("job_c")])
    # Then each is on the queue once
    assert sorted(queue_ids(redis_conn)) == ["job_a-1", "job_b-1", "job_c-1"]
    assert redis_conn.hget("rq:job:job_a-1", "status") == b"queued"


def test_a_hash_written_between_the_look_and_the_writes_leaves_each_on_the_queue_once(redis_conn, monkeypatch):
    # Given another host that enqueues one of the attempts just after our look for them
    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    other = QueueAdapter(redis_conn.__class__.from_url(_url(redis_conn)), result_ttl=500, failure_ttl=900)
    original = Pipeline.multi
    raced = []

    def multi_after_a_rival(pipe):
        if not raced:
            raced.append("job_b")  # first: the rival's own MULTI comes through here too
            other.enqueue(**_attempt("job_b"))
        return original(pipe)

    monkeypatch.setattr(Pipeline, "multi", multi_after_a_rival)
    # When the three are enqueued together
    adapter.enqueue_many([_attempt("job_a"), _attempt("job_b"), _attempt("job_c")])
    # Then the WATCH saw it: each is on the queue once
    assert raced and sorted(queue_ids(redis_conn)) == ["job_a-1", "job_b-1", "job_c-1"]


def _url(redis_conn) -> str:
    kwargs = redis_conn.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_a_batch_mixing_parents_and_none_queues_each_its_way(client, redis_conn):
    # Given a job still waiting on the queue (no worker runs)
    parent = submit_add(client)["job_id"]
    # When a batch holds a job without parents and one depending on it
    body = client.post(
        "/tasks/add/batch", json={"jobs": [{"args": [1, 1]}, {"args": [2, 2], "depends_on": [parent]}]}
    ).get_json()
    plain, child = body["job_ids"]
    # Then the first is on the queue, the second in RQ's deferred registry; both QUEUED
    assert f"{plain}-1" in queue_ids(redis_conn) and f"{child}-1" not in queue_ids(redis_conn)
    assert redis_conn.zscore("rq:deferred:default", f"{child}-1") is not None
    assert {get_job(client, plain)["status"], get_job(client, child)["status"]} == {"QUEUED"}


def test_a_batch_sent_while_redis_is_down_stays_pending_for_the_reconciler(client, app, redis_conn):
    # Given an adapter that last saw Redis fail (it answers fast without a call)
    adapter = services(app).jobs.queues
    adapter._down_until = float("inf")
    try:
        # When a batch is submitted
        body = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}] * 3}).get_json()
    finally:
        adapter._down_until = 0.0
    # Then its jobs are recorded PENDING, none on the queue: the reconciler enqueues them later
    assert client.get(f"/batches/{body['batch_id']}").get_json()["counts"]["PENDING"] == 3
    assert queue_ids(redis_conn) == []


def test_a_batch_mixing_a_ready_dependant_keeps_its_order_on_the_queue(client, redis_conn):
    # Given a parent that ended (cancelled), so a dependant allowing failure is ready at once
    parent = submit_add(client)["job_id"]
    assert client.post(f"/jobs/{parent}/cancel", json={}).status_code == 200
    redis_conn.delete("rq:queue:default")
    # When a batch puts that dependant between two plain jobs
    jobs = [{"args": [0, 0]}, {"args": [1, 1], "depends_on": [parent], "allow_failure": True}, {"args": [2, 2]}]
    body = client.post("/tasks/add/batch", json={"jobs": jobs}).get_json()
    # Then the queue holds them in the batch's order (the dependant was pushed first before)
    assert queue_ids(redis_conn) == [f"{job_id}-1" for job_id in body["job_ids"]]
