"""What a PostgreSQL outage does: every route that needs the store answers 503 with Retry-After and
a JSON error (never 500, never a hang), the health check names the store, workers' reports are
refused with 503 and sent again, the scheduler keeps running, and when the server is back
everything works without a restart.

Each test has the module's own server (not the session's), since it stops it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import text, update

from backend.api.context import services
from backend.dev.postgres_server import PostgresServer
from backend.dev.redis_server import free_port
from backend.store.errors import StoreUnavailable, is_unavailable
from backend.store.models import ScheduledJob
from tests.conftest import ROOT, TASK_MODULES, TOKEN
from tests.postgres import postgres_server_fixture

INTERNAL = {"X-Internal-Token": TOKEN}


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL that these tests stop, block and start again (named like the chaos tests' own
    server, so that the PostgreSQL pass of the suite, which has this one anyway, skips them)."""
    yield from postgres_server_fixture()


@pytest.fixture
def settings(settings, own_postgres) -> dict:
    """The app's settings with the store on a fresh database of the outage server."""
    if not own_postgres.is_running():
        own_postgres.start()
    settings["DATABASE_URL"] = own_postgres.create_database()
    return settings


@contextlib.contextmanager
def black_hole(port: int) -> Iterator[None]:
    """A listener on ``port`` that never accepts: the kernel completes each TCP handshake, then
    nothing answers, as with a hung server or a proxy in front of a dead one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    try:
        yield
    finally:
        sock.close()


def wait_for(predicate, timeout: float = 60, message: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{message} not reached within {timeout} s"
        time.sleep(0.1)


def assert_store_unavailable(response) -> None:
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:300])
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "service_unavailable"


def store_requests(job_id: str, schedule_id: str) -> list[tuple[str, str, dict | None]]:
    """One well-formed request to each route that reads or writes the store."""
    report = {"job_id": job_id, "attempt": 1, "event": "started", "worker": "w1", "at": time.time()}
    return [
        ("POST", "/tasks/add", {"args": [1, 2]}),
        ("POST", "/tasks/add", {"args": [1, 2], "idempotency_key": "outage-key"}),
        ("POST", "/tasks/add/batch", {"jobs": [{"args": [1, 2]}]}),
        ("GET", "/jobs", None),
        ("GET", "/jobs?status=QUEUED", None),
        ("GET", f"/jobs/{job_id}", None),
        ("GET", f"/jobs/{job_id}/attempts", None),
        ("GET", f"/jobs/{job_id}/webhooks", None),
        ("POST", "/jobs/cancel", {"job_ids": [job_id]}),
        ("GET", "/scheduled-jobs", None),
        ("POST", "/scheduled-jobs", {"name": "outage", "task": "add", "cron": "* * * * *", "args": [1, 2]}),
        ("GET", f"/scheduled-jobs/{schedule_id}", None),
        ("PATCH", f"/scheduled-jobs/{schedule_id}", {"enabled": False}),
        ("POST", f"/scheduled-jobs/{schedule_id}/run", {}),
        ("POST", "/internal/reports", {"reports": [report]}),
        ("GET", "/monitoring/queue/stats", None),
        ("GET", "/metrics", None),
        ("POST", f"/jobs/{job_id}/cancel", {}),
        ("POST", f"/jobs/{job_id}/retry", {}),
    ]


def test_while_postgresql_is_down_the_store_routes_answer_503_and_all_work_again_when_it_is_back(client, own_postgres):
    # Given an API on PostgreSQL holding a job and a schedule
    job_id = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    schedule = client.post("/scheduled-jobs", json={"name": "s", "task": "add", "cron": "* * * * *", "args": [1, 2]})
    schedule_id = schedule.get_json()["id"]
    # When the server stops (its sessions end: the pool's connections are dead)
    own_postgres.stop("fast")
    # Then every route that needs the store answers 503 with Retry-After and a JSON error
    for method, path, body in store_requests(job_id, schedule_id):
        response = client.open(path, method=method, json=body, headers=INTERNAL)
        try:
            assert_store_unavailable(response)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from None
    # And the health check says the store is down
    health = client.get("/monitoring/health")
    assert health.status_code == 503
    assert "store" in health.get_json()["failing"]
    assert health.get_json()["checks"]["store"]["ok"] is False
    # When the server is back, the same app (no restart) serves every route again, the first
    # request included (the pool's dead connections are replaced when they are checked out)
    own_postgres.start()
    assert client.get(f"/jobs/{job_id}").status_code == 200
    for method, path, body in store_requests(job_id, schedule_id):
        response = client.open(path, method=method, json=body, headers=INTERNAL)
        assert response.status_code < 500, (method, path, response.status_code, response.get_data(as_text=True))
    assert client.get("/monitoring/health").get_json()["checks"]["store"] == {"ok": True}


@pytest.fixture
def small_pool(settings) -> dict:
    """One connection and a short wait for it, so that concurrent requests queue for the pool."""
    settings.update({"DB_POOL_SIZE": 1, "DB_MAX_OVERFLOW": 0, "DB_POOL_TIMEOUT": 1})
    return settings


def test_a_postgresql_that_never_answers_gets_503_from_every_request_instead_of_a_hang(
    small_pool, live_server, own_postgres
):
    # Given an API on PostgreSQL with one pooled connection, which is then lost, and a server
    # address that accepts TCP connections but never answers (hung, or a dead proxy's target)
    assert requests.get(f"{live_server}/jobs", timeout=30).status_code == 200
    own_postgres.stop("fast")
    with black_hole(own_postgres.port):
        # When several clients call it at once (one opens a connection, the others wait for the pool)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: requests.get(f"{live_server}/jobs", timeout=30), range(3)))
        health = requests.get(f"{live_server}/monitoring/health", timeout=30)
    # Then each gets a 503 with Retry-After within DB_CONNECT_TIMEOUT (its default) or
    # DB_POOL_TIMEOUT, not a hang (psycopg's own bound is 130 s) and not a 500
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"]
        assert answer.json()["error"]["code"] == "service_unavailable"
    assert health.status_code == 503 and "store" in health.json()["failing"]
    # And once the server answers again the same process serves
    own_postgres.start()
    assert requests.get(f"{live_server}/jobs", timeout=30).status_code == 200


def test_workers_reports_get_503_while_postgresql_is_down_and_land_when_it_is_back(client, start_worker, own_postgres):
    # Given a job running on a real worker that retries its reports for two minutes
    job_id = client.post("/tasks/crawl", json={"kwargs": {"steps": 8, "delay": 0.5}}).get_json()["job_id"]
    worker = start_worker("--name", "outage-worker", env={"REPORT_RETRY_SECONDS": "120"})
    wait_for(lambda: client.get(f"/jobs/{job_id}").get_json()["status"] == "PROCESSING", message="PROCESSING")
    # When PostgreSQL stops while the job runs
    own_postgres.stop("fast")
    # Then the worker's reports are answered 503, and it keeps them to send again
    wait_for(lambda: "answered 503" in worker.output(), message="a report answered 503")
    assert_store_unavailable(client.get(f"/jobs/{job_id}"))
    # When PostgreSQL is back, the job's end lands (the reconciler is off: only the report can
    # have set it) without restarting the API or the worker
    own_postgres.start()

    def completed() -> bool:
        response = client.get(f"/jobs/{job_id}")
        return response.status_code == 200 and response.get_json()["status"] == "COMPLETED"

    wait_for(completed, timeout=120, message="COMPLETED")
    assert client.get(f"/jobs/{job_id}").get_json()["result"] == {"steps": 8}


def test_the_scheduler_process_rides_out_a_postgresql_outage_and_fires_once_it_is_back(
    settings, client, app, own_postgres, tmp_path
):
    # Given a schedule not yet due and a real scheduler process on PostgreSQL
    schedule = client.post("/scheduled-jobs", json={"name": "s", "task": "add", "cron": "0 0 1 1 *", "args": [1, 2]})
    schedule_id = schedule.get_json()["id"]
    log_path = tmp_path / "scheduler.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "JOBSERVICE_ENV": "development",
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "SCHEDULER_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "backend/scheduler.py"], cwd=ROOT, env=env, stderr=log, stdout=log)
    try:
        wait_for(lambda: "scheduler started" in log_path.read_text(), message="the scheduler's start")
        # When PostgreSQL stops, the scheduler says a dependency is down and keeps running
        own_postgres.stop("fast")
        wait_for(
            lambda: "a dependency is down" in log_path.read_text() or process.poll() is not None,
            message="the scheduler's warning",
        )
        assert process.poll() is None, log_path.read_text()
        # When it is back and the schedule is due, the same process fires it
        own_postgres.start()
        with services(app).sessions() as session:
            session.execute(
                update(ScheduledJob)
                .where(ScheduledJob.id == schedule_id)
                .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            session.commit()
        wait_for(
            lambda: client.get(f"/scheduled-jobs/{schedule_id}/jobs").get_json()["jobs"] or process.poll() is not None,
            message="the schedule's job",
        )
        assert len(client.get(f"/scheduled-jobs/{schedule_id}/jobs").get_json()["jobs"]) == 1, log_path.read_text()
    finally:
        process.terminate()
        code = process.wait(timeout=30)
    assert code == 0, log_path.read_text()


def test_a_connection_the_server_ends_mid_transaction_is_a_503_and_the_next_request_is_served(
    client, app, own_postgres
):
    # Given a transaction open on the store, whose server process an administrator then ends
    # (pg_terminate_backend: the client's next statement gets 57P01 admin_shutdown)
    database = services(app).engine.url.database
    with services(app).sessions() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        own_postgres.execute(f"SELECT pg_terminate_backend({pid})", database)
        # When the transaction goes on, Then the error is one that means "the store is unavailable"
        with pytest.raises(StoreUnavailable) as raised:
            session.execute(text("SELECT 1"))
    assert is_unavailable(raised.value)
    assert "terminating connection due to administrator command" in str(raised.value)
    # And the API serves the next request on a fresh connection
    assert client.get("/jobs").status_code == 200


def test_migrate_against_a_server_that_never_answers_fails_within_the_connect_timeout():
    # Given a DATABASE_URL whose server takes the TCP handshake and then says nothing
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"postgresql+psycopg://jobs@127.0.0.1:{port}/jobs",
        "DB_CONNECT_TIMEOUT": "1",
        "JOBSERVICE_ENV": "development",
    }

    # When an operator runs the migration (psycopg alone would wait 130 s)
    with black_hole(port):
        done = subprocess.run(
            [sys.executable, "-m", "backend", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    # Then it gives up with one line saying why, and exit 1
    assert done.returncode == 1, done.stderr
    assert "migration failed" in done.stderr


def test_a_failed_report_that_finds_no_free_pooled_connection_is_a_503_and_lands_when_sent_again(
    small_pool, client, app
):
    # Given a job, on an API with one pooled connection, and a failure report whose job-manager
    # path (a failure may start a retry) finds that connection held by another request
    job_id = client.post("/tasks/add", json={"args": [1, 2], "max_retries": 0}).get_json()["job_id"]
    manager = services(app).jobs
    real_mark_failed, busy = manager.mark_failed, [True]

    def mark_failed(*args, **kwargs):
        if busy:
            with services(app).engine.connect():  # the pool's one connection, in use meanwhile
                return real_mark_failed(*args, **kwargs)
        return real_mark_failed(*args, **kwargs)

    manager.mark_failed = mark_failed
    failed = {"job_id": job_id, "attempt": 1, "event": "failed", "error": "boom", "at": time.time()}

    # When the worker's reporter sends it (SQLAlchemy's pool TimeoutError after DB_POOL_TIMEOUT)
    response = client.post("/internal/reports", json={"reports": [failed]}, headers=INTERNAL)

    # Then the whole batch is refused with 503 and Retry-After (the reporter sends it again),
    # not answered 200 with a 500 for the report (which the reporter drops)
    assert_store_unavailable(response)
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "QUEUED"
    # And sent again once a connection is free, it lands
    busy.clear()
    again = client.post("/internal/reports", json={"reports": [failed]}, headers=INTERNAL)
    assert again.status_code == 200 and again.get_json()["results"][0]["status"] == 200, again.get_json()
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "FAILED"


def test_a_bulk_cancel_that_meets_a_postgresql_outage_is_a_503_not_every_job_cancel_failed(client, app, own_postgres):
    # Given two live jobs, and PostgreSQL stopping just after the bulk cancel read them (as it
    # fences their attempts in Redis, before it writes CANCELLED)
    ids = [client.post("/tasks/add", json={"args": [i, i]}).get_json()["job_id"] for i in range(2)]
    manager = services(app).jobs
    real_fence_many = manager.queues.fence_many

    def fence_many(rq_ids):
        if own_postgres.is_running():
            own_postgres.stop("fast")
        return real_fence_many(rq_ids)

    manager.queues.fence_many = fence_many

    # When a client cancels both
    try:
        response = client.post("/jobs/cancel", json={"job_ids": ids})
    finally:
        own_postgres.start()

    # Then it answers 503 with Retry-After (try again), not 200 with each job "cancel_failed"
    assert_store_unavailable(response)
    # And once the server is back the same request cancels both
    manager.queues.fence_many = real_fence_many
    again = client.post("/jobs/cancel", json={"job_ids": ids})
    assert again.status_code == 200 and sorted(again.get_json()["cancelled"]) == sorted(ids), again.get_json()
