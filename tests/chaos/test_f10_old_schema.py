"""F10: the API started on a database from an older schema.

For every revision of the migrations (oldest first, walked from Alembic's script directory),
a database file is built at that revision and given jobs of every status, written with only
the columns that revision has. Passes when the API migrates it to head at start, the old jobs
read back and the live ones among them are settled and run, and no route answers a 5xx.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Boolean, DateTime, Integer, create_engine, inspect, text

from backend.store.engine import alembic_config
from tests.chaos.harness import (
    RECOVERY_BOUND,
    TOKEN,
    Recorder,
    check_invariants,
    wait_all_terminal,
)


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


#: job id -> (status, worker) of the jobs written into the old database.
OLD_JOBS = {
    "job_old_completed": ("COMPLETED", "gone-worker"),
    "job_old_failed": ("FAILED", "gone-worker"),
    "job_old_cancelled": ("CANCELLED", None),
    "job_old_pending": ("PENDING", None),
    "job_old_queued_lost": ("QUEUED", None),
    "job_old_processing_dead": ("PROCESSING", "gone-worker"),
}


def _value(column: dict, job_id: str, status: str, worker: str | None, now: datetime):
    """A value for ``column`` of an old row: the known columns get real values, any other a
    plain one of its type (NULL when it may be)."""
    past = now - timedelta(minutes=5)
    known = {
        "id": job_id,
        "owner": "local",
        "task": "chaos_sleep",
        "status": status,
        "priority": "default",
        "args": [],
        "kwargs": {"seconds": 0.1},
        "progress": 100 if status == "COMPLETED" else 0,
        "result": {"old": True} if status == "COMPLETED" else None,
        "error": "old failure" if status == "FAILED" else None,
        "created_at": past,
        "updated_at": past,
        "started_at": past if status in ("PROCESSING", "COMPLETED", "FAILED") else None,
        "completed_at": past if status in ("COMPLETED", "FAILED", "CANCELLED") else None,
        "attempt": 1,
        "retry_count": 0,
        "max_retries": 3,
        "max_interruptions": 3,  # its server default (0008): 0 would fail the dead worker's job
        "timeout": 600,
        "rq_job_id": f"{job_id}-1",
        "worker": worker,
        "idempotency_key": f"key-{job_id}" if status not in ("COMPLETED", "FAILED", "CANCELLED") else None,
    }
    name = column["name"]
    if name in known:
        value = known[name]
    elif column["nullable"]:
        value = None
    else:
        kind = column["type"]
        value = (
            0
            if isinstance(kind, Integer)
            else False
            if isinstance(kind, Boolean)
            else past
            if isinstance(kind, DateTime)
            else {}
            if isinstance(kind, JSON)
            else ""
        )
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    return value


def build_old_database(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)
    engine = create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        columns = inspect(connection).get_columns("jobs")
        for job_id, (status, worker) in OLD_JOBS.items():
            row = {column["name"]: _value(column, job_id, status, worker, now) for column in columns}
            names = ", ".join(row)
            marks = ", ".join(f":{name}" for name in row)
            connection.execute(text(f"INSERT INTO jobs ({names}) VALUES ({marks})"), row)
        if "attempts" in inspect(connection).get_table_names():
            connection.execute(
                text("INSERT INTO attempts (job_id, attempt, worker, outcome) VALUES (:j, 1, 'gone-worker', :o)"),
                [{"j": "job_old_completed", "o": "COMPLETED"}, {"j": "job_old_failed", "o": "FAILED"}],
            )
    engine.dispose()


def body_for(method: str, path: str) -> dict | None:
    """A plausible body for a route, so that the call reaches the store rather than a 400."""
    if method not in ("POST", "PATCH", "PUT"):
        return None
    if path.startswith("/tasks/") and path.endswith("/batch"):
        return {"jobs": [{"kwargs": {"seconds": 0.1}}, {"kwargs": {"seconds": 0.1}}]}
    if path.startswith("/tasks/"):
        return {"kwargs": {"seconds": 0.1}}
    if path.startswith("/internal/"):
        return {"attempt": 1, "worker": "f10-probe", "progress": 50, "result": None, "error": "probe"}
    if path.rstrip("/") == "/scheduled-jobs":
        return {"name": f"f10-{time.monotonic_ns()}", "task": "chaos_sleep", "cron": "0 0 1 1 *", "kwargs": {}}
    if method == "PATCH":
        return {"enabled": False}
    return {}


def route_calls(url_map, values: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    """(method, path, body) for every route of the API, RQ Dashboard's parameterless pages
    included; DELETEs last."""
    calls = []
    for rule in url_map.iter_rules():
        if rule.endpoint == "static" or (rule.rule.startswith("/rq") and rule.arguments):
            continue
        path = rule.rule
        for argument in rule.arguments:
            for pattern in (f"<{argument}>", f"<string:{argument}>", f"<int:{argument}>", f"<path:{argument}>"):
                path = path.replace(pattern, values.get(argument, "0" if "int:" in pattern else "x"))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            calls.append((method, path, body_for(method, path)))
    return sorted(calls, key=lambda call: call[0] == "DELETE")


_url_maps: list = []


def routes_of_this_code(redis_url: str, tmp_path) -> object:
    """The running code's URL map, from an app built once per process (its routes are the same
    for every revision; building one migrates a new SQLite file, ~0.3 s)."""
    if not _url_maps:
        from backend.app import create_app

        app = create_app(
            {
                "REDIS_URL": redis_url,
                "DATABASE_URL": f"sqlite:///{tmp_path / 'routes.db'}",
                "TASK_MODULES": "backend.tasks.examples,tests.chaos.tasks",
                "RECONCILE_INTERVAL": 0,
                "LOG_LEVEL": "ERROR",
            }
        )
        _url_maps.append(app.url_map)
    return _url_maps[0]


@pytest.mark.parametrize("revision", revisions_oldest_first())
def test_f10_api_migrates_an_old_database_and_every_route_works(cluster, revision, tmp_path):
    # Given a database file at ``revision``, with jobs in it
    build_old_database(cluster.database_url, revision)

    # When the API starts on it
    cluster.start_redis()
    cluster.start_api()
    cluster.start_worker("f10-w")

    # Then the schema is at head
    engine = create_engine(cluster.database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    engine.dispose()

    # And the old jobs read back; the live ones are recovered and run
    with Recorder(cluster.api, interval=0.3) as recorder:
        for job_id, (status, _) in OLD_JOBS.items():
            job = cluster.api.job(job_id)
            if status in ("COMPLETED", "FAILED", "CANCELLED"):
                assert job["status"] == status, job
        jobs = wait_all_terminal(cluster, OLD_JOBS, timeout=RECOVERY_BOUND + 20, recorder=recorder)
        assert jobs["job_old_completed"]["result"] == {"old": True}
        for job_id in ("job_old_pending", "job_old_queued_lost", "job_old_processing_dead"):
            assert jobs[job_id]["status"] == "COMPLETED", cluster.describe(jobs[job_id])
        settled = {job_id: job for job_id, job in jobs.items() if job_id not in ("job_old_completed", "job_old_failed")}
        check_invariants(cluster, settled, recorder, gone_ok={"job_old_cancelled"})

    # And no route answers a 5xx (the route list is the running code's own)
    url_map = routes_of_this_code(cluster.redis_url, tmp_path)
    values = {"name": "chaos_sleep"}
    made = cluster.api.post("/tasks/chaos_sleep/batch", json=body_for("POST", "/tasks/chaos_sleep/batch"))
    if made.status_code == 202:
        values["batch_id"] = made.json()["batch_id"]
    made = cluster.api.post("/scheduled-jobs", json=body_for("POST", "/scheduled-jobs"))
    if made.status_code == 201 or made.status_code == 200:
        values["schedule_id"] = str(made.json().get("id") or made.json().get("schedule_id"))
    answers = []
    samples = ("job_old_completed", "job_old_failed", "job_old_cancelled", "job_old_queued_lost")
    for number, sample in enumerate(samples):
        for method, path, body in route_calls(url_map, {**values, "job_id": sample}):
            if number and sample not in path:
                continue  # the routes of no job are walked once
            headers = {"X-Internal-Token": TOKEN}
            response = cluster.api.request(method, path, json=body, headers=headers)
            answers.append((response.status_code, method, path))
    failing = [answer for answer in answers if answer[0] >= 500]
    assert not failing, f"routes answering 5xx on a migrated database: {failing}"
    assert {path for _, _, path in answers} >= {"/tasks", "/jobs", "/monitoring/health"}
    time.sleep(0.1)
    check_invariants(cluster, {}, None)
