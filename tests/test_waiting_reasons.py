"""A reason for every wait: ``waiting_reason``, ``resumes_at``, ``queue_position`` and
``waiting_detail`` of a live job that is not running, in ``GET /jobs/<id>`` and ``GET /jobs``,
with real Redis, real workers and the real store."""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.tasks import task
from tests.conftest import TASK_MODULES
from tests.helpers import get_job, submit, submit_add, wait_for_status, wait_until

THIS_MODULE = __name__


@task("hold_slot", concurrency=1)
def hold_slot(release_file: str) -> str:
    """Hold the task's one slot until ``release_file`` exists (30 s at most)."""
    deadline = time.monotonic() + 30
    while not Path(release_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


@task("call_once_a_minute", rate_limit="1/minute", rate_key="provider")
def call_once_a_minute(provider: str = "example") -> str:
    """At most one start a minute per ``provider``."""
    return provider


@pytest.fixture
def waiting_tasks(settings) -> dict:
    """The API and the workers know ``hold_slot`` (this module) besides the usual tasks."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"
    return {"TASK_MODULES": settings["TASK_MODULES"]}


def listed(client) -> dict[str, dict]:
    """GET /jobs, by job id."""
    response = client.get("/jobs?limit=100")
    assert response.status_code == 200, response.get_json()
    return {job["job_id"]: job for job in response.get_json()["jobs"]}


def iso_z(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_job_without_a_worker_scheduled_or_waiting_for_a_parent_says_so(client):
    run_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    scheduled = submit_add(client, run_at=iso_z(run_at))
    parent = submit_add(client)
    child = submit_add(client, depends_on=[parent["job_id"]])

    job = get_job(client, scheduled["job_id"])
    assert job["waiting_reason"] == "scheduled"
    assert job["resumes_at"] == job["run_at"] == iso_z(run_at)
    assert job["waiting_detail"] == f"scheduled to start at {run_at:%Y-%m-%d %H:%M:%S} UTC"
    # No worker has ever run against this Redis: nothing listens on the default queue.
    for _ in range(2):  # the second answer comes from the served body, decided afresh
        job = get_job(client, parent["job_id"])
        assert job["waiting_reason"] == "no_worker", job
        assert job["waiting_detail"] == "no live worker listens on queue default"
        assert job["resumes_at"] is None
    job = get_job(client, child["job_id"])
    assert job["waiting_reason"] == "dependencies" and job["waiting_for"] == [parent["job_id"]]
    assert job["waiting_detail"] == f"waiting for job {parent['job_id']} to end"

    jobs = listed(client)
    assert jobs[scheduled["job_id"]]["waiting_reason"] == "scheduled"
    assert jobs[scheduled["job_id"]]["resumes_at"] == iso_z(run_at)
    assert jobs[parent["job_id"]]["waiting_reason"] == "no_worker"
    assert jobs[child["job_id"]]["waiting_reason"] == "dependencies"
    assert jobs[child["job_id"]]["waiting_for"] == [parent["job_id"]]

    # An ended job waits for nothing.
    assert client.post(f"/jobs/{scheduled['job_id']}/cancel", json={}).status_code == 200
    job = get_job(client, scheduled["job_id"])
    assert job["status"] == "CANCELLED"
    assert [job[f] for f in ("waiting_reason", "resumes_at", "queue_position", "waiting_detail")] == [None] * 4
    assert listed(client)[scheduled["job_id"]]["waiting_reason"] is None


@pytest.fixture
def slow_retries(settings) -> None:
    settings["RETRY_BACKOFF_BASE"] = 600.0  # a retry waits 10 minutes: long past the test


def test_a_failed_attempt_waiting_for_its_retry_says_retry_backoff(slow_retries, client, run_burst_worker):
    job = submit(client, "fail", max_retries=2)
    run_burst_worker()
    job = wait_for_status(client, job["job_id"], {"QUEUED"})
    wait_until(lambda: get_job(client, job["job_id"])["retry_count"] == 1, what="the retry recorded")
    job = get_job(client, job["job_id"])
    assert job["waiting_reason"] == "retry_backoff", job
    assert job["resumes_at"] == job["next_retry_at"] is not None
    retry_at = datetime.fromisoformat(job["next_retry_at"].replace("Z", "+00:00"))
    assert job["waiting_detail"] == f"retry 1 of 2 at {retry_at:%Y-%m-%d %H:%M:%S} UTC, after a failure"
    assert listed(client)[job["job_id"]]["waiting_reason"] == "retry_backoff"


def test_a_snoozed_job_says_until_when_and_why(client, run_burst_worker):
    job = submit(client, "snooze_once", kwargs={"seconds": 600})  # tests/long_task_fixtures.py
    run_burst_worker()
    wait_until(lambda: get_job(client, job["job_id"])["snoozes"] == 1, what="the snooze recorded")
    job = get_job(client, job["job_id"])
    assert (job["status"], job["retry_count"], job["error"]) == ("QUEUED", 0, None)
    assert job["waiting_reason"] == "snoozed", job
    assert job["resumes_at"] == job["next_retry_at"] is not None
    until = datetime.fromisoformat(job["next_retry_at"].replace("Z", "+00:00"))
    assert job["waiting_detail"] == f"snoozed until {until:%Y-%m-%d %H:%M:%S} UTC: the provider said 429"
    # A list decides from the row alone (a snooze leaves no error), without the reason.
    row = listed(client)[job["job_id"]]
    assert (row["waiting_reason"], row["resumes_at"]) == ("snoozed", job["resumes_at"])
    assert row["waiting_detail"] == f"snoozed until {until:%Y-%m-%d %H:%M:%S} UTC"


def test_a_worker_busy_with_a_limited_task_shows_slots_positions_and_queues_nobody_serves(
    waiting_tasks, client, start_worker, tmp_path
):
    release = str(tmp_path / "release")
    worker = start_worker("--name", "waiting-default", "--queues", "default", env=waiting_tasks)
    first = submit(client, "hold_slot", kwargs={"release_file": release})
    wait_for_status(client, first["job_id"], {"PROCESSING"})
    assert get_job(client, first["job_id"])["waiting_reason"] is None  # it runs

    second = submit(client, "hold_slot", kwargs={"release_file": release})
    job = get_job(client, second["job_id"])
    assert job["status"] == "QUEUED"
    assert job["waiting_reason"] == "concurrency_limit", job
    assert job["waiting_detail"] == "waiting for a free slot of task hold_slot (1 running)"

    ahead, behind = submit_add(client), submit_add(client)
    # Live workers come from a snapshot of Redis kept a second per process: the one taken
    # before the worker started may still be served.
    wait_until(lambda: get_job(client, ahead["job_id"])["waiting_reason"] == "queued", what="queued")
    for _ in range(2):  # again from the served bodies
        job = get_job(client, ahead["job_id"])
        assert (job["waiting_reason"], job["queue_position"]) == ("queued", 1), job
        assert job["waiting_detail"] == "queued on default, next in line"
        job = get_job(client, behind["job_id"])
        assert (job["waiting_reason"], job["queue_position"]) == ("queued", 2), job
        assert job["waiting_detail"] == "queued on default, 1 job ahead"

    low = submit_add(client, priority="low")
    job = get_job(client, low["job_id"])
    assert job["waiting_reason"] == "no_worker" and job["waiting_detail"] == "no live worker listens on queue low"

    # A list decides from one snapshot of Redis for all its rows (no position there); it is a
    # second old at most, so it is waited for.
    want = {
        first["job_id"]: None,
        second["job_id"]: "concurrency_limit",
        ahead["job_id"]: "queued",
        behind["job_id"]: "queued",
        low["job_id"]: "no_worker",
    }
    wait_until(
        lambda: {i: j["waiting_reason"] for i, j in listed(client).items() if i in want} == want,
        what=f"the list shows {want}",
    )
    assert listed(client)[second["job_id"]]["waiting_detail"] == "waiting for a free slot of task hold_slot (1 running)"

    # The worker dies: once its lease lapses nothing listens on the default queue, though no
    # job's row changed.
    os.killpg(worker.process.pid, signal.SIGKILL)
    wait_until(lambda: get_job(client, ahead["job_id"])["waiting_reason"] == "no_worker", what="no_worker")
    assert get_job(client, ahead["job_id"])["queue_position"] == 1


def test_a_job_over_its_rate_limit_says_rate_limit_until_its_key_frees_a_slot(waiting_tasks, client, run_burst_worker):
    first, second = (submit(client, "call_once_a_minute", kwargs={"provider": "openai"}) for _ in range(2))
    other = submit(client, "call_once_a_minute", kwargs={"provider": "anthropic"})
    # The burst worker starts the first of each key and puts the second aside (held by the
    # limiter, in no queue list): with nothing left to pop it ends, the second still QUEUED.
    run_burst_worker()
    assert wait_for_status(client, first["job_id"], {"COMPLETED"})["result"] == "openai"
    assert wait_for_status(client, other["job_id"], {"COMPLETED"})["result"] == "anthropic"
    job = get_job(client, second["job_id"])
    assert job["status"] == "QUEUED" and job["waiting_reason"] == "rate_limit", job
    resumes_at = datetime.fromisoformat(job["resumes_at"].replace("Z", "+00:00"))
    # The key's next slot frees when the first start leaves its minute.
    assert datetime.now(UTC) < resumes_at <= datetime.now(UTC) + timedelta(seconds=61)
    assert (
        job["waiting_detail"] == f"rate limit of key openai: 1/minute; next slot at {resumes_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    assert job["queue_position"] is None
    # A list asks Redis once for its page's rows and says the same.
    shown = listed(client)[second["job_id"]]
    assert (shown["waiting_reason"], shown["resumes_at"], shown["waiting_detail"]) == (
        "rate_limit",
        job["resumes_at"],
        job["waiting_detail"],
    )
    # An operator's limit for the key is the one the detail names (the limiter obeys it).
    assert client.put("/rate-limits/openai", json={"limit": "1/hour"}).status_code == 200
    wait_until(
        lambda: "rate limit of key openai: 1/hour" in get_job(client, second["job_id"])["waiting_detail"],
        what="the override in the detail",
    )


def test_with_redis_down_a_job_says_what_its_row_does(settings):
    from backend.app import create_app

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    client = create_app(settings).test_client()
    run_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    scheduled = submit_add(client, run_at=iso_z(run_at))
    plain = submit_add(client)
    # A task with a rate limit: without Redis nothing says the limiter holds it, so the row's words.
    limited = submit(client, "call_limited_provider", kwargs={"prompt": "hi", "provider": "openai"})
    assert get_job(client, limited["job_id"])["waiting_reason"] == "queued"
    assert listed(client)[limited["job_id"]]["waiting_reason"] == "queued"
    for _ in range(2):
        job = get_job(client, plain["job_id"])
        assert job["status"] == "PENDING"
        assert job["waiting_reason"] == "queued" and job["queue_position"] is None
        assert job["waiting_detail"] == "recorded; goes on queue default once Redis answers"
        assert get_job(client, scheduled["job_id"])["waiting_reason"] == "scheduled"
        jobs = listed(client)
        assert jobs[plain["job_id"]]["waiting_reason"] == "queued"
        assert jobs[scheduled["job_id"]]["waiting_reason"] == "scheduled"


class TestFairShare:
    """Under fair share (the default) workers do not take a queue's jobs in list order."""

    @pytest.fixture
    def settings(self, settings):
        from tests.test_fair_share import ALICE, BOB

        settings["API_KEYS"] = f"alice:{ALICE},bob:{BOB}"
        return settings

    def test_queue_position_says_when_a_job_starts_not_its_place_in_the_list(self, client, redis_conn, monkeypatch):
        """Bob's one job behind Alice's 50 is one of the next two a worker takes, yet GET said
        position 51; Alice's 11th is about the 12th to start."""
        from backend.broker import waiting_facts
        from backend.broker.fair_queue import FairQueues
        from tests.helpers import bearer
        from tests.test_fair_share import ALICE, BOB, submit_batch

        _, alice = submit_batch(client, ALICE, 50)
        bob = submit(client, "add", args=[1, 2], headers=bearer(BOB))["job_id"]
        shown = get_job(client, bob, headers=bearer(BOB))
        assert shown["queue_position"] in (1, 2), shown
        assert "fair share across 2 owners" in shown["waiting_detail"], shown
        eleventh = get_job(client, alice[10], headers=bearer(ALICE))
        assert eleventh["queue_position"] in (11, 12), eleventh
        # Behind more of Alice's jobs than a read scans of the list, it still knows its turn.
        monkeypatch.setattr(waiting_facts, "POSITION_SCAN", 20)
        assert get_job(client, bob, headers=bearer(BOB))["queue_position"] == shown["queue_position"]
        assert get_job(client, alice[30], headers=bearer(ALICE))["queue_position"] is None
        # What the workers' pop does: Bob's job is among the next two.
        pops = [FairQueues(redis_conn).take(["high", "default", "low"])[0].rq_id for _ in range(2)]
        assert f"{bob}-1" in pops
