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
