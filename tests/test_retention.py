"""Retention: ended jobs pruned per status once past RETENTION_*, with every row keyed by them (issue 16).

Jobs are ended through the routes workers and clients use (no worker process: a test of the
store's deletes needs none); "old" jobs are aged by moving their completed_at back in the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import bindparam, func, inspect, select, text

from backend.api.context import services
from backend.app import create_app, start_background, stop_background
from backend.core.durations import parse_duration
from backend.core.settings import SettingError
from backend.service.retention import Retention, policy_from_settings
from backend.store import clock, counts
from backend.store.engine import transaction
from backend.store.models import Attempt, Batch, Job, JobDependency, JobLog, WebhookAttempt, WebhookDelivery
from tests.conftest import ROOT, TASK_MODULES
from tests.helpers import AUTH, submit, wait_until

HOOK = "http://127.0.0.1:9/hook"  # never called: WEBHOOK_INTERVAL is 0, the delivery stays in the outbox


@pytest.fixture
def settings(settings):
    settings.update(HOUSEKEEPING_INTERVAL=0, WEBHOOK_ALLOW_LOOPBACK=1, WEBHOOK_SECRET="s" * 32)
    return settings


def ended(client, status: str, **body) -> str:
    """A job of task add, ended as ``status`` the way a worker or a client ends one; its id."""
    job_id = submit(client, "add", args=[1, 2], max_retries=0, **body)["job_id"]
    if status == "CANCELLED":
        assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
        return job_id
    started = client.post(f"/internal/jobs/{job_id}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    assert started.status_code == 200
    line = {"at": time.time(), "level": "INFO", "message": "working"}
    assert (
        client.post(f"/internal/jobs/{job_id}/log", json={"attempt": 1, "lines": [line]}, headers=AUTH).status_code
        == 200
    )
    report = {"attempt": 1, "result": 3} if status == "COMPLETED" else {"attempt": 1, "error": "boom"}
    response = client.post(f"/internal/jobs/{job_id}/{status.lower()}", json=report, headers=AUTH)
    assert response.status_code == 200 and response.get_json()["status"] == status
    return job_id


def age(app, job_ids, days: float) -> None:
    """Move the jobs' end ``days`` back: the retention clock is completed_at."""
    with transaction(services(app).sessions) as session:
        now = clock.now(session)
        session.execute(
            Job.__table__.update().where(Job.id.in_(list(job_ids))).values(completed_at=now - timedelta(days=days))
        )


def left(app, model, column, ids) -> int:
    with services(app).sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(column.in_(list(ids))))


def counts_match_rows(app, client) -> None:
    """GET /monitoring/queue/stats' per-status counts (and job_counts' readers) equal the rows left."""
    with services(app).sessions() as session:
        rows = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        maintained = {status: n for status, n in counts.by_status(session).items() if n}
        counts.roll_up(services(app).sessions)
        rolled = {status: n for status, n in counts.by_status(session).items() if n}
    shown = {status: n for status, n in client.get("/monitoring/queue/stats").get_json()["jobs"].items() if n}
    assert shown == maintained == rolled == rows


def retention(app, **policy) -> Retention:
    bundle = services(app)
    return Retention(bundle.sessions, {**policy_from_settings(bundle.settings), **policy}, batch=2, pause=0)


def test_ended_jobs_go_per_status_and_age_with_their_rows_and_the_counts_stay_exact(app, client):
    # Given old and young jobs of each end status, one with a webhook delivery (and an attempt of it)
    old = {status: [ended(client, status) for _ in range(3)] for status in ("COMPLETED", "FAILED", "CANCELLED")}
    hooked = ended(client, "COMPLETED", webhook_url=HOOK, kwargs={})
    old["COMPLETED"].append(hooked)
    young = [ended(client, status) for status in ("COMPLETED", "FAILED", "CANCELLED")]
    live = submit(client, "add", args=[1, 1])["job_id"]
    for job_id in old["FAILED"] + old["CANCELLED"]:  # their end time is set as a COMPLETED one's is
        assert client.get(f"/jobs/{job_id}").get_json()["completed_at"] is not None
    age(app, [job for jobs in old.values() for job in jobs], days=31)
    with transaction(services(app).sessions) as session:
        delivery = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.job_id == hooked)).one()
        session.add(WebhookAttempt(delivery_id=delivery, attempted_at=clock.now(session), status_code=500))
    # When a pass runs with COMPLETED and CANCELLED at 30 days, FAILED kept for ever
    done = retention(app, FAILED=None).prune_pass(time.monotonic() + 60)
    # Then the old COMPLETED and CANCELLED jobs are gone with their attempts, logs and deliveries
    assert done == {"COMPLETED": 4, "CANCELLED": 3}
    gone = old["COMPLETED"] + old["CANCELLED"]
    assert all(client.get(f"/jobs/{job_id}").status_code == 404 for job_id in gone)
    assert left(app, Attempt, Attempt.job_id, gone) == left(app, JobLog, JobLog.job_id, gone) == 0
    assert left(app, WebhookDelivery, WebhookDelivery.job_id, gone) == 0
    assert left(app, WebhookAttempt, WebhookAttempt.delivery_id, [delivery]) == 0
    if inspect(services(app).engine).has_table("job_kwargs"):
        with services(app).sessions() as session:
            kwargs_rows = session.execute(
                text("SELECT count(*) FROM job_kwargs WHERE job_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": gone},
            ).scalar_one()
        assert kwargs_rows == 0
    # And the FAILED ones (kept for ever), the young ones and the live one are all there, with their rows
    kept = old["FAILED"] + young + [live]
    assert all(client.get(f"/jobs/{job_id}").status_code == 200 for job_id in kept)
    assert left(app, Attempt, Attempt.job_id, old["FAILED"]) == 3
    assert left(app, JobLog, JobLog.job_id, old["FAILED"]) == 3
    counts_match_rows(app, client)
    # And a second pass finds nothing more
    assert retention(app, FAILED=None).prune_pass() == {}


def test_a_parent_with_a_live_dependant_and_a_live_batchs_jobs_are_kept_until_they_end(app, client):
    # Given an old parent whose dependant is still queued, and a batch with one old ended job and one live
    parent = ended(client, "COMPLETED")
    child = submit(client, "add", args=[2, 2], depends_on=[parent])["job_id"]
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}, {"args": [2, 2]}]}).get_json()
    first, second = batch["job_ids"]
    assert (
        client.post(f"/internal/jobs/{first}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH).status_code
        == 200
    )
    assert (
        client.post(f"/internal/jobs/{first}/completed", json={"attempt": 1, "result": 2}, headers=AUTH).status_code
        == 200
    )
    lone = ended(client, "COMPLETED")
    age(app, [parent, first, lone], days=40)
    # When a prune runs, Then only the job with no live relation goes
    assert retention(app).prune(["COMPLETED"]) == {"COMPLETED": 1}
    assert client.get(f"/jobs/{lone}").status_code == 404
    assert client.get(f"/jobs/{parent}").status_code == client.get(f"/jobs/{first}").status_code == 200
    # When the dependant and the batch's last job end (cancelled, so young), Then the old ones go
    for job_id in (child, second):
        assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
    # (the parent stays while its dependant's row does: a retry of the dependant reads its outcome)
    assert retention(app).prune(["COMPLETED"]) == {"COMPLETED": 1}
    assert left(app, JobDependency, JobDependency.depends_on_id, [parent]) == 1
    assert client.get(f"/jobs/{child}").get_json()["status"] == "CANCELLED"
    # And the batch's row stays while a job of it is left, and goes with its last job
    assert left(app, Batch, Batch.id, [batch["batch_id"]]) == 1
    age(app, [child, second], days=40)
    assert retention(app).prune(["CANCELLED"]) == {"CANCELLED": 2}
    assert left(app, Batch, Batch.id, [batch["batch_id"]]) == 0
    # And with its dependant gone, the parent goes too
    assert retention(app).prune(["COMPLETED"]) == {"COMPLETED": 1}
    assert left(app, JobDependency, JobDependency.depends_on_id, [parent]) == 0
    counts_match_rows(app, client)


def run_prune(settings: dict, *args: str, **env: str):
    return run_cli(settings, "prune", *args, **env)


def run_cli(settings: dict, command: str, *args: str, **env: str):
    """``python -m backend <command> <args>`` on the test's store, as an operator runs it."""
    environ = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "JOBSERVICE_ENV": "development",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "backend", command, *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_prune_command_says_what_it_did_and_a_dry_run_changes_nothing(app, client, settings):
    # Given two old COMPLETED jobs, one old FAILED and one old CANCELLED
    completed = [ended(client, "COMPLETED") for _ in range(2)]
    failed, cancelled = ended(client, "FAILED"), ended(client, "CANCELLED")
    age(app, [*completed, failed, cancelled], days=2)
    # When a dry run counts them (FAILED kept for ever), Then it says so and nothing changes
    dry = run_prune(settings, "--dry-run", RETENTION_COMPLETED="1d", RETENTION_FAILED="0")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "COMPLETED: 2 jobs would be pruned (older than 1d)",
        "FAILED: kept for ever (RETENTION_FAILED=0)",
        "CANCELLED: 0 jobs would be pruned (older than 30d)",
    ]
    assert all(client.get(f"/jobs/{job_id}").status_code == 200 for job_id in [*completed, failed, cancelled])
    # When it prunes COMPLETED and CANCELLED older than a day, Then it says how many went
    done = run_prune(settings, "--status", "completed,CANCELLED", "--older-than", "1d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "COMPLETED: 2 jobs pruned (older than 1d)",
        "CANCELLED: 1 job pruned (older than 1d)",
    ]
    assert [client.get(f"/jobs/{job_id}").status_code for job_id in [*completed, failed, cancelled]] == [
        404,
        404,
        200,
        404,
    ]
    counts_match_rows(app, client)
    # And a bad status is a usage error (exit 2) that names it
    bad = run_prune(settings, "--status", "QUEUED")
    assert bad.returncode == 2 and "QUEUED" in bad.stderr


def test_the_housekeeping_thread_prunes_on_its_own(settings):
    # Given an API whose housekeeping runs every 0.2 s with COMPLETED jobs kept for 1 second
    settings.update(HOUSEKEEPING_INTERVAL=0.2, RETENTION_COMPLETED="1s")
    app = start_background(create_app(settings))
    try:
        client = app.test_client()
        # When a job completes, Then it is gone about a second later, with nobody asking
        job_id = ended(client, "COMPLETED")
        failed = ended(client, "FAILED")
        wait_until(lambda: client.get(f"/jobs/{job_id}").status_code == 404, timeout=15, what="the job pruned")
        # And a FAILED job (90 days) is still there, and the counts equal the rows
        assert client.get(f"/jobs/{failed}").status_code == 200
        counts_match_rows(app, client)
    finally:
        stop_background(app)


@pytest.mark.one_pass(reason="settings and the duration parser: no store involved")
def test_a_bad_retention_is_refused_at_start_naming_it():
    for name in ("RETENTION_COMPLETED", "RETENTION_FAILED", "RETENTION_CANCELLED"):
        with pytest.raises(SettingError) as refused:
            create_app({name: "3 weeks", "REDIS_URL": "redis://127.0.0.1:1"})
        assert refused.value.name == name and "3 weeks" in str(refused.value)
    # And the command line refuses it as well, in one line naming it, before touching any store
    result = subprocess.run(
        [sys.executable, "-m", "backend", "prune", "--dry-run"],
        cwd=ROOT,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RETENTION_FAILED": "soon",
            "JOBSERVICE_ENV": "development",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "RETENTION_FAILED" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.one_pass(reason="the duration parser: no store involved")
def test_durations_read_as_operators_write_them():
    assert [parse_duration(text) for text in ("30d", "12h", "15m", "90s", " 7D ")] == [
        30 * 86400,
        12 * 3600,
        900,
        90,
        7 * 86400,
    ]
    assert parse_duration("0") is None and parse_duration("0d") is None
    for bad in ("", "30", "1w", "-1d", "1.5d", "d", "36501000d", "a while"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_retry_racing_the_prune_of_its_job_answers_404_not_500(app, client, monkeypatch):
    from backend.service import attempts as attempts_module

    # Given an old FAILED job, past RETENTION_FAILED
    job_id = ended(client, "FAILED")
    age(app, [job_id], days=100)
    real_load, pruned = attempts_module.load_job, []

    def load_then_prune(rows, wanted, **kw):
        job = real_load(rows, wanted, **kw)
        if not pruned:  # the housekeeping pass deletes it between the retry's read and its write
            pruned.append(retention(app).prune(["FAILED"]))
        return job

    monkeypatch.setattr(attempts_module, "load_job", load_then_prune)
    # When a client retries it at that moment (POST /monitoring/queue/failed goes the same way)
    response = client.post(f"/jobs/{job_id}/retry", json={})
    # Then the prune did delete it, and the client is told the job is gone, not a 500
    assert pruned == [{"FAILED": 1}]
    assert response.status_code == 404, response.get_json()
    assert response.get_json()["error"]["code"] == "not_found"


def test_the_vacuum_command_keeps_q_finding_the_jobs_after_a_prune(app, client, settings):
    # Given pruned jobs (gaps in jobs' rowids, which a SQLite VACUUM may renumber) and jobs kept
    gone = [ended(client, "FAILED") for _ in range(3)]
    kept = {word: ended(client, "FAILED") for word in ("alpha", "bravo", "charlie")}
    with transaction(services(app).sessions) as session:
        for word, job_id in kept.items():
            session.execute(Job.__table__.update().where(Job.id == job_id).values(error=f"{word} failed"))
    age(app, gone, days=100)
    assert retention(app).prune(["FAILED"]) == {"FAILED": 3}
    services(app).sessions.kw["bind"].dispose()
    # When the operator compacts the store
    result = run_cli(settings, "vacuum")
    # Then it says what it did, and q still finds each kept job by its own text
    assert result.returncode == 0, result.stderr
    assert ("vacuumed" if settings["DATABASE_URL"].startswith("sqlite") else "not needed") in result.stdout
    for word, job_id in kept.items():
        found = client.get("/jobs", query_string={"q": f"{word} failed"}).get_json()["jobs"]
        assert [job["job_id"] for job in found] == [job_id], word
    if settings["DATABASE_URL"].startswith("sqlite"):  # the index agrees with jobs' rows (raises if not)
        with transaction(services(app).sessions) as session:
            session.execute(text("INSERT INTO jobs_fts(jobs_fts, rank) VALUES('integrity-check', 1)"))
