"""Readers of the job counts see exactly the jobs, at every instant, while rolls-ups and writers run.

``counts.by_task_and_status`` adds the deltas not yet folded to the rolled-up counts in one
statement; a roll-up committing meanwhile moves rows from one side to the other. Each read here
is made in one REPEATABLE READ transaction with a GROUP BY of the jobs, so both see one snapshot
and must agree exactly, whatever the writers and rollers were doing at that moment; and as the
API reads them (READ COMMITTED), the total lies between the job counts just before and after.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from backend.app import create_app
from backend.store import counts
from backend.store.engine import make_engine, make_session_factory

_GROUP_BY = text("SELECT task, status, COUNT(*) FROM jobs GROUP BY task, status")
_JOBS = text("SELECT COUNT(*) FROM jobs")
_STATE = text("SELECT (SELECT COUNT(*) FROM job_count_deltas), (SELECT COUNT(*) FROM job_counts WHERE count <> 0)")


def test_on_postgresql_counts_read_during_roll_ups_and_writes_equal_a_group_by_of_the_jobs(settings, postgres_url):
    # Given an API on PostgreSQL, submitting and cancelling jobs
    settings["DATABASE_URL"] = postgres_url
    app = create_app(settings)
    engine = make_engine(postgres_url)
    snapshot = make_session_factory(engine.execution_options(isolation_level="REPEATABLE READ"))
    rollers = make_session_factory(engine)
    writing = threading.Event()
    writing.set()
    reads: list[tuple[dict, dict, int, int]] = []
    statuses: list[int] = []
    totals: list[tuple[int, int, int]] = []

    def write(worker: int) -> None:
        client = app.test_client()
        for i in range(25):
            job = client.post("/tasks/add", json={"args": [worker, i]})
            statuses.append(job.status_code)
            if i % 3 == 0:
                statuses.append(client.post(f"/jobs/{job.get_json()['job_id']}/cancel", json={}).status_code)

    def roll() -> None:
        while writing.is_set():
            counts.roll_up(rollers, limit=7, chunk=3)
            time.sleep(0.002)

    def read() -> None:
        while writing.is_set():
            with snapshot() as session:  # one transaction: one snapshot for all three reads
                seen = {(t, s): n for t, s, n in counts.by_task_and_status(session) if n}
                truth = {(t, s): n for t, s, n in session.execute(_GROUP_BY)}
                deltas, folded = session.execute(_STATE).one()
            reads.append((seen, truth, deltas, folded))
            # As the API reads them (READ COMMITTED, a snapshot per statement): jobs are only
            # added, and a status change keeps their total, so the total read lies between the
            # number of jobs just before and just after.
            with rollers() as session:
                before = session.execute(_JOBS).scalar_one()
                total = sum(n for _, _, n in counts.by_task_and_status(session))
                after = session.execute(_JOBS).scalar_one()
            totals.append((before, total, after))

    # When readers read the counts throughout, while writers submit and cancel and rollers fold
    with ThreadPoolExecutor(7) as pool:
        background = [pool.submit(roll) for _ in range(2)] + [pool.submit(read) for _ in range(2)]
        for future in [pool.submit(write, w) for w in range(3)]:
            future.result()
        writing.clear()
        for future in background:
            future.result()

    # Then every read equalled the jobs it saw, including reads made half-way through a roll-up's
    # work (some deltas folded, others not)
    assert [s for s in statuses if s >= 500] == []
    wrong = [(seen, truth) for seen, truth, _, _ in reads if seen != truth]
    assert wrong == [], wrong[:3]
    assert [t for t in totals if not t[0] <= t[1] <= t[2]] == []
    assert any(deltas and folded for _, _, deltas, folded in reads), "no read saw counts both folded and not"
    engine.dispose()
