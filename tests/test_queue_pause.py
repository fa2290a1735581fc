"""Pausing and resuming queues (issue 15 item 3), with real workers, the real store and Redis:
a paused queue's jobs stay QUEUED (``queue_paused``) while the worker serves the other queues,
through a restart of the worker and of the API, until the queue is resumed; the command line;
a Redis that lost its keys gets the pause back from the store; ``GET /queues``; admin only."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from backend.api.context import services
from backend.app import create_app
from backend.broker.pauses import PAUSED_KEY
from backend.dev.redis_server import free_port
from backend.store import queue_pauses as store_pauses
from backend.tasks import task
from tests.conftest import TASK_MODULES
from tests.helpers import bearer, get_job, submit, wait_for_status, wait_until
from tests.test_cli import run_cli
from tests.test_reconciler import age

THIS_MODULE = __name__


@task("hold_a_while")
def hold_a_while(release_file: str) -> str:
    """Run until ``release_file`` exists, and at least 1.5 s (30 s at most): longer than a
    worker keeps its read of the paused queues, so its next dequeue reads them again."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        if Path(release_file).exists() and time.monotonic() - started >= 1.5:
            break
        time.sleep(0.05)
    return "released"


#: A POST without a JSON body says it comes from a script (the browser guard).
SCRIPTED = {"X-Requested-With": "test"}
ADMIN, TENANT = "admin-key-0123456789abcdef", "tenant-key-0123456789abcdef"


def queues_by_name(client, headers: dict | None = None) -> dict[str, dict]:
    response = client.get("/queues", headers=headers)
    assert response.status_code == 200, response.get_json()
    return {queue["name"]: queue for queue in response.get_json()["queues"]}


def command(client, queue: str, verb: str, headers: dict | None = None):
    return client.post(f"/queues/{queue}/{verb}", headers={**SCRIPTED, **(headers or {})})


def test_a_paused_queue_waits_through_restarts_while_the_worker_serves_the_others(settings, client, start_worker):
    paused = command(client, "default", "pause")
    assert paused.status_code == 200, paused.get_json()
    first = paused.get_json()
    assert first["queue"] == "default" and first["paused"] and first["changed"] and first["paused_by"] == "local"
    again = command(client, "default", "pause").get_json()  # idempotent: the first pause stays
    assert again == {**first, "changed": False}

    first_worker = start_worker("--name", "pause-w1")
    held = submit(client, "add", args=[1, 2])  # default; first in line for an idle worker
    ran = submit(client, "add", args=[2, 3], priority="high")
    assert wait_for_status(client, ran["job_id"], {"COMPLETED"})["result"] == 5
    job = get_job(client, held["job_id"])
    assert job["status"] == "QUEUED" and job["waiting_reason"] == "queue_paused", job
    assert job["waiting_detail"] == "queue default is paused: no worker starts its jobs until it is resumed"
    assert "pause-w1" in queues_by_name(client)["default"]["workers"]

    # Restart both: the worker (another name, so no lease to wait for) and the API (a new app).
    first_worker.stop()
    restarted = create_app(settings).test_client()
    overview = queues_by_name(restarted)
    assert overview["default"]["paused"] and overview["default"]["paused_at"] == first["paused_at"]
    assert overview["default"]["paused_in_redis"] and not overview["high"]["paused"]
    start_worker("--name", "pause-w2")
    ran_again = submit(restarted, "add", args=[3, 4], priority="high")
    assert wait_for_status(restarted, ran_again["job_id"], {"COMPLETED"})["result"] == 7
    assert get_job(restarted, held["job_id"])["waiting_reason"] == "queue_paused"

    resumed = command(restarted, "default", "resume").get_json()
    assert resumed == {"queue": "default", "paused": False, "changed": True, "paused_at": None, "paused_by": None}
    assert wait_for_status(restarted, held["job_id"], {"COMPLETED"})["result"] == 3
    assert command(restarted, "default", "resume").get_json()["changed"] is False


@pytest.fixture
def holding_tasks(settings) -> dict:
    """The API and the workers know ``hold_a_while`` (this module) besides the usual tasks."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"
    return {"TASK_MODULES": settings["TASK_MODULES"]}


def test_a_running_job_finishes_when_its_queue_is_paused_and_the_next_one_waits(
    holding_tasks, client, tmp_path, start_worker
):
    release = tmp_path / "release"
    start_worker("--name", "pause-busy", env=holding_tasks)
    running = submit(client, "hold_a_while", args=[str(release)])
    wait_for_status(client, running["job_id"], {"PROCESSING"})
    queued = submit(client, "add", args=[1, 2])
    assert command(client, "default", "pause").status_code == 200
    low = submit(client, "add", args=[2, 2], priority="low")
    release.touch()
    assert wait_for_status(client, running["job_id"], {"COMPLETED"})["result"] == "released"
    # Unpaused, the default job would run before the low one (queues in priority order).
    assert wait_for_status(client, low["job_id"], {"COMPLETED"})["result"] == 4
    job = get_job(client, queued["job_id"])
    assert job["status"] == "QUEUED" and job["waiting_reason"] == "queue_paused", job


def test_the_command_line_pauses_and_resumes(settings, client):
    paused = run_cli(settings, "pause", "low")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("queue low paused (since ") and ", by cli:" in paused.stdout
    low = queues_by_name(client)["low"]
    assert low["paused"] and low["paused_in_redis"] and low["paused_by"].startswith("cli:")
    unknown = run_cli(settings, "pause", "urgent")
    assert unknown.returncode == 2 and "urgent" in unknown.stderr
    resumed = run_cli(settings, "resume", "low")
    assert resumed.returncode == 0 and resumed.stdout == "queue low resumed\n", resumed.stderr
    assert not queues_by_name(client)["low"]["paused"]


def test_a_redis_that_lost_its_keys_gets_the_pause_back_from_the_store(app, client, redis_conn):
    assert command(client, "low", "pause").status_code == 200
    redis_conn.flushall()  # a Redis restarted empty
    low = queues_by_name(client)["low"]
    assert low["paused"] and not low["paused_in_redis"]
    services(app).reconciler.run_once()
    assert redis_conn.smembers(PAUSED_KEY) == {b"low"}
    assert queues_by_name(client)["low"]["paused_in_redis"]
    job = submit(client, "add", args=[1, 1], priority="low")
    assert get_job(client, job["job_id"])["waiting_reason"] == "queue_paused"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'jobservice_queue_paused{queue="low"} 1.0' in metrics
    assert 'jobservice_queue_paused{queue="default"} 0.0' in metrics


def test_a_worker_with_every_queue_paused_waits_and_stops_on_sigterm(client, start_worker):
    for name in ("high", "default", "low"):
        assert command(client, name, "pause").status_code == 200
    job = submit(client, "add", args=[1, 1], priority="high")
    worker = start_worker("--name", "pause-all")
    # Its wait has begun (after RQ installed its SIGTERM handler): it logs what it serves.
    wait_until(lambda: "serving none (waiting for a resume)" in worker.output(), what="the worker waits")
    assert "pause-all" in queues_by_name(client)["high"]["workers"]
    assert get_job(client, job["job_id"])["waiting_reason"] == "queue_paused"
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
    assert get_job(client, job["job_id"])["status"] == "QUEUED"


class TestAdminOnly:
    @pytest.fixture
    def settings(self, settings):
        settings["API_KEYS"] = f"admin:{ADMIN}:admin,tenant:{TENANT}"
        return settings

    def test_get_queues_shows_each_queue_and_only_admins_pause(self, client, run_burst_worker):
        admin, tenant = bearer(ADMIN), bearer(TENANT)
        assert client.get("/queues", headers=tenant).status_code == 403
        for verb in ("pause", "resume"):
            refused = command(client, "default", verb, headers=tenant)
            assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
        unknown = command(client, "urgent", "pause", headers=admin)
        assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "not_found"
        long = command(client, "q" * 5000, "resume", headers=admin).get_json()["error"]
        assert long["code"] == "not_found" and len(long["message"]) < 200, long  # not the name echoed whole
        for url in ("/queues/low", "/queues/low/stop", "/queues//pause"):
            missing = client.post(url, headers={**SCRIPTED, **admin})
            assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
        wrong = client.get("/queues/low/pause", headers=admin)
        assert wrong.status_code == 405 and wrong.get_json()["error"]["code"] == "method_not_allowed"

        done = submit(client, "add", args=[1, 2], headers=admin)
        run_burst_worker()
        assert wait_for_status(client, done["job_id"], {"COMPLETED"}, headers=admin)
        submit(client, "add", args=[1, 2], priority="low", headers=admin)
        assert command(client, "low", "pause", headers=admin).get_json()["paused_by"] == "admin"
        queues = client.get("/queues", headers=admin).get_json()["queues"]
        assert [queue["name"] for queue in queues] == ["high", "default", "low"]
        by_name = {queue["name"]: queue for queue in queues}
        assert by_name["default"] == {
            "name": "default",
            "depth": 0,
            "paused": False,
            "paused_at": None,
            "paused_by": None,
            "paused_in_redis": False,
            "workers": [],
            "completed_last_minute": 1,
        }
        low = by_name["low"]
        assert low["depth"] == 1 and low["paused"] and low["paused_in_redis"] and low["completed_last_minute"] == 0
        assert low["paused_at"].endswith("Z") and low["paused_by"] == "admin"


def test_without_redis_a_pause_is_recorded_and_answers_503_until_redis_has_it(settings):
    client = create_app({**settings, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    paused = command(client, "high", "pause")
    assert paused.status_code == 503 and paused.headers["Retry-After"], paused.get_json()
    assert "paused in the store" in paused.get_json()["error"]["message"]
    assert client.get("/queues").status_code == 503
    assert client.get("/metrics").get_data(as_text=True).count('jobservice_queue_paused{queue="high"} 1.0') == 1


def test_pauses_and_resumes_racing_each_other_all_answer_and_redis_ends_as_the_store(app, redis_conn):
    """Threads pausing and resuming one queue at once (two operators, a script run twice): each
    call answers the queue's state (on PostgreSQL a resume landing between a pause's insert and
    its read once made that pause a 500); the reconciler's sync then leaves Redis as the store."""
    pauses = services(app).pauses
    errors: list[BaseException] = []

    def hammer(index: int) -> None:
        try:
            for turn in range(40):
                if (index + turn) % 2:
                    outcome = pauses.pause("low", by=f"operator-{index}")
                    assert outcome.paused and outcome.paused_at is not None and outcome.paused_by
                else:
                    assert not pauses.resume("low", by=f"operator-{index}").paused
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert {name.decode() for name in redis_conn.smembers(PAUSED_KEY)} == set(pauses.paused())


def test_after_a_pause_and_a_resume_at_once_workers_obey_what_the_store_records(app, redis_conn):
    """Each command writes Redis from the store as it stands after its own commit, so the later
    writer always wins in both: a pause committed first but mirrored last no longer leaves
    workers skipping a queue the store says is open (until the reconciler's next pass)."""
    pauses = services(app).pauses
    differed = 0

    def command_now(verb: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        if verb == "pause":
            pauses.pause("low", by="one")
        else:
            pauses.resume("low", by="other")

    for _ in range(50):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=command_now, args=(verb, barrier)) for verb in ("pause", "resume")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        differed += {name.decode() for name in redis_conn.smembers(PAUSED_KEY)} != set(pauses.paused())
    assert differed == 0, f"Redis differed from the store after {differed} of 50 races"


def test_each_pause_and_resume_that_changes_a_queue_is_logged_once_with_who(client, caplog):
    caplog.set_level(logging.INFO, logger="backend.service.queue_pauses")
    for verb in ("pause", "pause", "resume", "resume"):
        assert command(client, "high", verb).status_code == 200
    lines = [record.getMessage() for record in caplog.records if record.name == "backend.service.queue_pauses"]
    assert lines == ["queue high paused by local", "queue high resumed by local"]


def test_a_pass_whose_pause_sync_fails_still_recovers_a_lost_job(app, client, redis_conn, caplog):
    job = submit(client, "add", args=[2, 3])
    redis_conn.lrem("rq:queue:default", 0, job["rq_job_id"])  # popped by a worker that then died
    age(app, job["job_id"])
    with services(app).sessions() as session:  # the pauses' record unreadable: a store error
        session.execute(text("DROP TABLE queue_pauses"))
        session.commit()
    report = services(app).reconciler.run_once()
    assert report.requeued == [job["job_id"]]
    assert "paused queues not synced, recovery goes on" in caplog.text
    assert get_job(client, job["job_id"])["status"] == "QUEUED"


def test_the_count_of_jobs_completed_lately_reads_a_range_of_its_index(app):
    """GET /queues counts each queue's jobs completed in the last minute: a range of
    ``ix_jobs_completed`` on both stores, never every COMPLETED job (both planners once took
    ``ix_jobs_status_created`` for ``status = 'COMPLETED'`` and filtered all of them by time)."""
    sessions = services(app).sessions
    engine = sessions.kw["bind"]
    executed: list[tuple[str, object]] = []

    def capture(_connection, _cursor, statement, parameters, _context, _many):
        if "count(" in statement:
            executed.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        store_pauses.completed_recently(sessions)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    ((statement, parameters),) = executed  # the one statement, as it ran
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")  # a test's few rows: a scan costs nothing
            plan = "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))
            assert "Index Only Scan using ix_jobs_completed" in plan, plan
        else:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = "\n".join(row[3] for row in rows)
            assert "USING COVERING INDEX ix_jobs_completed (completed_at>?)" in plan, plan
