"""The database's clock on a real PostgreSQL: an API host whose own clock runs an hour ahead
still stamps, recovers and schedules retries by the database's time.

Why a real server: ``statement_timestamp()`` and the store's clock reads are PostgreSQL's; a host
clock monkeypatched an hour ahead is what each test sets against them.
"""

from __future__ import annotations

import time
from datetime import UTC, timedelta

from sqlalchemy import text

from tests.conftest import TOKEN
from tests.test_pg_concurrency import _pg_app


def test_updated_at_is_the_databases_time_whatever_this_hosts_clock_says(settings, postgres_url, monkeypatch):
    # Given an API host whose clock runs an hour ahead of the database's
    import backend.service.attempts
    import backend.service.cancels
    import backend.service.transitions
    import backend.store.models
    import backend.store.report_writes
    from backend.api.context import services
    from backend.store import clock

    app = _pg_app(settings, postgres_url)
    client = app.test_client()
    job_id = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    ahead = lambda: backend.store.models.datetime.now(backend.store.models.UTC) + timedelta(hours=1)  # noqa: E731
    for module in (backend.store.models, backend.store.report_writes, backend.service.transitions,
                   backend.service.attempts, backend.service.cancels):  # fmt: skip
        monkeypatch.setattr(module, "utcnow", ahead, raising=False)
    engine = services(app).engine
    headers = {"X-Internal-Token": TOKEN}

    def updated_at():
        with engine.connect() as connection:
            return connection.execute(text("SELECT updated_at FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()

    def off_by(stored) -> float:
        return abs((stored.replace(tzinfo=UTC) - clock.now(engine)).total_seconds())

    # When a worker's batch starts it, a progress report comes on its own, and a client cancels it
    started = {"job_id": job_id, "attempt": 1, "event": "started", "worker": "w"}
    assert client.post("/internal/reports", json={"reports": [started]}, headers=headers).status_code == 200
    after_start = updated_at()
    assert client.post(f"/internal/jobs/{job_id}/progress", json={"attempt": 1, "progress": 5},
                       headers=headers).status_code == 200  # fmt: skip
    after_progress = updated_at()
    manager = services(app).jobs
    job = manager.cancel_job(job_id, owner=None, by="test")

    # Then each write stored the database's time, not the host's (an hour off), and the job the
    # command returned carries the stored value
    assert off_by(after_start) < 60 and off_by(after_progress) < 60
    assert off_by(updated_at()) < 60
    assert job.updated_at == updated_at().replace(tzinfo=UTC)


def test_a_job_submitted_from_a_host_an_hour_ahead_is_stamped_with_the_databases_time_and_recovered(
    settings, postgres_url, monkeypatch
):
    # Given an API host whose clock runs an hour ahead of the database's, and a Redis that
    # refuses the enqueue after the job is recorded QUEUED (as if the API died in between)
    import backend.service.submissions
    import backend.service.transitions
    import backend.store.models
    from backend.api.context import services
    from backend.broker.errors import BrokerError
    from backend.store import clock

    settings["RECONCILE_GRACE"] = 0.5
    app = _pg_app(settings, postgres_url)
    client = app.test_client()
    ahead = lambda: backend.store.models.datetime.now(backend.store.models.UTC) + timedelta(hours=1)  # noqa: E731
    for module in (backend.store.models, backend.service.submissions, backend.service.transitions):
        monkeypatch.setattr(module, "utcnow", ahead, raising=False)
    queues = services(app).jobs.queues
    real_enqueue, refusing = queues.enqueue, [True]

    def enqueue(**kwargs):
        if refusing:
            raise BrokerError("Redis refused the enqueue (test)")
        return real_enqueue(**kwargs)

    def enqueue_many(attempts):  # a batch's jobs
        if refusing:
            raise BrokerError("Redis refused the enqueue (test)")
        return real_enqueue_many(attempts)

    real_enqueue_many = queues.enqueue_many
    monkeypatch.setattr(queues, "enqueue", enqueue)
    monkeypatch.setattr(queues, "enqueue_many", enqueue_many)
    engine = services(app).engine

    # When a client submits a job alone (Redis answered just before: it is recorded QUEUED) and a batch of three
    queues.queued_ids()
    job_id = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [i, i]} for i in range(3)]})
    assert batch.status_code in (201, 202), batch.get_json()
    refusing.clear()
    with engine.connect() as connection:
        stamps = connection.execute(text("SELECT id, created_at, updated_at FROM jobs")).all()
        status = connection.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()

    # Then every job's created_at and updated_at are the database's time (the host's is an hour
    # off), the batch's jobs share one stamp, and the lone job is QUEUED with no RQ job
    db_now = clock.now(engine)
    for _, created_at, updated_at in stamps:
        assert abs((created_at.replace(tzinfo=UTC) - db_now).total_seconds()) < 60
        assert updated_at == created_at
    assert len({created_at for id_, created_at, _ in stamps if id_ != job_id}) == 1
    assert status == "QUEUED"

    # And a reconciler pass (it compares updated_at with the database's clock) requeues it
    reconciler = services(app).reconciler
    deadline = time.monotonic() + 30
    requeued: list[str] = []
    while job_id not in requeued and time.monotonic() < deadline:
        report = reconciler.run_once()
        requeued += report.requeued if report is not None else []
        time.sleep(0.2)
    assert job_id in requeued
    job = client.get(f"/jobs/{job_id}").get_json()
    assert (job["attempt"], job["status"]) in ((2, "QUEUED"), (2, "PROCESSING"), (2, "COMPLETED"))


def test_a_retry_time_set_on_a_host_an_hour_ahead_is_the_databases_time_plus_the_backoff(
    settings, postgres_url, monkeypatch
):
    # Given an API host whose clock runs an hour ahead of the database's, a 30 s backoff, and a
    # job with a retry left
    import backend.service.attempts
    import backend.service.submissions
    import backend.service.transitions
    import backend.store.models
    from backend.api.context import services
    from backend.broker.queues import rq_job_id
    from backend.broker.rq_records import rq_status
    from backend.store import clock

    settings["RETRY_BACKOFF_BASE"] = 30.0
    app = _pg_app(settings, postgres_url)
    client = app.test_client()
    job_id = client.post("/tasks/add", json={"args": [1, 2], "max_retries": 1}).get_json()["job_id"]
    ahead = lambda: backend.store.models.datetime.now(backend.store.models.UTC) + timedelta(hours=1)  # noqa: E731
    for module in (backend.store.models, backend.service.attempts, backend.service.submissions,
                   backend.service.transitions):  # fmt: skip
        monkeypatch.setattr(module, "utcnow", ahead, raising=False)
    engine = services(app).engine

    # When its worker reports the first attempt failed
    failed = {"job_id": job_id, "attempt": 1, "event": "failed", "error": "boom"}
    answer = client.post("/internal/reports", json={"reports": [failed]}, headers={"X-Internal-Token": TOKEN})
    assert answer.get_json()["results"] == [{"status": 200}]

    # Then the retry is due 30 s after the database's time (not an hour later), and its RQ job
    # waits in RQ's scheduler for it (compared with the database's time, not sent at once)
    with engine.connect() as connection:
        retry_at = connection.execute(
            text("SELECT next_retry_at FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    ahead_by = (retry_at.replace(tzinfo=UTC) - clock.now(engine)).total_seconds()
    assert 0 < ahead_by <= 30
    rq_job = services(app).jobs.queues.fetch_many([rq_job_id(job_id, 2)])[rq_job_id(job_id, 2)]
    assert rq_job is not None and rq_status(rq_job) == "scheduled"
