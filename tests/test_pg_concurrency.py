"""Concurrency on a real PostgreSQL (READ COMMITTED): idempotency races, mixed load with report
batches naming the same jobs in opposite orders, the deadlock retry, and exact counts.

Why a real server: deadlocks, row locks and advisory locks are what these tests check, and only
PostgreSQL has them. Each test counts ``deadlock detected`` in the server's log before and after.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta

import pytest
from sqlalchemy import create_engine, text

from backend.app import create_app
from backend.store import conflicts, counts
from backend.store.engine import make_engine, make_session_factory, migrate, transaction
from tests.conftest import TOKEN


def _deadlocks(server) -> int:
    return server.log_path.read_text(errors="replace").count("deadlock detected")


def _pg_app(settings, postgres_url):
    settings["DATABASE_URL"] = postgres_url
    return create_app(settings)


def _group_by(url: str) -> dict[tuple[str, str], int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT task, status, COUNT(*) FROM jobs GROUP BY task, status"))
            return {(task, status): n for task, status, n in rows}
    finally:
        engine.dispose()


def _maintained(url: str) -> dict[tuple[str, str], int]:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return {(task, status): n for task, status, n in counts.by_task_and_status(session) if n}
    finally:
        engine.dispose()


def test_many_clients_racing_on_one_idempotency_key_all_get_the_one_job(settings, postgres_url, postgres_server):
    # Given two API instances on one PostgreSQL
    apps = [_pg_app(dict(settings), postgres_url), _pg_app(dict(settings), postgres_url)]
    before = _deadlocks(postgres_server)
    answers: list[tuple[int, str | None, str]] = []

    def submit(index: int, key: str, gate: threading.Barrier) -> None:
        client = apps[index % 2].test_client()
        gate.wait()
        response = client.post("/tasks/add", json={"args": [1, 2], "idempotency_key": key})
        answers.append((response.status_code, (response.get_json() or {}).get("job_id"), key))

    # When 12 clients submit the same key at the same instant, for 8 keys in turn
    clients = 12
    with ThreadPoolExecutor(clients) as pool:
        for round_number in range(8):
            gate = threading.Barrier(clients)
            list(pool.map(lambda i, k=f"key-{round_number}", g=gate: submit(i, k, g), range(clients)))

    # Then every client got the key's one job (202 for the one that recorded it, 200 for the others)
    assert sorted({status for status, _, _ in answers}) in ([200, 202], [202, 200]), answers
    for round_number in range(8):
        key = f"key-{round_number}"
        ids = {job_id for status, job_id, k in answers if k == key}
        assert len(ids) == 1 and None not in ids, (key, answers)
        assert sum(1 for status, _, k in answers if k == key and status == 202) == 1
    # And the store holds one job per key, counted once, with no deadlock in PostgreSQL's log
    assert _group_by(postgres_url) == {("add", "QUEUED"): 8}
    assert _maintained(postgres_url) == {("add", "QUEUED"): 8}
    assert _deadlocks(postgres_server) == before


def test_mixed_load_deadlocks_nothing_and_counts_stay_exact(settings, postgres_url, postgres_server):
    # Given jobs that report batches, submissions depending on them and cancels all name
    app = _pg_app(settings, postgres_url)
    client = app.test_client()
    jobs = [client.post("/tasks/add", json={"args": [i, i]}).get_json()["job_id"] for i in range(16)]
    before = _deadlocks(postgres_server)
    statuses: list[int] = []
    headers = {"X-Internal-Token": TOKEN}

    def report(worker: int) -> None:
        # Each batch names every job, forwards or backwards, so two batches lock the same rows
        # in opposite orders unless the store sorts them.
        c = app.test_client()
        for step in range(15):
            order = jobs if (worker + step) % 2 else list(reversed(jobs))
            events = [{"job_id": j, "attempt": 1, "event": "started", "worker": f"w{worker}"} for j in order]
            events += [
                {"job_id": j, "attempt": 1, "event": "progress", "progress": step, "message": f"w{worker}"}
                for j in order
            ]
            response = c.post("/internal/reports", json={"reports": events}, headers=headers)
            statuses.append(response.status_code)
            statuses.extend(r["status"] for r in (response.get_json() or {}).get("results", []) if r["status"] >= 500)

    def submit(worker: int) -> None:
        c = app.test_client()
        rng = random.Random(worker)
        for step in range(15):
            parents = rng.sample(jobs, 4)
            body = {"args": [1, 2], "depends_on": parents, "allow_failure": True,
                    "idempotency_key": f"k{step % 5}"}  # fmt: skip
            statuses.append(c.post("/tasks/add", json=body).status_code)

    def cancel(worker: int) -> None:
        c = app.test_client()
        for job_id in jobs[worker::4][:2]:
            statuses.append(c.post(f"/jobs/{job_id}/cancel", json={}).status_code)

    # When they all run at once
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(report, w) for w in range(4)]
        futures += [pool.submit(submit, w) for w in range(4)]
        futures += [pool.submit(cancel, w) for w in range(2)]
        for future in futures:
            future.result()

    # Then no request failed, the counts equal a GROUP BY, and PostgreSQL saw no deadlock
    assert [s for s in statuses if s >= 500] == []
    assert _maintained(postgres_url) == _group_by(postgres_url)
    assert _deadlocks(postgres_server) == before


def test_the_retry_helper_reruns_work_that_a_real_deadlock_aborted(postgres_url):
    # Given two rows and two transactions that lock them in opposite orders
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE pair (id int PRIMARY KEY, n int)"))
        connection.execute(text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
    sessions = make_session_factory(engine)
    gate = threading.Barrier(2)
    runs: list[str] = []

    def work(first: int, second: int):
        def body(session) -> None:
            runs.append(f"{first}{second}")
            session.execute(text("UPDATE pair SET n = n + 1 WHERE id = :id"), {"id": first})
            if len(runs) <= 2:
                gate.wait()  # both hold their first row before taking the second
            session.execute(text("UPDATE pair SET n = n + 1 WHERE id = :id"), {"id": second})

        return conflicts.retried(sessions, body)

    # When both run at once
    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(work, 1, 2), pool.submit(work, 2, 1)]
        for result in results:
            result.result()

    # Then PostgreSQL aborted one of them (a deadlock), which ran again and succeeded: each
    # row was written once by each transaction, and three runs were made
    with engine.connect() as connection:
        assert dict(connection.execute(text("SELECT id, n FROM pair")).all()) == {1: 2, 2: 2}
    # (at least three: a rerun may wait past the lock timeout behind the other transaction on a
    # loaded machine and run once more; the rows show each transaction applied once all the same)
    assert len(runs) >= 3, runs
    engine.dispose()


@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_the_roll_up_is_exact_under_concurrent_writers_and_rollers(store, request, tmp_path):
    # Given a store at head
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    moves = [(None, "PENDING"), ("PENDING", "QUEUED"), ("QUEUED", "PROCESSING"), ("PROCESSING", "COMPLETED")]
    stop = threading.Event()
    rolled: list[int] = []

    def writer(worker: int) -> None:
        for _ in range(60):
            with transaction(sessions) as session:
                for old, new in moves:
                    counts.bump(session, f"t{worker % 3}", old=old, new=new)

    def roller() -> None:
        while not stop.is_set():
            rolled.append(counts.roll_up(sessions, limit=50))
            time.sleep(0.001)

    # When six writers move jobs while three rollers fold the deltas, a few rows at a time
    with ThreadPoolExecutor(9) as pool:
        rollers = [pool.submit(roller) for _ in range(3)]
        for future in [pool.submit(writer, w) for w in range(6)]:
            future.result()
        stop.set()
        for future in rollers:
            future.result()

    # Then the readers are exact before the last roll-up and after it, when no delta is left
    expected = {(f"t{t}", s): n for t in range(3) for s, n in [("COMPLETED", 120), ("PENDING", 0),
                                                                ("QUEUED", 0), ("PROCESSING", 0)]}  # fmt: skip
    with sessions() as session:
        assert {(t, s): n for t, s, n in counts.by_task_and_status(session)} == expected
    assert sum(rolled) > 0
    while counts.roll_up(sessions):
        pass
    with sessions() as session:
        assert {(t, s): n for t, s, n in counts.by_task_and_status(session)} == expected
        assert counts.by_status(session) == {"COMPLETED": 360, "PENDING": 0, "QUEUED": 0, "PROCESSING": 0}
        assert session.execute(text("SELECT COUNT(*) FROM job_count_deltas")).scalar_one() == 0
    engine.dispose()


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


def test_a_conflict_that_persists_ends_as_store_unavailable_and_other_errors_are_not_rerun(postgres_url):
    # Given work that PostgreSQL aborts with a deadlock's SQLSTATE every time, and work that fails otherwise
    from backend.store.errors import StoreUnavailable

    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    runs = {"deadlock": 0, "other": 0}

    def always_deadlocked(session) -> None:
        runs["deadlock"] += 1
        session.execute(text("DO $$ BEGIN RAISE EXCEPTION 'stand-in' USING ERRCODE = '40P01'; END $$"))

    def divides_by_zero(session) -> None:
        runs["other"] += 1
        session.execute(text("SELECT 1 / 0"))

    # When each runs through the retry helper
    with pytest.raises(StoreUnavailable) as raised:
        conflicts.retried(sessions, always_deadlocked)
    with pytest.raises(Exception) as other:
        conflicts.retried(sessions, divides_by_zero)

    # Then the deadlock was run TRIES times and raised as StoreUnavailable (the API's 503 with
    # Retry-After); the other error was raised on its first run
    assert runs == {"deadlock": conflicts.TRIES, "other": 1}
    assert conflicts.is_conflict(raised.value)
    assert not conflicts.is_conflict(other.value)
    engine.dispose()


def test_the_reconciler_pass_rolls_the_deltas_up(app, client):
    # Given jobs submitted and one cancelled (each move appended a delta), on the suite's store
    from backend.api.context import services

    ids = [client.post("/tasks/add", json={"args": [i, i]}).get_json()["job_id"] for i in range(3)]
    assert client.post(f"/jobs/{ids[0]}/cancel", json={}).status_code == 200
    sessions = services(app).sessions
    with sessions() as session:
        assert session.execute(text("SELECT COUNT(*) FROM job_count_deltas")).scalar_one() > 0
        before = counts.by_status(session)

    # When a reconciler pass runs
    services(app).reconciler.run_once()

    # Then no delta is left and the counts read the same
    with sessions() as session:
        assert session.execute(text("SELECT COUNT(*) FROM job_count_deltas")).scalar_one() == 0
        assert {s: n for s, n in counts.by_status(session).items() if n} == {"QUEUED": 2, "CANCELLED": 1}
        assert counts.by_status(session) == before


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

    monkeypatch.setattr(queues, "enqueue", enqueue)
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
    from backend.broker.queues import rq_job_id, rq_status
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
