"""One reconciler leads at a time, across hosts and through a Redis failover; quiet is measured
by the store's clock.

On PostgreSQL the leader holds an advisory lock in the store for its pass; on SQLite (one host)
a Redis lock renewed during the pass. Two ``Reconciler`` objects on one store stand for two API
hosts; a pass is made long by a lost job, which the reconciler looks at twice, seconds apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from itertools import pairwise

import pytest
from rq.job import Job as RQJob
from sqlalchemy import text, update

from backend.api.context import services
from backend.recovery import maintenance
from backend.recovery.reconciler import LOCK_KEY, Reconciler
from backend.store import clock
from backend.store.leadership import RECONCILER_KEY
from backend.store.models import Job

CONFIRM_SECONDS = 2.0


@pytest.fixture
def on_postgresql(settings, postgres_url):
    """The app's store on a fresh PostgreSQL database (the ``app`` fixture then uses it)."""
    settings["DATABASE_URL"] = postgres_url
    return settings


class Observed(Reconciler):
    """A reconciler whose passes a test can see: ``looking`` is set while it looks twice, and
    each pass's (start, end) on this process's monotonic clock goes into ``windows``."""

    def __init__(self, app, windows: list[tuple[float, float]], *, confirm_delay: float = CONFIRM_SECONDS):
        s = services(app)
        super().__init__(s.jobs, s.sessions, s.queues, lease_seconds=1.0, grace_seconds=0, confirm_delay=confirm_delay)
        self.windows = windows
        self.led: list[tuple[float, float]] = []  # this one's passes only
        self.looking = threading.Event()
        self.report = None

    def confirmed(self, jobs, **options):
        self.looking.set()
        return super().confirmed(jobs, **options)

    def _pass(self, *args):
        started = time.monotonic()
        try:
            return super()._pass(*args)
        finally:
            window = (started, time.monotonic())
            self.led.append(window)
            self.windows.append(window)

    def run_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: setattr(self, "report", self.run_once()), daemon=True)
        thread.start()
        assert self.looking.wait(20), "the pass never began looking at the lost job"
        return thread


def lose_a_queued_job(app, client, redis_conn) -> dict:
    """A job recorded QUEUED whose RQ job is gone, quiet for 5 s by the store's clock."""
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    redis_conn.delete(RQJob.key_for(job["rq_job_id"]))
    quiet_for(app, job["job_id"], seconds=5)
    return job


def quiet_for(app, job_id: str, *, seconds: float) -> None:
    """Make a job last changed ``seconds`` ago by the store's clock."""
    with services(app).sessions() as session:
        then = clock.now(session) - timedelta(seconds=seconds)
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=then))
        session.commit()


def overlapping(windows: list[tuple[float, float]]) -> bool:
    ordered = sorted(windows)
    return any(later[0] < earlier[1] for earlier, later in pairwise(ordered))


def test_on_postgresql_a_redis_failover_that_loses_the_lock_key_makes_no_second_leader(
    on_postgresql, app, client, redis_conn
):
    # Given two API hosts' reconcilers on one PostgreSQL, the first in a pass
    job = lose_a_queued_job(app, client, redis_conn)
    windows: list[tuple[float, float]] = []
    first, second = Observed(app, windows), Observed(app, windows)
    thread = first.run_in_thread()

    # When Redis loses every key of the lock (a failover to a replica that never had it), again
    # and again while the second host tries to lead
    refused = 0
    # Until the first's pass has ended (its thread still lets go of the lead after that, and a
    # pass the second then runs is no second leader: a slow CI machine saw one 11 ms later)
    while thread.is_alive() and not windows:
        redis_conn.delete(LOCK_KEY)
        if second.run_once() is None:
            refused += 1
        time.sleep(0.1)
    thread.join()

    # Then the second never led while the first did: the first's one pass settled the job, and a
    # pass of the second (the loop's last try can come just after the first let go) began after it
    assert refused > 0 and windows and not overlapping(windows)
    assert len(first.led) == 1, windows
    assert all(started >= first.led[0][1] for started, _ in second.led), windows
    assert first.report.requeued == [job["job_id"]]
    # and once the first's pass ended, the second leads
    assert second.run_once() is not None
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 2


def test_on_postgresql_killing_the_leaders_connection_frees_leadership(on_postgresql, app, client, redis_conn):
    # Given a reconciler leading a pass on PostgreSQL
    job = lose_a_queued_job(app, client, redis_conn)
    windows: list[tuple[float, float]] = []
    first, second = Observed(app, windows), Observed(app, windows)
    thread = first.run_in_thread()
    assert second.run_once() is None

    # When its connection to the store is killed (its host hangs, a network cut, an operator)
    with services(app).engine.begin() as connection:
        killed = connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND classid = :high AND objid = :low"
            ),
            {"high": RECONCILER_KEY >> 32, "low": RECONCILER_KEY & 0xFFFFFFFF},
        ).all()
    assert killed == [(True,)]

    # Then another leads within moments, and settles the job; the first, seeing it no longer leads,
    # changes nothing
    report = second.run_once()
    deadline = time.monotonic() + 5
    while report is None and time.monotonic() < deadline:
        # under load, the killed backend may take a moment more to leave PostgreSQL's lock table
        time.sleep(0.1)
        report = second.run_once()
    thread.join()
    assert report is not None and report.requeued == [job["job_id"]]
    assert first.report is not None and not first.report, first.report.as_dict()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 2


@pytest.mark.sqlite_only(reason="the Redis lock leads on SQLite only")
def test_on_sqlite_a_pass_longer_than_the_lock_ttl_keeps_the_lock(app, client, redis_conn, monkeypatch):
    # Given a Redis lock of 1 s and a pass that lasts longer (it looks twice, 2 s apart)
    monkeypatch.setattr("backend.recovery.reconciler.LOCK_SECONDS", 1)
    job = lose_a_queued_job(app, client, redis_conn)
    windows: list[tuple[float, float]] = []
    first, second = Observed(app, windows), Observed(app, windows)
    thread = first.run_in_thread()

    # When a second reconciler tries to lead throughout the pass
    tries = []
    while thread.is_alive() and not windows:  # until the first's pass ended (as above)
        tries.append(second.run_once())
        time.sleep(0.1)
    thread.join()

    # Then it never does: the lock was renewed until the pass ended
    assert len(tries) > 10 and set(tries) == {None}
    assert len(windows) == 1 and first.report.requeued == [job["job_id"]]


@pytest.mark.sqlite_only(reason="the Redis lock leads on SQLite only")
def test_on_sqlite_a_leader_whose_redis_lock_was_lost_stops_acting(app, client, redis_conn):
    # Given a reconciler in a pass on SQLite, looking at a lost job (and another that will
    # look for longer, so that the first is the one to act, if it acts)
    job = lose_a_queued_job(app, client, redis_conn)
    windows: list[tuple[float, float]] = []
    first, second = Observed(app, windows), Observed(app, windows, confirm_delay=CONFIRM_SECONDS + 1)
    thread = first.run_in_thread()

    # When Redis loses its lock and another reconciler takes the lead
    redis_conn.delete(LOCK_KEY)
    report = second.run_once()
    thread.join()

    # Then the new leader settles the job, and the old one, seeing the lock lost, changes nothing
    assert report.requeued == [job["job_id"]]
    assert first.report is not None and not first.report, first.report and first.report.as_dict()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 2


# -- the store's clock ---------------------------------------------------------------------


def host_clock_behind(monkeypatch, hours: float) -> None:
    """This process's wall clock ``hours`` behind the database's, wherever it reads utcnow."""
    from backend.store import models

    real = models.utcnow

    def skewed():
        return real() - timedelta(hours=hours)

    for name, module in list(sys.modules.items()):
        if name.startswith("backend.") and getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", skewed)


def test_on_postgresql_a_host_whose_clock_is_behind_still_reconciles_a_quiet_job(
    on_postgresql, app, client, redis_conn, monkeypatch
):
    # Given a lost job, quiet for 5 s by the store's clock, and a host whose clock is an hour behind
    job = lose_a_queued_job(app, client, redis_conn)
    host_clock_behind(monkeypatch, hours=1)

    # When its reconciler passes
    report = services(app).reconciler.run_once()

    # Then the job is settled: quiet is measured by the clock that wrote updated_at
    assert report.requeued == [job["job_id"]]


def test_on_postgresql_cleanup_on_a_host_whose_clock_is_behind_sees_old_jobs(
    on_postgresql, app, client, redis_conn, monkeypatch
):
    # Given a job live for 5 minutes by the store's clock, and a host whose clock is an hour behind
    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    quiet_for(app, job["job_id"], seconds=300)
    host_clock_behind(monkeypatch, hours=1)

    # When cleanup looks for jobs live for over a minute
    s = services(app)
    report = maintenance.cleanup(
        s.jobs, s.reconciler, s.sessions, s.queues, older_than=timedelta(minutes=1), force=True, dry_run=True
    )

    # Then it finds the job
    assert [entry[0] for entry in report.jobs] == [job["job_id"]]


# -- a leader that hangs -------------------------------------------------------------------

_HANGING_LEADER = """
import sys, time
from backend.store import leadership
from backend.store.engine import make_engine
with leadership.lead(make_engine(sys.argv[1]), leadership.RECONCILER_KEY, idle_timeout=2.0) as leader:
    print("leading" if leader is not None else "refused", flush=True)
    time.sleep(600)
"""


def test_on_postgresql_a_leader_whose_process_hangs_loses_leadership_after_its_idle_timeout(postgres_url):
    # Given a leader in another process, holding the lock with an idle timeout of 2 s
    from backend.store import leadership
    from backend.store.engine import make_engine, migrate

    migrate(postgres_url)
    child = subprocess.Popen([sys.executable, "-c", _HANGING_LEADER, postgres_url], stdout=subprocess.PIPE, text=True)
    engine = make_engine(postgres_url)
    try:
        assert child.stdout.readline().strip() == "leading"
        with leadership.lead(engine, leadership.RECONCILER_KEY) as leader:
            assert leader is None

        # When its process hangs (SIGSTOP: its kernel still answers TCP keepalives for it)
        os.kill(child.pid, signal.SIGSTOP)

        # Then another leads once the 2 s have passed (well before TCP would notice anything)
        deadline = time.monotonic() + 20
        led = False
        while not led and time.monotonic() < deadline:
            with leadership.lead(engine, leadership.RECONCILER_KEY) as leader:
                led = leader is not None and leader.holds()
            time.sleep(0.2)
        assert led, "the hung leader still held the lock 20 s after it stopped"
    finally:
        child.kill()
        child.wait()
        engine.dispose()


def test_on_postgresql_a_healthy_leader_keeps_leadership_through_a_step_longer_than_its_idle_timeout(postgres_url):
    # Given a leader holding the lock with an idle timeout of 1 s
    from backend.store import leadership
    from backend.store.engine import make_engine, migrate

    migrate(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with leadership.lead(engine, leadership.RECONCILER_KEY, idle_timeout=1) as leader:
            assert leader is not None

            # When one step of its pass runs for several idle timeouts without touching it (a
            # big Redis fetch, a wait for a pooled connection)
            time.sleep(4)

            # Then it still leads, and nobody else can
            assert leader.holds(), "a live leader lost its lock during a long step"
            with leadership.lead(engine, leadership.RECONCILER_KEY) as other:
                assert other is None
    finally:
        engine.dispose()
