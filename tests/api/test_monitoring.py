"""Monitoring endpoints and Prometheus metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
from sqlalchemy import func, select

from backend.api.context import services, update_settings
from backend.app import create_app
from backend.dev import processes
from backend.dev.redis_server import free_port
from backend.store.models import Job
from tests.conftest import ROOT, TASK_MODULES


def test_monitoring_needs_an_admin_key(settings):
    settings["API_KEYS"] = "alice:ka,ops:ko:admin"
    client = create_app(settings).test_client()
    for path in ("/monitoring/health", "/monitoring/queue/stats", "/monitoring/queue/workers", "/metrics"):
        assert client.get(path, headers={"Authorization": "Bearer ka"}).status_code == 403
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer ko"}).status_code in (200, 503)


def test_stats_counts_match_the_jobs_table(client, app, run_burst_worker):
    for _ in range(3):
        client.post("/tasks/add", json={"args": [1, 1]})
    client.post("/tasks/fail", json={"max_retries": 0})
    cancelled = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    client.post(f"/jobs/{cancelled['job_id']}/cancel", json={})
    run_burst_worker()
    client.post("/tasks/add", json={"args": [2, 2], "priority": "low"})

    stats = client.get("/monitoring/queue/stats").get_json()

    with services(app).sessions() as session:
        actual = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    assert {k: v for k, v in stats["jobs"].items() if v} == actual
    assert stats["jobs"] == {
        **dict.fromkeys(stats["jobs"], 0),
        "COMPLETED": 3,
        "FAILED": 1,
        "CANCELLED": 1,
        "QUEUED": 1,
    }
    assert stats["total_jobs"] == 6
    assert stats["queues"]["low"]["queued"] == 1
    assert stats["queues"]["default"]["finished"] == 3
    assert stats["queues"]["default"]["failed"] == 1


def test_workers_lists_live_workers_with_their_state(client, start_worker):
    start_worker("--name", "watched", "--simple")
    deadline = time.monotonic() + 10
    while not (workers := client.get("/monitoring/queue/workers").get_json()["workers"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [worker] = workers
    assert worker["name"] == "watched" and worker["alive"] is True
    assert worker["queues"] == ["high", "default", "low"]
    assert worker["last_heartbeat"].endswith("Z")
    health = client.get("/monitoring/health")
    assert health.status_code == 200 and health.get_json()["checks"]["workers"]["names"] == ["watched"]


def test_failed_jobs_are_listed_and_requeued(client, run_burst_worker, tmp_path):
    job = client.post("/tasks/flaky", json={"kwargs": {"marker": str(tmp_path / "m")}, "max_retries": 0}).get_json()
    run_burst_worker()

    failed = client.get("/monitoring/queue/failed").get_json()["failed"]
    assert [(f["job_id"], f["error"]) for f in failed] == [(job["job_id"], "RuntimeError: flaky failure 1")]

    response = client.post("/monitoring/queue/failed", json={"rq_job_id": failed[0]["rq_job_id"]})
    assert response.status_code == 202 and response.get_json()["attempt"] == 2
    run_burst_worker()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"
    assert client.post("/monitoring/queue/failed", json={"job_id": job["job_id"]}).status_code == 409
    assert client.post("/monitoring/queue/failed", json={"rq_job_id": "nope"}).status_code == 404
    assert client.post("/monitoring/queue/failed", json={}).status_code == 422


def test_metrics_in_prometheus_format(client, run_burst_worker):
    client.post("/tasks/add", json={"args": [1, 1]})
    run_burst_worker()
    client.get("/jobs")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'jobservice_jobs{status="COMPLETED",task="add"} 1.0' in text
    assert 'jobservice_queue_depth{queue="default"} 0.0' in text
    assert "jobservice_workers_alive" in text
    assert 'jobservice_http_request_duration_seconds_count{endpoint="/jobs",method="GET",status="200"}' in text
    assert 'jobservice_job_run_seconds_count{status="COMPLETED",task="add"}' in text
    assert 'jobservice_job_queue_wait_seconds_count{task="add"}' in text


@pytest.mark.timeout(90)
def test_metrics_add_up_across_gunicorn_processes(settings, tmp_path):
    # Given the API under gunicorn with 2 processes in prometheus-client's multiprocess mode
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "RECONCILE_INTERVAL": "0",
        "RATE_LIMIT_ENABLED": "0",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "1",
        "LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        # Ready when /metrics answers: a readiness probe of /tasks that timed out under load would
        # still be served later, and counted among the requests below.
        processes.wait_for_http(f"{url}/metrics", process=server)

        def tasks_count() -> float:
            text = requests.get(f"{url}/metrics", timeout=5).text
            prefix = 'jobservice_http_request_duration_seconds_count{endpoint="/tasks",method="GET"'
            line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
            return float(line.rsplit(" ", 1)[1]) if line else 0.0

        before = tasks_count()
        # When requests (a new connection each) have reached both processes
        sent = 0
        deadline = time.monotonic() + 30
        while len(list(metrics_dir.glob("histogram_*.db"))) < 2 or sent < 40:
            assert time.monotonic() < deadline, "the requests never reached both processes"
            requests.get(f"{url}/tasks", headers={"Connection": "close"}, timeout=5)
            sent += 1
        # Then the scrape counts every one of them, whichever process answers it
        assert tasks_count() - before == sent
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_failed_jobs_show_errors_within_the_error_cap(app, client, run_burst_worker):
    # Given a task that failed with a 50 KB message (RQ keeps it whole)
    update_settings(app, MAX_ERROR_BYTES=2048)
    job = client.post("/tasks/fail", json={"kwargs": {"message": "m" * 50_000}, "max_retries": 0}).get_json()
    run_burst_worker()

    # When an admin lists RQ's failed jobs
    [entry] = client.get("/monitoring/queue/failed").get_json()["failed"]

    # Then the error is cut to the cap, keeping its end
    assert entry["job_id"] == job["job_id"]
    assert len(entry["error"].encode()) <= 2048 and entry["error"].endswith("m" * 100)


def test_workers_listed_while_redis_is_gone_answer_503_with_retry_after(client, app, redis_conn):
    # Given a worker known to RQ, and a Redis that has gone away
    from rq import Worker

    from backend.api.context import services

    Worker(["default"], connection=redis_conn, name="ghost").register_birth()
    pool = services(app).redis.connection_pool
    port = pool.connection_kwargs["port"]
    pool.connection_kwargs["port"] = free_port()
    pool.reset()  # forget the open connections: the next command dials the dead port
    try:
        # When the workers are listed
        answer = client.get("/monitoring/queue/workers")
    finally:
        pool.connection_kwargs["port"] = port
        pool.reset()
    # Then the answer says Redis is unavailable, not a 500
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers.get("Retry-After")
    # and once Redis is back the worker is listed, dead (no lease)
    [worker] = client.get("/monitoring/queue/workers").get_json()["workers"]
    assert worker["name"] == "ghost" and worker["current_job"] is None and worker["alive"] is False
