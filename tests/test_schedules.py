"""Cron schedules: the API, exactly-once firing with several schedulers, missed runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from backend.config import load
from backend.models import ScheduledJob
from backend.scheduler import Scheduler
from backend.services import build_services
from tests.conftest import ROOT, TASK_MODULES

BODY = {"name": "nightly", "task": "add", "cron": "*/5 * * * *", "args": [1, 2]}


def create(client, **overrides) -> dict:
    response = client.post("/scheduled-jobs", json={**BODY, **overrides})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_schedule_is_created_read_updated_listed_and_deleted(client):
    schedule = create(client)
    assert schedule["next_run_at"].endswith("Z")
    assert schedule["enabled"] is True and schedule["timezone"] == "UTC"

    patched = client.patch(f"/scheduled-jobs/{schedule['id']}", json={"cron": "0 9 * * *", "timezone": "Europe/Paris"})
    assert patched.status_code == 200
    assert patched.get_json()["next_run_at"] != schedule["next_run_at"]
    assert [s["id"] for s in client.get("/scheduled-jobs").get_json()["scheduled_jobs"]] == [schedule["id"]]
    assert client.delete(f"/scheduled-jobs/{schedule['id']}", content_type="application/json").status_code == 204
    assert client.get(f"/scheduled-jobs/{schedule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"cron": "not cron"}, "cron"),
        ({"cron": "* * * * * *"}, "5 fields"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"args": [1]}, "bad arguments"),
        ({"priority": "urgent"}, "priority"),
        ({"colour": "red"}, "unknown"),
    ],
)
def test_a_bad_schedule_is_422_naming_the_fault(client, overrides, fragment):
    response = client.post("/scheduled-jobs", json={**BODY, **overrides})
    assert response.status_code == 422
    assert fragment in response.get_json()["error"]["message"]
    assert client.get("/scheduled-jobs").get_json()["scheduled_jobs"] == []


def test_a_schedule_of_an_unknown_task_is_404_like_submitting_one(client):
    response = client.post("/scheduled-jobs", json={**BODY, "task": "nope"})
    assert response.status_code == 404
    assert "no task named 'nope'" in response.get_json()["error"]["message"]
    assert client.get("/scheduled-jobs").get_json()["scheduled_jobs"] == []


def test_two_schedulers_fire_each_due_time_exactly_once(settings, client):
    # Given a schedule every 5 minutes and two schedulers with their own store connections
    schedule = create(client)
    clock = {"now": datetime.now(UTC)}
    schedulers = [
        Scheduler(build_services(load(settings)).schedules, interval=0, clock=lambda: clock["now"]) for _ in range(2)
    ]

    # When both tick concurrently while the clock crosses six due times
    for _ in range(6):
        clock["now"] += timedelta(minutes=5)
        threads = [threading.Thread(target=s.tick) for s in schedulers for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # Then each due time started one job
    jobs = client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"]
    assert len(jobs) == 6
    assert {j["schedule_id"] for j in jobs} == {schedule["id"]}
    after = client.get(f"/scheduled-jobs/{schedule['id']}").get_json()
    assert after["last_job_id"] == jobs[0]["job_id"]


@pytest.mark.parametrize(("policy", "expected"), [("once", 1), ("skip", 0)])
def test_a_schedule_missed_for_hours_fires_once_or_not_at_all(settings, client, policy, expected):
    schedule = create(client, cron="* * * * *")
    settings["SCHEDULE_MISSED_POLICY"] = policy
    services = build_services(load(settings))
    later = datetime.now(UTC) + timedelta(hours=3)
    scheduler = Scheduler(services.schedules, interval=0, clock=lambda: later)

    scheduler.tick()
    scheduler.tick()

    assert len(client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"]) == expected
    next_run = client.get(f"/scheduled-jobs/{schedule['id']}").get_json()["next_run_at"]
    assert next_run > later.isoformat()[:16]


def test_run_now_fires_at_once(client, run_burst_worker):
    schedule = create(client)
    response = client.post(f"/scheduled-jobs/{schedule['id']}/run", json={})
    assert response.status_code == 202
    job = response.get_json()
    assert job["schedule_id"] == schedule["id"]
    run_burst_worker()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["result"] == 3


def test_a_disabled_schedule_does_not_fire(settings, client):
    schedule = create(client, enabled=False)
    assert schedule["next_run_at"] is None
    services = build_services(load(settings))
    Scheduler(services.schedules, interval=0, clock=lambda: datetime.now(UTC) + timedelta(days=1)).tick()
    assert client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"] == []


def test_two_scheduler_processes_fire_a_due_schedule_once(settings, client, app):
    # Given a schedule that is due now, and not again during the test (a once-a-year cron: an
    # every-minute one is really due twice when the test spans a minute boundary)
    schedule = create(client, cron="0 0 1 1 *")
    with app.extensions["jobs"].sessions() as session:
        session.execute(
            update(ScheduledJob)
            .where(ScheduledJob.id == schedule["id"])
            .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "SCHEDULER_INTERVAL": "0.2",
        "LOG_LEVEL": "WARNING",
    }

    # When two real scheduler processes run for a while
    processes = [
        subprocess.Popen([sys.executable, "backend/scheduler.py"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        time.sleep(4)
    finally:
        for process in processes:
            process.terminate()
        codes = [process.wait(timeout=10) for process in processes]

    # Then the schedule fired once, and both stopped cleanly on SIGTERM
    assert codes == [0, 0], [p.stderr.read().decode() for p in processes]
    assert len(client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"]) == 1


def test_a_key_never_sees_another_owners_schedule(settings):
    from backend.app import create_app

    settings["API_KEYS"] = "alice:ka,bob:kb"
    client = create_app(settings).test_client()
    schedule = client.post("/scheduled-jobs", json=BODY, headers={"Authorization": "Bearer ka"}).get_json()
    bob = {"Authorization": "Bearer kb"}
    assert client.get(f"/scheduled-jobs/{schedule['id']}", headers=bob).status_code == 404
    assert client.post(f"/scheduled-jobs/{schedule['id']}/run", json={}, headers=bob).status_code == 404
    assert client.get("/scheduled-jobs", headers=bob).get_json()["scheduled_jobs"] == []


def test_a_schedules_jobs_leave_their_arguments_out_like_a_page_of_jobs(client):
    # Given a schedule whose jobs carry 60 KB of arguments, fired 20 times
    big = create(client, task="word_count", args=["x" * 60_000], name="big-args")
    for _ in range(20):
        assert client.post(f"/scheduled-jobs/{big['id']}/run", json={}).status_code == 202

    # When its jobs are listed
    response = client.get(f"/scheduled-jobs/{big['id']}/jobs")

    # Then all 20 are there, without their arguments, and the answer stays small
    jobs = response.get_json()["jobs"]
    assert len(jobs) == 20 and all("kwargs" not in job and "args" not in job for job in jobs)
    assert len(response.data) < 50_000
