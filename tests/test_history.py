"""The service's own history (GET /monitoring/history) and the workers panel's data (GET /monitoring/queue/workers)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq import Worker
from sqlalchemy import select

from backend.api.context import services
from backend.app import create_app
from backend.service import history
from backend.store import clock
from backend.store import history as history_store
from backend.store.engine import transaction
from backend.store.history import BUCKETS, RUN_MS_BOUNDS, TOTAL
from backend.store.models import Job, JobMinute, QueueMinute

ADMIN = {"Authorization": "Bearer ko"}


@pytest.fixture
def settings(settings):
    # The tests run the housekeeping pass themselves, at the moment they choose.
    settings["HOUSEKEEPING_INTERVAL"] = 0
    return settings


def _minute_rows(app) -> dict:
    with services(app).sessions() as session:
        rows = session.execute(select(JobMinute.minute, JobMinute.task, JobMinute.completed, JobMinute.failed))
        return {(minute, task): (completed, failed) for minute, task, completed, failed in rows}


def test_history_shows_ended_jobs_in_their_minute_with_run_times(app, client, run_burst_worker, redis_conn):
    # Given jobs a real worker completed (about 200 ms each) and failed
    for _ in range(3):
        assert client.post("/tasks/sleep", json={"kwargs": {"seconds": 0.2, "steps": 1}}).status_code == 202
    for _ in range(2):
        assert client.post("/tasks/fail", json={"max_retries": 0}).status_code == 202
    run_burst_worker()
    # ...that ended three minutes ago (moved back whole, their run times kept), so that their
    # minute is over; and two jobs waiting in the low queue with no worker
    back = timedelta(minutes=3)
    with services(app).sessions() as session:
        for job in session.scalars(select(Job)):
            job.started_at, job.completed_at = job.started_at - back, job.completed_at - back
        session.commit()
        ended = session.execute(select(Job.status, Job.completed_at)).all()
    assert sorted(status for status, _ in ended) == ["COMPLETED"] * 3 + ["FAILED"] * 2
    for _ in range(2):
        client.post("/tasks/add", json={"args": [1, 2], "priority": "low"})

    # When the housekeeping pass runs (with no time budget: a loaded machine would leave minutes
    # of the first hour to the next pass)
    dict(services(app).housekeeping.steps)["history.roll_up"].__self__.budget_seconds = float("inf")
    done = services(app).housekeeping.run_once()
    assert done["history.roll_up"] == history.CATCH_UP_MINUTES  # a new history starts an hour back
    assert done["history.sample_queues"] == {"high": 0, "default": 0, "low": 2}

    # Then the hour's chart counts each job in the minute it ended
    answer = client.get("/monitoring/history?window=hour")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["window"] == "hour" and body["step_seconds"] == 60 and len(body["points"]) == 60
    expected: dict[str, list[int]] = {}
    for status, completed_at in ended:
        at = history.floor_minute(completed_at).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        expected.setdefault(at, [0, 0])[0 if status == "COMPLETED" else 1] += 1
    shown = {p["at"]: [p["completed"], p["failed"]] for p in body["points"] if p["completed"] or p["failed"]}
    assert shown == expected
    # with the run times of each task (p50 and p95 of ~200 ms runs: in the 200-500 ms bucket at most)
    tasks = {t["task"]: t for t in body["tasks"]}
    assert set(tasks) == {"sleep", "fail"}
    assert (tasks["sleep"]["completed"], tasks["sleep"]["failed"]) == (3, 0)
    assert 100 <= tasks["sleep"]["p50_ms"] <= tasks["sleep"]["p95_ms"] <= 500
    assert tasks["fail"] == {"task": "fail", "completed": 0, "failed": 2, "p50_ms": None, "p95_ms": None}
    # and the queues' depth as sampled
    assert body["queues"]["low"][-1]["depth"] == 2 and body["queues"]["high"][-1]["depth"] == 0

    # And the day's chart has the same jobs in 15-minute steps, and the same tasks
    day = client.get("/monitoring/history?window=day").get_json()
    assert day["step_seconds"] == 900 and len(day["points"]) == 96
    assert sum(p["completed"] for p in day["points"]) == 3 and sum(p["failed"] for p in day["points"]) == 2
    assert {t["task"]: (t["completed"], t["failed"]) for t in day["tasks"]} == {"sleep": (3, 0), "fail": (0, 2)}
    assert day["queues"]["low"][-1]["depth"] == 2

    # And a pass a minute later rolls the minutes before again to the same rows
    rows = _minute_rows(app)
    later = clock.store_now(services(app).sessions) + timedelta(minutes=1)
    assert history.History(services(app).sessions, services(app).queues, days=7).roll_up(now=later) >= 1
    again = _minute_rows(app)
    assert {key: value for key, value in again.items() if key in rows} == rows


def test_history_older_than_its_days_is_pruned(app):
    # Given history rows of 8 days ago and of an hour ago (HISTORY_DAYS is 7)
    now = clock.store_now(services(app).sessions)
    old, recent = history.floor_minute(now - timedelta(days=8)), history.floor_minute(now - timedelta(hours=1))
    with services(app).sessions() as session:
        for minute in (old, recent):
            session.add(JobMinute(minute=minute, task=TOTAL, completed=1, failed=0, run_ms=[0] * BUCKETS))
            session.add(QueueMinute(minute=minute, queue="default", depth=3))
        session.commit()

    # When the housekeeping pass runs
    done = services(app).housekeeping.run_once()

    # Then the old rows are gone, the recent ones kept
    assert done["history.prune"] == 2
    with services(app).sessions() as session:
        minutes = set(session.scalars(select(JobMinute.minute)))
        assert recent in minutes and min(minutes) > old
        samples = session.execute(select(QueueMinute.minute, QueueMinute.queue)).all()
        assert (recent, "default") in samples and min(minute for minute, _ in samples) == recent


def test_a_pass_past_its_time_budget_leaves_the_rest_to_the_next(app):
    # Given a history keeper with no time to spend, on a store with no history yet
    keeper = history.History(services(app).sessions, services(app).queues, days=7, budget_seconds=0)
    now = clock.store_now(services(app).sessions)

    # When it makes two passes
    first, second = keeper.roll_up(now=now), keeper.roll_up(now=now)

    # Then each rolled one new minute (the second also the one before, again), oldest first,
    # instead of the 60 minutes a new history starts with
    assert (first, second) == (1, history.REROLL_MINUTES + 1)
    with services(app).sessions() as session:
        minutes = session.scalars(select(JobMinute.minute).where(JobMinute.task == TOTAL).order_by(JobMinute.minute))
        start = history.floor_minute(now - history.GRACE) - history.CATCH_UP_MINUTES * history.MINUTE
        # (the second pass rolled again the minute before the first's: REROLL_MINUTES back)
        assert list(minutes) == [start - history.MINUTE, start, start + history.MINUTE]


@pytest.mark.one_pass("who may read the history and its parameters' checks do not depend on the store")
def test_history_is_for_admins_and_checks_its_window(settings):
    settings["API_KEYS"] = "alice:ka,ops:ko:admin"
    client = create_app(settings).test_client()
    assert client.get("/monitoring/history").status_code == 401
    assert client.get("/monitoring/history", headers={"Authorization": "Bearer ka"}).status_code == 403
    for query in ("window=week", "window=", "since=1"):
        answer = client.get(f"/monitoring/history?{query}", headers=ADMIN)
        assert answer.status_code == 422 and "error" in answer.get_json(), query
    body = client.get("/monitoring/history", headers=ADMIN).get_json()
    assert body["window"] == "hour" and body["tasks"] == [] and body["rolled_until"] is None
    assert [p["completed"] for p in body["points"]] == [0] * 60


@pytest.mark.one_pass("bucket arithmetic: no store")
def test_percentiles_interpolate_within_their_bucket_and_busy_minutes_fold_other_tasks():
    counts = [0] * BUCKETS
    counts[RUN_MS_BOUNDS.index(200)] = 10  # ten runs in (100, 200] ms
    assert history.percentile(counts, 0.5) == 150.0 and history.percentile(counts, 1.0) == 200.0
    counts[-1] = 10  # ten more above the last bound: the p95 answers that bound
    assert history.percentile(counts, 0.95) == float(RUN_MS_BOUNDS[-1])
    assert history.percentile([0] * BUCKETS, 0.5) is None

    tasks = {f"t{i:03}": [i, 0, [0] * BUCKETS] for i in range(1, 206)}
    folded = history.fold(tasks)
    assert len(folded) == history.MAX_TASKS and "t205" in folded and "t006" not in folded
    # the six least busy (1 + ... + 6 jobs) are summed into one row
    assert folded[history.OTHER_TASKS][0] == 21
    assert history.total(folded)[0] == history.total(tasks)[0]


@pytest.mark.one_pass("worker records live in Redis; the store is not read")
def test_workers_show_the_store_job_they_run_and_the_jobs_they_did(client, start_worker, redis_conn):
    # Given a live worker, and a worker record whose worker is gone (no lease)
    Worker(["default"], connection=redis_conn, name="ghost").register_birth()
    start_worker("--name", "busy", "--simple")
    job = client.post("/tasks/sleep", json={"kwargs": {"seconds": 1.5, "steps": 3}}).get_json()

    # When the workers are listed while it runs the job, then after
    def workers() -> dict:
        answer = client.get("/monitoring/queue/workers")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return {w["name"]: w for w in answer.get_json()["workers"]}

    deadline = time.monotonic() + 20
    while workers().get("busy", {}).get("current_job") is None:
        assert time.monotonic() < deadline, workers()
        time.sleep(0.05)
    running = workers()
    rq_job_id = client.get(f"/jobs/{job['job_id']}").get_json()["rq_job_id"]
    while (
        client.get(f"/jobs/{job['job_id']}").get_json()["status"] != "COMPLETED"
        or workers()["busy"]["current_job"]
        or not workers()["busy"]["jobs_done"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = workers()

    # Then the running job is named by the store's id (RQ's apart), the worker alive, the ghost not
    busy = running["busy"]
    assert (busy["current_job"], busy["current_rq_job_id"]) == (job["job_id"], rq_job_id)
    assert busy["alive"] is True and busy["state"] == "busy" and busy["queues"] == ["high", "default", "low"]
    assert busy["last_heartbeat"].endswith("Z") and busy["jobs_done"] == 0
    assert running["ghost"]["alive"] is False and running["ghost"]["current_job"] is None
    # and once done, the job counts among the jobs it did
    assert after["busy"]["jobs_done"] == after["busy"]["successful_jobs"] == 1 and after["busy"]["failed_jobs"] == 0


@pytest.mark.one_pass("Redis round trips: the store is not read")
def test_listing_workers_costs_the_same_round_trips_for_one_worker_or_thirty(app, client, redis_conn, monkeypatch):
    pool = services(app).redis.connection_pool
    taken = []
    get_connection = pool.get_connection

    def counted(*args, **kwargs):
        taken.append(1)
        return get_connection(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counted)

    def round_trips() -> int:
        taken.clear()
        answer = client.get("/monitoring/queue/workers")
        assert answer.status_code == 200
        return len(taken), len(answer.get_json()["workers"])

    Worker(["default"], connection=redis_conn, name="w-00").register_birth()
    one = round_trips()
    for index in range(1, 30):
        Worker(["default"], connection=redis_conn, name=f"w-{index:02}").register_birth()
    thirty = round_trips()
    assert one[1] == 1 and thirty[1] == 30
    assert thirty[0] == one[0] <= 3


@pytest.mark.one_pass("worker records live in Redis; the store is not read")
def test_one_odd_worker_record_does_not_take_the_workers_list_down(client, redis_conn):
    # Given RQ's set of workers naming a key that is not a hash (another client's, or a stale
    # record), a worker whose executions key is not a set, and a sound worker
    Worker(["default"], connection=redis_conn, name="sound").register_birth()
    redis_conn.sadd("rq:workers", "rq:worker:odd", "rq:worker:odd2")
    redis_conn.set("rq:worker:odd", "not a hash")
    redis_conn.hset("rq:worker:odd2", mapping={"state": "idle"})
    redis_conn.set("rq:worker:odd2:executions", "not a set")

    # When an admin lists the workers
    answer = client.get("/monitoring/queue/workers")

    # Then Redis (which is up) is not said unreachable: the sound worker is listed, the odd ones left out
    assert answer.status_code == 200, answer.get_json()
    assert [worker["name"] for worker in answer.get_json()["workers"]] == ["sound"]


def _ended_at(app, job_id: str, at) -> None:
    with transaction(services(app).sessions) as session:
        session.execute(
            Job.__table__.update()
            .where(Job.id == job_id)
            .values(status="COMPLETED", started_at=at + timedelta(seconds=1), completed_at=at + timedelta(seconds=2))
        )


def test_a_rolled_minute_keeps_its_count_when_its_jobs_are_pruned_before_it_is_rolled_again(app, client):
    from tests.test_retention import ended, retention

    # Given a job that completed in the last full minute, counted by a roll-up
    sessions = services(app).sessions
    job_id = ended(client, "COMPLETED")
    now = clock.store_now(sessions)
    last = history.floor_minute(now - history.GRACE) - history.MINUTE
    _ended_at(app, job_id, last)
    keeper = history.History(sessions, services(app).queues, days=7, budget_seconds=float("inf"))
    keeper.roll_up(now=now)

    def shown() -> int:
        return sum(point["completed"] for point in client.get("/monitoring/history?window=hour").get_json()["points"])

    assert shown() == 1
    # When a short retention (RETENTION_COMPLETED=1m is allowed) prunes it, and the next pass rolls that minute again
    assert retention(app).prune(["COMPLETED"], older_than=60) == {"COMPLETED": 1}
    assert keeper.roll_up(now=now + history.MINUTE) == history.REROLL_MINUTES + 1

    # Then the chart still shows the job that completed, and its task's run time
    assert shown() == 1
    tasks = client.get("/monitoring/history?window=hour").get_json()["tasks"]
    assert [(t["task"], t["completed"]) for t in tasks] == [("add", 1)] and tasks[0]["p50_ms"] is not None


def _fill(app, first, minutes: int, tasks: int, *, completed: int = 10) -> list[int]:
    """History rows for ``minutes`` minutes from ``first``: a total and ``tasks`` task rows each."""
    run_ms = [0] * BUCKETS
    run_ms[RUN_MS_BOUNDS.index(200)] = completed
    rows = []
    for index in range(minutes):
        minute = first + index * history.MINUTE
        rows.append({"minute": minute, "task": TOTAL, "completed": completed * tasks, "failed": 1, "run_ms": run_ms})
        rows.extend(
            {"minute": minute, "task": f"t{task}", "completed": completed, "failed": 0, "run_ms": run_ms}
            for task in range(tasks)
        )
    with transaction(services(app).sessions) as session:
        session.execute(JobMinute.__table__.insert(), rows)
    return run_ms


def test_the_day_chart_reads_the_store_for_its_newest_quarters_only_once_it_was_read(app, client, monkeypatch):
    # Given a day of history of three tasks (a busy store has 200 of them: 289,440 rows a day,
    # which the day chart read and summed in Python on every refresh, seconds on an API thread)
    # (from 20 minutes into the window: its first quarter has no rows)
    sessions = services(app).sessions
    now = clock.store_now(sessions)
    first = (
        history._floor(history.floor_minute(now), 900) + timedelta(minutes=15) - timedelta(days=1) + 20 * history.MINUTE
    )
    minutes = int((history.floor_minute(now) - first) / history.MINUTE)
    _fill(app, first, minutes=minutes, tasks=3)
    read = []  # the spans of history the store was asked for, whichever way it is read

    def spying(name):
        real = getattr(history_store, name)

        def spy(session, start, end, *rest):
            read.append(end - start)
            return real(session, start, end, *rest)

        return spy

    for name in ("task_minutes", "task_sums"):  # before and after the fix
        if hasattr(history_store, name):
            monkeypatch.setattr(history_store, name, spying(name))

    def day() -> dict:
        answer = client.get("/monitoring/history?window=day")
        assert answer.status_code == 200
        return {t["task"]: (t["completed"], t["failed"], t["p50_ms"]) for t in answer.get_json()["tasks"]}

    # When the dashboard reads the day chart, then again on its next refresh
    whole = day()
    read.clear()
    again = day()

    # Then both answers count every task row of the day, and the second asked the store only for
    # the quarters still under way (at most two of 15 minutes)
    assert whole == again == {f"t{task}": (10 * minutes, 0, 150.0) for task in range(3)}
    assert sum(read, timedelta()) <= timedelta(minutes=30), read
    # And a minute rolled since is in the next answer: the quarter under way is never kept
    _fill(app, history.floor_minute(now), minutes=1, tasks=1, completed=5)
    assert day()["t0"][0] == 10 * minutes + 5


def test_history_prune_deletes_a_bounded_range_of_minutes_per_transaction_oldest_first(app):
    # Given an hour of history rows three days old, past HISTORY_DAYS (lowered from 7 to 1)
    sessions = services(app).sessions
    now = clock.store_now(sessions)
    first = history.floor_minute(now) - timedelta(days=3)
    _fill(app, first, minutes=60, tasks=4)

    # When a pass with no time left prunes, then one with time
    hurried = history.History(sessions, services(app).queues, days=1, budget_seconds=0).prune(now=now)
    with sessions() as session:
        oldest = session.scalar(select(JobMinute.minute).order_by(JobMinute.minute).limit(1))
    rest = history.History(sessions, services(app).queues, days=1, budget_seconds=float("inf")).prune(now=now)

    # Then the first deleted the oldest PRUNE_MINUTES minutes in one short transaction, not all at
    # once (on SQLite, every submission waits for a transaction's write lock), the second the rest
    assert hurried == history.PRUNE_MINUTES * 5
    assert oldest == first + history.PRUNE_MINUTES * history.MINUTE
    assert rest == (60 - history.PRUNE_MINUTES) * 5
    with sessions() as session:
        assert session.scalar(select(JobMinute.minute).limit(1)) is None
