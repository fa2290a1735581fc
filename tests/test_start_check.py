"""The worker's start check after a Redis failover: the store's clear yes, or no run.

A job created before Redis' current history began (a failover, a restart from a snapshot) may
have lost its cancel fence, so its worker asks the store before running it
(backend/broker/fences.py, backend/runner/start_gate.py). Only an accepted start runs the task;
a refusal or no answer within the bound (below RQ's own timers) does not. A start left unconfirmed
cut no run: the job gets a new attempt after a short delay, spending neither a retry nor an
interruption, so a slow answer never ends a healthy job FAILED.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from backend.broker import fences
from backend.broker.queues import register_queues
from backend.service import worker_reports
from tests.conftest import TOKEN
from tests.helpers import attempts, get_job, wait_for_status, wait_until


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
def test_a_start_the_store_cannot_confirm_does_not_run_and_is_no_interruption(
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
    # and the reconciler copies it as unstarted: a new attempt after a short delay, nothing spent
    age(app, job["job_id"])
    services(app).reconciler.run_once()
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["status"], after["attempt"], after["retry_count"], after["interruptions"]) == ("QUEUED", 2, 0, 0)
    assert after["next_retry_at"] is not None


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_start_answered_too_late_for_the_worker_does_not_fail_a_healthy_job(
    client, redis_conn, start_worker, tmp_path: Path, monkeypatch, simple
):
    # Given an API that answers a start in 0.3 s, and the next attempt of an unstarted run 3 s away
    applied = worker_reports.apply

    def slow_to_start(manager, reports, **kwargs):
        if any(report.event == "started" for report in reports):
            time.sleep(0.3)
        return applied(manager, reports, **kwargs)

    monkeypatch.setattr(worker_reports, "apply", slow_to_start)
    monkeypatch.setattr("backend.service.attempts.UNSTARTED_RETRY_SECONDS", 3.0)
    # and a job queued before Redis failed over (so its worker must ask the store)
    marker = tmp_path / "runs"
    job = client.post("/tasks/flaky", json={"kwargs": {"marker": str(marker), "failures": 0}}).get_json()
    _old_history(redis_conn)

    # When its worker waits less for the answer than the API takes (REPORT_RETRY_SECONDS 0.05)
    mode = ["--simple"] if simple else []
    hasty = start_worker("--name", "hasty", *mode, env={"REPORT_RETRY_SECONDS": "0.05"})
    wait_until(lambda: get_job(client, job["job_id"])["attempt"] > 1, what="a second attempt")
    hasty.stop()

    # Then the task did not run, and the job waits for its next attempt with nothing spent
    # (it used to be an interruption, run again at once: "FAILED ... interrupted 4 times" within 2 s)
    assert not marker.exists(), hasty.output()
    waiting = get_job(client, job["job_id"])
    assert (waiting["status"], waiting["retry_count"], waiting["interruptions"]) == ("QUEUED", 0, 0), waiting
    assert waiting["next_retry_at"] is not None
    # and once that attempt is due, a worker whose start check gets the store's answer runs it
    # (RQ's scheduler holds it until the whole second after: its scores are whole seconds)
    due = math.ceil(datetime.fromisoformat(waiting["next_retry_at"]).timestamp())
    time.sleep(max(0.0, due - time.time()) + 0.1)
    patient = start_worker("--burst", "--name", "patient", *mode)
    assert patient.wait(timeout=60) == 0, patient.output()
    done = wait_for_status(client, job["job_id"], {"COMPLETED"})
    assert (done["attempt"], done["retry_count"], done["interruptions"]) == (2, 0, 0)
    assert marker.read_text() == "run\n"
    assert [a["outcome"] for a in attempts(client, job["job_id"])] == ["UNSTARTED", "COMPLETED"]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_report_retry_time_of_no_seconds_is_refused_at_start(value):
    from backend.core.settings import SettingError, Settings

    # A start check that may wait no time never asks the store: every start after a failover unconfirmed
    with pytest.raises(SettingError, match="REPORT_RETRY_SECONDS must be a number of seconds above 0"):
        Settings.load(environ={"REPORT_RETRY_SECONDS": value})
