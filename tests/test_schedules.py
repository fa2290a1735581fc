"""Cron schedules: the API, exactly-once firing with several schedulers, missed runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from backend.api.context import services
from backend.app import create_app
from backend.core.settings import load
from backend.scheduler import Scheduler
from backend.services import build_services
from backend.store.models import ScheduledJob
from tests.conftest import ROOT, TASK_MODULES
from tests.helpers import wait_until

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


def test_a_schedule_naming_an_unknown_task_is_422_and_a_change_to_one_leaves_it_as_it_was(client):
    # A task named in the body is a field's value, not the resource the URL names: 422 (a 404 to
    # PATCH /scheduled-jobs/<id> read as "no such schedule", schemathesis' ST302), the tasks listed
    response = client.post("/scheduled-jobs", json={**BODY, "task": "nope"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert "no task named 'nope'" in error["message"]
    assert "add" in error["details"]["tasks"]
    assert client.get("/scheduled-jobs").get_json()["scheduled_jobs"] == []

    schedule = create(client)
    response = client.patch(f"/scheduled-jobs/{schedule['id']}", json={"task": "nope", "enabled": False})
    assert response.status_code == 422
    assert "no task named 'nope'" in response.get_json()["error"]["message"]
    assert client.get(f"/scheduled-jobs/{schedule['id']}").get_json() == schedule


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
    with services(app).sessions() as session:
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
        "LOG_LEVEL": "INFO",
    }

    # When two real scheduler processes run until both are up and the schedule has fired, and
    # some passes more (a loaded machine takes seconds to import and migrate: a fixed sleep sent
    # SIGTERM before the handler was in place)
    processes = [
        subprocess.Popen([sys.executable, "backend/scheduler.py"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    logs: list[list[str]] = [[] for _ in processes]
    readers = [
        threading.Thread(target=lambda p=p, lines=lines: lines.extend(line.decode() for line in p.stderr), daemon=True)
        for p, lines in zip(processes, logs, strict=True)
    ]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: all(any("scheduler started" in line for line in lines) for lines in logs), 60, "both up")
        wait_until(lambda: client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"], 30, "a firing")
        time.sleep(1)
    finally:
        for process in processes:
            process.terminate()
        codes = [process.wait(timeout=10) for process in processes]
        for reader in readers:
            reader.join(timeout=5)

    # Then the schedule fired once, and both stopped cleanly on SIGTERM
    assert codes == [0, 0], logs
    assert len(client.get(f"/scheduled-jobs/{schedule['id']}/jobs").get_json()["jobs"]) == 1


def test_a_key_never_sees_another_owners_schedule(settings):
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


# -- bounds: schedules per owner, and pages of the list bounded in bytes --------------------


def test_an_owner_at_max_schedules_per_owner_gets_409_naming_the_cap(settings):
    # Before: any number of schedules (600 of them with 64 KB arguments made GET
    # /scheduled-jobs a 36 MB answer).
    settings.update({"MAX_SCHEDULES_PER_OWNER": 2, "API_KEYS": "alice:ka,bob:kb"})
    client = create_app(settings).test_client()
    alice, bob = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    made = [client.post("/scheduled-jobs", json={**BODY, "name": f"s{i}"}, headers=alice) for i in range(2)]
    assert [m.status_code for m in made] == [201, 201]

    refused = client.post("/scheduled-jobs", json={**BODY, "name": "s2"}, headers=alice)

    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "conflict" and "MAX_SCHEDULES_PER_OWNER" in error["message"]
    assert error["details"] == {"setting": "MAX_SCHEDULES_PER_OWNER", "limit": 2}
    assert len(client.get("/scheduled-jobs", headers=alice).get_json()["scheduled_jobs"]) == 2
    # the cap is per owner, and a deleted schedule makes room again
    assert client.post("/scheduled-jobs", json=BODY, headers=bob).status_code == 201
    deleted = client.delete(f"/scheduled-jobs/{made[0].get_json()['id']}", headers={**alice, "X-Requested-With": "t"})
    assert deleted.status_code == 204
    assert client.post("/scheduled-jobs", json={**BODY, "name": "s2"}, headers=alice).status_code == 201


def test_the_schedule_list_shows_arguments_only_when_asked_in_pages_bounded_in_bytes(settings):
    # Before: every schedule with its arguments, all in one answer, with no next_cursor.
    settings["JOBS_PAGE_MAX_BYTES"] = 50_000
    client = create_app(settings).test_client()
    ids = [
        create(client, name=f"big{i}", task="word_count", args=[], kwargs={"text": f"{i} " + "x" * 20_000})["id"]
        for i in range(5)
    ]

    light = client.get("/scheduled-jobs")
    assert light.status_code == 200 and len(light.data) < 10_000
    page = light.get_json()
    assert [s["id"] for s in page["scheduled_jobs"]] == ids and page["next_cursor"] is None
    assert all("args" not in s and "kwargs" not in s for s in page["scheduled_jobs"])

    first = client.get("/scheduled-jobs?fields=args,kwargs")
    assert len(first.data) <= 50_000 + 1_000
    page = first.get_json()
    assert [s["kwargs"]["text"][:2] for s in page["scheduled_jobs"]] == ["0 ", "1 "]
    seen = [s["id"] for s in page["scheduled_jobs"]]
    while page["next_cursor"] is not None:
        page = client.get(f"/scheduled-jobs?fields=kwargs&cursor={page['next_cursor']}").get_json()
        assert all("kwargs" in s and "args" not in s for s in page["scheduled_jobs"])
        seen += [s["id"] for s in page["scheduled_jobs"]]
    assert seen == ids

    two = client.get("/scheduled-jobs?limit=2").get_json()
    assert [s["id"] for s in two["scheduled_jobs"]] == ids[:2]
    rest = client.get(f"/scheduled-jobs?cursor={two['next_cursor']}").get_json()
    assert [s["id"] for s in rest["scheduled_jobs"]] == ids[2:]
    for bad in ("fields=", "fields=args,,kwargs", "fields=secret", "limit=0", "limit=501", "cursor=nope"):
        answer = client.get(f"/scheduled-jobs?{bad}")
        assert answer.status_code == 422, bad
        assert answer.get_json()["error"]["code"] == "validation_failed"
