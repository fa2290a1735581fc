"""F15: five API servers started at once on an empty PostgreSQL database, each migrating it at
start (MIGRATE_ON_START, the default).

Three are ``python backend/app.py`` and two are gunicorn with two worker processes each, so seven
processes race to migrate; the issue saw two of three concurrent migrations fail and gunicorn lose
a worker in one cold start of three. Passes when every server comes up healthy and serves a job,
the schema is at Alembic's head, and no process died (no gunicorn worker exited or was booted
again, no traceback in any log). Repeated on a fresh database for every round.
"""

from __future__ import annotations

import time

import pytest

from backend.dev.redis_server import free_port
from tests.chaos.api_hosts import ApiHost
from tests.chaos.harness import RECOVERY_BOUND, TERMINAL, report_figures, scaled, wait_until
from tests.chaos.pg_store import LogMark, alembic_revisions, database_name, head_revision

ROUNDS = scaled(2, 10)
APP_PY_HOSTS = 3
GUNICORN_HOSTS = 2
GUNICORN_WORKERS = 2


def gunicorn_worker_events(log: str) -> dict[str, int]:
    """How many gunicorn workers booted, and how many exited or failed to boot, per its log."""
    return {
        "booted": log.count("Booting worker"),
        "exited": log.count("Worker exiting") + log.count("Worker failed to boot") + log.count("was sent SIG"),
    }


@pytest.mark.timeout(scaled(120, 1200))
def test_f15_five_api_servers_cold_start_together_on_an_empty_database(cluster, postgres_server):
    cluster.start_redis()
    # The first server of every round listens where the worker reports.
    report_port = free_port()
    worker = cluster.start_worker("f15-w0", simple=True, env={"API_BASE_URL": f"http://127.0.0.1:{report_port}"})
    head = head_revision()
    mark = LogMark.now(postgres_server)
    slowest_up = 0.0
    processes = 0
    server_errors = 0
    failures: list[str] = []

    for round_number in range(ROUNDS):
        # Given an empty database
        cluster.store_url = postgres_server.create_database()
        database = database_name(cluster.store_url)
        assert alembic_revisions(postgres_server, database) == []
        hosts = [ApiHost(cluster, f"r{round_number}-app0", port=report_port)]
        hosts += [ApiHost(cluster, f"r{round_number}-app{i}") for i in range(1, APP_PY_HOSTS)]
        hosts += [
            ApiHost(cluster, f"r{round_number}-gun{i}", gunicorn_workers=GUNICORN_WORKERS)
            for i in range(GUNICORN_HOSTS)
        ]

        # When five API servers start at once, each migrating it
        for host in hosts:
            host.launch()
        # Then every one comes up and says it is healthy
        for host in hosts:
            slowest_up = max(slowest_up, host.wait_up(timeout=90))
        for host in hosts:
            response = host.api.get("/monitoring/health")
            if response.status_code != 200:
                failures.append(f"{host.name}: health {response.status_code} {response.text[:300]}")
        # And the schema is at head
        revisions = alembic_revisions(postgres_server, database)
        if revisions != [head]:
            failures.append(f"round {round_number}: alembic_version {revisions}, head is {head}")
        # And every server serves a job to its end (run by the one worker, reported to the first)
        jobs = {host.name: host.api.submit("chaos_sleep", kwargs={"seconds": 0.01})["job_id"] for host in hosts}
        reader = hosts[0].api
        wait_until(
            lambda jobs=jobs, reader=reader: all(reader.job(job_id)["status"] in TERMINAL for job_id in jobs.values()),
            RECOVERY_BOUND + 30,
            message=f"round {round_number}: jobs not terminal: {[reader.job(j) for j in jobs.values()]}",
        )
        for name, job_id in jobs.items():
            status = reader.job(job_id)["status"]
            if status != "COMPLETED":
                failures.append(f"{name}: its job ended {status}")
        # And no process died: every server alive, each gunicorn booted its workers once
        for host in hosts:
            processes += 1 + host.gunicorn_workers
            log = host.output()
            if not host.alive():
                failures.append(f"{host.name} died: {log[-2000:]}")
            if "Traceback" in log:
                failures.append(f"{host.name} logged a traceback:\n{log[-3000:]}")
            if host.gunicorn_workers:
                events = gunicorn_worker_events(log)
                if events != {"booted": host.gunicorn_workers, "exited": 0}:
                    failures.append(f"{host.name}: gunicorn workers {events}:\n{log[-3000:]}")
            if host.server_errors():
                server_errors += len(host.server_errors())
                failures.append(f"{host.name}: {host.server_errors()}")
        for host in hosts:
            host.kill()
        postgres_server.drop_database(database)
        time.sleep(0.2)

    deadlocks = mark.deadlocks()
    report_figures(
        "F15",
        {
            "rounds": ROUNDS,
            "servers_per_round": len(hosts),
            "api_processes": processes,
            "slowest_up_s": round(slowest_up, 1),
            "failures": len(failures),
            "5xx": server_errors,
            "deadlocks": len(deadlocks),
        },
    )
    assert not failures, "\n".join(failures[:20])
    assert not deadlocks, "\n".join(deadlocks[:20])
    assert worker.alive()
