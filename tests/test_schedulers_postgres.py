"""Any number of schedulers on one PostgreSQL: each due time of each schedule fires exactly
once, and "due" is decided by the database's clock, whatever each host's clock says.

A real PostgreSQL (tests/postgres.py), real Redis, schedulers as threads with their own
services and as real ``backend/scheduler.py`` processes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from backend.api.context import services
from backend.app import create_app
from backend.core.settings import load
from backend.scheduler import Scheduler
from backend.services import build_services
from tests.conftest import ROOT, TASK_MODULES
from tests.helpers import wait_until

#: A scheduler process whose host clock reads argv[1] seconds off: every ``utcnow`` of the
#: backend is the patched one (patched before anything imports it).
SKEWED_SCHEDULER = """
import sys
from datetime import timedelta
import backend.store.models as models
real = models.utcnow
models.utcnow = lambda: real() + timedelta(seconds=float(sys.argv[1]))
from backend.scheduler import main
sys.exit(main())
"""


@pytest.fixture
def pg_settings(settings, postgres_url) -> dict:
    settings["DATABASE_URL"] = postgres_url
    return settings


@pytest.fixture
def pg_client(pg_settings):
    return create_app(pg_settings).test_client()


def create_schedules(client, count: int, cron: str) -> list[str]:
    ids = []
    for n in range(count):
        response = client.post("/scheduled-jobs", json={"name": f"s{n}", "task": "add", "cron": cron, "args": [1, n]})
        assert response.status_code == 201, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def stored(client, sql: str, **params) -> list:
    with services(client.application).engine.begin() as connection:
        result = connection.execute(text(sql), params)
        return result.all() if result.returns_rows else []


def deadlocks_since(postgres_server, offset: int) -> list[str]:
    with open(postgres_server.log_path, errors="replace") as log:
        log.seek(offset)
        return [line for line in log if "deadlock detected" in line]


def test_four_schedulers_ticking_concurrently_on_postgresql_fire_each_due_time_once(
    pg_settings, pg_client, postgres_server
):
    # Given 40 schedules every 5 minutes, and four schedulers with their own services (hosts)
    ids = create_schedules(pg_client, 40, "*/5 * * * *")
    clock = {"now": datetime.now(UTC)}
    schedulers = [
        Scheduler(build_services(load(pg_settings)).schedules, interval=0, clock=lambda: clock["now"]) for _ in range(4)
    ]
    log_offset = postgres_server.log_path.stat().st_size
    errors: list[BaseException] = []

    def tick(scheduler: Scheduler) -> None:
        try:
            scheduler.tick()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    # When all of them tick at once (two threads each) while the clock crosses five due times
    for _ in range(5):
        clock["now"] += timedelta(minutes=5)
        threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    # Then every schedule's five due times started one job each, nothing failed, and
    # PostgreSQL saw no deadlock
    assert errors == []
    fired = stored(pg_client, "SELECT schedule_id, count(*), count(DISTINCT fire_at) FROM schedule_firings GROUP BY 1")
    assert sorted(fired) == sorted((schedule_id, 5, 5) for schedule_id in ids)
    assert stored(pg_client, "SELECT count(*) FROM jobs WHERE schedule_id IS NOT NULL") == [(200,)]
    assert deadlocks_since(postgres_server, log_offset) == []


@pytest.mark.parametrize("offset", [timedelta(days=1), timedelta(days=-1)], ids=["a-day-ahead", "a-day-behind"])
def test_scheduler_processes_with_a_wrong_host_clock_fire_what_the_database_clock_says_is_due(
    pg_settings, pg_client, postgres_server, tmp_path, offset
):
    # Given eleven schedules due in an hour by the database's clock (once-a-year crons, so
    # none is due again during the test), and three scheduler processes running on hosts
    # whose clocks are a day off
    due = create_schedules(pg_client, 11, "0 0 1 1 *")
    later = due.pop()
    stored(
        pg_client,
        "UPDATE scheduled_jobs SET next_run_at = (statement_timestamp() AT TIME ZONE 'UTC') + interval '1 hour'",
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": pg_settings["REDIS_URL"],
        "DATABASE_URL": pg_settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "SCHEDULER_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
        "JOBSERVICE_ENV": "development",  # the test server's password is short
    }
    log_offset = postgres_server.log_path.stat().st_size
    logs = [tmp_path / f"scheduler-{n}.log" for n in range(3)]
    processes = []
    for log in logs:
        with open(log, "wb") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", SKEWED_SCHEDULER, str(offset.total_seconds())],
                    cwd=ROOT,
                    env=env,
                    stderr=out,
                )
            )
    try:
        # (each one's SIGTERM handler is in place once it says so)
        wait_until(
            lambda: all("scheduler started" in log.read_text(errors="replace") for log in logs),
            timeout=60,
            what="three schedulers started",
        )

        # When ten of the schedules fall due (a second ago by the database's clock)
        stored(
            pg_client,
            "UPDATE scheduled_jobs SET next_run_at = (statement_timestamp() AT TIME ZONE 'UTC')"
            " - interval '1 second' WHERE id != :later",
            later=later,
        )

        # Then they fire (before, a day behind: none did)
        wait_until(
            lambda: stored(pg_client, "SELECT count(*) FROM jobs WHERE schedule_id IS NOT NULL")[0][0] >= 10,
            timeout=30,
            what="the due schedules fired",
        )
    finally:
        # (SIGTERM: each ends the pass it is in, so whatever that pass fires is stored)
        for process in processes:
            process.terminate()
        codes = [process.wait(timeout=30) for process in processes]
    assert codes == [0, 0, 0], [log.read_text(errors="replace")[-2000:] for log in logs]
    # each once, and the schedule due in an hour did not (before, a day ahead: it fired)
    fired = stored(pg_client, "SELECT schedule_id, count(*) FROM schedule_firings GROUP BY 1")
    assert sorted(fired) == sorted((schedule_id, 1) for schedule_id in due)
    assert stored(pg_client, "SELECT count(*) FROM jobs WHERE schedule_id = :later", later=later) == [(0,)]
    assert deadlocks_since(postgres_server, log_offset) == []
