"""The worker's start check after a Redis failover: the store's clear yes, or no run.

A job created before Redis' current history began (a failover, a restart from a snapshot) may
have lost its cancel fence, so its worker asks the store before running it
(backend/broker/fences.py, backend/runner/start_gate.py). Only an accepted start runs the task;
a refusal or no answer within the bound (below RQ's own timers) does not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from backend.broker import fences
from backend.broker.queues import register_queues
from tests.conftest import TOKEN


def _old_history(connection) -> None:
    """Redis as after a failover: the history noted is another server's."""
    connection.hset(fences.HISTORY_KEY, mapping={"replid": "the-old-masters-replication-id", "since": "0"})


def test_a_redis_back_from_a_snapshot_older_than_any_noted_history_is_not_trusted(redis_conn):
    # Given a Redis that holds RQ's queues but no history noted: a snapshot taken before any
    # worker noted one (RDB's first save), or a backup restored from then
    register_queues(redis_conn)
    redis_conn.rpush("rq:queue:default", "job-1")
    before = datetime.now(UTC) - timedelta(minutes=5)

    # Then a job created before now is asked about: its fence may be one of the writes lost
    assert fences.start_check(redis_conn, "job-1", before) is fences.StartCheck.ASK_STORE
    # while a Redis that holds no RQ state at all (new, or emptied) is trusted
    redis_conn.flushall()
    assert fences.start_check(redis_conn, "job-1", before) is fences.StartCheck.CLEAR


def test_the_store_answers_the_start_check_yes_only_for_a_start_it_accepts(client, live_server):
    from backend.runner.start_gate import StartGate, Verdict

    queued = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    cancelled = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    assert client.post(f"/jobs/{cancelled['job_id']}/cancel", json={}).status_code == 200
    gate = StartGate(live_server, TOKEN)

    # A queued attempt: yes, and the store records the start
    assert gate.ask(queued["job_id"], 1, "w", within=10) is Verdict.ALLOWED
    assert client.get(f"/jobs/{queued['job_id']}").get_json()["status"] == "PROCESSING"
    # a cancelled one, or a job the store does not have (deleted): no
    assert gate.ask(cancelled["job_id"], 1, "w", within=10) is Verdict.REFUSED
    assert gate.ask("no-such-job", 1, "w", within=10) is Verdict.REFUSED
    # and an API that does not answer: no answer within the bound, not a yes
    assert StartGate("http://127.0.0.1:9", TOKEN).ask(queued["job_id"], 1, "w", within=0.5) is Verdict.UNANSWERED


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_start_the_store_cannot_confirm_does_not_run_and_is_an_interruption(
    app, client, redis_conn, start_worker, tmp_path: Path, simple
):
    from tests.test_reconciler import age

    # Given a job queued before Redis failed over (so its worker must ask the store)
    marker = tmp_path / "runs"
    job = client.post("/tasks/flaky", json={"kwargs": {"marker": str(marker), "failures": 0}}).get_json()
    _old_history(redis_conn)

    # When its worker cannot reach the API to ask
    args = ["--burst", "--name", "cut-off", *(["--simple"] if simple else [])]
    worker = start_worker(*args, env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"})
    assert worker.wait(timeout=60) == 0, worker.output()

    # Then the task never ran, and RQ shows the run ended by our reason alone
    assert not marker.exists()
    rq_job = RQJob.fetch(job["rq_job_id"], connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.get_status() == "failed"
    assert rq_job.latest_result().exc_string.startswith("StartUnconfirmed: ")
    # and the reconciler takes it for an interruption: a new attempt at once, no retry spent
    age(app, job["job_id"])
    services(app).reconciler.run_once()
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["status"], after["attempt"], after["retry_count"], after["interruptions"]) == ("QUEUED", 2, 0, 1)
