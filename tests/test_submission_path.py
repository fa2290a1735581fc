"""The submission's path (``POST /tasks/<name>``), the hottest write: what it sends to the store and
to Redis, and that it still records the same job as before.

Why: issue 17 cut it to one statement on PostgreSQL (no BEGIN, no SELECT of the server's time, no
COMMIT: the job, its count and its kwargs' index rows in one INSERT with CTEs, in autocommit) and to
one round trip to Redis (a new job's first attempt needs no WATCH of its hash, nor a look for it).
These tests pin that, on the counts that do not depend on the machine's speed.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from backend.api.context import services
from backend.app import create_app, stop_background
from tests.conftest import STORE
from tests.helpers import submit, submit_add
from tests.test_poll_postgres import _queries_sent


def test_a_submission_reaches_redis_in_one_round_trip_without_watch(client, sent_to_redis, redis_conn):
    # Given the API, Redis answering (a first request notes it)
    submit_add(client)
    sent_to_redis.clear()
    # When a job is submitted
    job = submit_add(client)
    # Then its enqueue was one send: MULTI ... EXEC, with no WATCH and no look for its hash
    assert len(sent_to_redis) == 1, sent_to_redis
    commands = sent_to_redis[0]
    assert commands[0] == b"MULTI" and commands[-1] == b"EXEC", commands
    assert b"WATCH" not in commands and b"EXISTS" not in commands
    # And the job is on its queue once, indexed for fair share
    rq_id = f"{job['job_id']}-1"
    assert redis_conn.lrange("rq:queue:default", 0, -1).count(rq_id.encode()) == 1
    assert redis_conn.hget("jobservice:fair:default:index", rq_id) is not None


def test_a_submitted_row_holds_what_the_request_said(client, app):
    # Given the API, Redis answering (a first request notes it: before, jobs are recorded PENDING)
    submit_add(client)
    # (noted again just before: a loaded machine took over QueueAdapter.UP_FOR_SECONDS between
    # the two requests, and the job went PENDING first, its updated_at then moved)
    services(app).jobs.queues.queued_ids()
    # When a job with kwargs, an idempotency key and options is submitted
    answer = client.post(
        "/tasks/echo", json={"kwargs": {"text": "hi"}, "idempotency_key": "k-1", "priority": "high", "max_retries": 2}
    )
    body = answer.get_json()
    # Then the answer is 202 with the job's path, and the same request again is 200 with the same job
    assert answer.status_code == 202 and answer.headers["Location"] == f"/jobs/{body['job_id']}"
    assert answer.mimetype == "application/json" and body["status"] == "QUEUED"
    again = client.post(
        "/tasks/echo", json={"kwargs": {"text": "hi"}, "idempotency_key": "k-1", "priority": "high", "max_retries": 2}
    )
    assert again.status_code == 200 and again.get_json()["job_id"] == body["job_id"]
    # And the row holds them and the model's defaults, and its kwargs are indexed at its created_at
    engine = services(app).engine
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": body["job_id"]}).mappings().one()
        kwargs_rows = conn.execute(
            text("SELECT name, value, owner, created_at FROM job_kwargs WHERE job_id = :id"), {"id": body["job_id"]}
        ).all()
        deltas = conn.execute(text("SELECT task, old_status, new_status, jobs FROM job_count_deltas")).all()
    assert (row["status"], row["priority"], row["max_retries"], row["idempotency_key"]) == ("QUEUED", "high", 2, "k-1")
    assert (row["attempt"], row["retry_count"], row["interruptions"], row["snoozes"], row["progress"]) == (
        1,
        0,
        0,
        0,
        0,
    )
    assert row["rq_job_id"] == f"{body['job_id']}-1" and row["created_at"] == row["updated_at"]
    assert [(n, v, o) for n, v, o, _ in kwargs_rows] == [("text", "hi", row["owner"])]
    assert kwargs_rows[0][3] == row["created_at"]
    assert ("echo", None, "QUEUED", 1) in deltas
    # And the answer shows the row's time
    answered = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert abs(answered - datetime.now(UTC)) < timedelta(minutes=1)


def test_a_submissions_answer_is_the_job_as_get_serves_it(client):
    # Given the API, Redis answering, no worker
    submit_add(client)
    # When jobs are submitted, plain and with every option a job without dependencies takes
    plain = client.post("/tasks/echo", json={"kwargs": {"text": "hi"}})
    full = client.post(
        "/tasks/echo",
        json={
            "kwargs": {"text": "x"},
            "priority": "low",
            "max_retries": 1,
            "timeout": 30,
            "idempotency_key": "answer-1",
        },
    )
    # Then each answer holds the job as GET /jobs/<id> serves it, field for field (built without the
    # ORM's object, issue 17), but for the waiting fields, which only GET reads from Redis
    waiting = {"waiting_reason", "resumes_at", "queue_position", "waiting_detail"}
    for answer in (plain, full):
        assert answer.status_code == 202, answer.get_json()
        body = answer.get_json()
        served = client.get(f"/jobs/{body['job_id']}").get_json()
        assert list(body) == list(served)
        assert {k: v for k, v in body.items() if k not in waiting} == {
            k: v for k, v in served.items() if k not in waiting
        }


@pytest.mark.skipif(STORE != "postgres", reason="PostgreSQL's statements (TEST_STORE=postgres)")
def test_a_submission_on_postgresql_is_one_statement_outside_a_transaction(settings, tmp_path):
    # Given the API on PostgreSQL with one pooled connection, Redis answering
    app = create_app({**settings, "DB_POOL_SIZE": 1, "DB_MAX_OVERFLOW": 0})
    try:
        client = app.test_client()
        submit_add(client)
        engine = services(app).engine
        connection = engine.raw_connection()
        trace = tmp_path / "libpq.trace"
        with open(trace, "w") as sink:
            connection.driver_connection.pgconn.trace(sink.fileno())
            connection.close()
            # When a job with a kwarg is submitted
            body = submit(client, "echo", kwargs={"text": "hi"})
            connection = engine.raw_connection()
            connection.driver_connection.pgconn.untrace()
        # Then the store got one statement (the pool's ping aside): the INSERT with its CTEs, no
        # BEGIN, no SELECT of the server's time, no COMMIT
        sent = [q for q in _queries_sent(trace) if q not in ("", ";")]
        assert len(sent) == 1 and sent[0].startswith("WITH new_delta AS (INSERT"), sent
        # And the connection went back transactional
        assert connection.driver_connection.autocommit is False
        connection.close()
        # And the job's created_at is the server's time of that statement, as its kwargs row's
        with engine.connect() as conn:
            created, kwarg_created, now = conn.execute(
                text(
                    "SELECT j.created_at, k.created_at, timezone('UTC', now()) FROM jobs j "
                    "JOIN job_kwargs k ON k.job_id = j.id WHERE j.id = :id"
                ),
                {"id": body["job_id"]},
            ).one()
        assert created == kwarg_created and now - created < timedelta(minutes=1)
    finally:
        stop_background(app)


def _at_once(count: int, call) -> list:
    """``call(i)`` for i in range(count), from as many threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_submissions_under_one_key_record_one_job(app, redis_conn):
    # Given the API, Redis answering
    client = app.test_client()
    submit_add(client)
    # When 12 clients send the same request under one idempotency key at the same moment (on
    # SQLite they share commits: a batch holding the key twice is written again job by job)
    answers = _at_once(
        12, lambda i: app.test_client().post("/tasks/add", json={"args": [1, 2], "idempotency_key": "same"})
    )
    # Then one job was created and every answer names it
    codes = sorted(a.status_code for a in answers)
    ids = {a.get_json()["job_id"] for a in answers}
    assert codes == [200] * 11 + [202] and len(ids) == 1, codes
    # And it is stored, counted and queued once
    stats = client.get("/monitoring/queue/stats").get_json()["jobs"]
    assert stats.get("QUEUED", 0) + stats.get("PENDING", 0) == 2
    queued = redis_conn.lrange("rq:queue:default", 0, -1)
    assert queued.count(f"{ids.pop()}-1".encode()) == 1


def test_concurrent_submissions_are_each_recorded_and_queued_once(app, redis_conn):
    # Given the API, Redis answering
    client = app.test_client()
    first = submit_add(client)["job_id"]

    # When 8 clients submit 25 jobs each at once, some with kwargs
    def submit_many(i: int) -> list[str]:
        own = app.test_client()
        return [submit(own, "echo", kwargs={"n": i * 100 + k} if k % 2 else {})["job_id"] for k in range(25)]

    ids = [job_id for batch in _at_once(8, submit_many) for job_id in batch]
    # Then 200 distinct jobs are stored, counted, indexed and queued once each
    assert len(set(ids)) == 200
    stats = client.get("/monitoring/queue/stats").get_json()["jobs"]
    assert stats.get("QUEUED", 0) + stats.get("PENDING", 0) == 201
    with services(app).engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM jobs")).scalar_one() == 201
        assert conn.execute(text("SELECT COUNT(*) FROM job_kwargs")).scalar_one() == 8 * 12
    queued = [rq_id.decode() for rq_id in redis_conn.lrange("rq:queue:default", 0, -1)]
    assert sorted(queued) == sorted(f"{job_id}-1" for job_id in [first, *ids])
