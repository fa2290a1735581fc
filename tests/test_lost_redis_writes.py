"""Writes a Redis failover loses cannot turn into a cancelled job that runs, or a double run.

A failover (asynchronous replication) or a restart from an older snapshot loses the last
writes: here a Redis of the test's own is snapshotted (SAVE), written to, SIGKILLed and started
again from the snapshot on the same port, which is what a promoted replica that missed the last
second looks like to every client (new replication id, the data of a moment before).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from redis import Redis

from backend.api.context import services
from backend.broker import fences, leases
from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter, fence_key, rq_job_id
from backend.core.errors import JobServiceError
from backend.core.settings import QUEUE_NAMES
from backend.core.states import JobStatus
from backend.dev.redis_server import EmbeddedRedis
from backend.recovery.reconciler import Reconciler, ReconcileReport
from tests.conftest import TOKEN
from tests.helpers import get_job, wait_for_status, wait_until

pytestmark = pytest.mark.one_pass(reason="what a worker does when Redis loses its writes")


class SnapshotRedis:
    """A Redis of the test's own that can go back to an earlier snapshot, as a failover does."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.server = EmbeddedRedis.start(data_dir=data_dir, appendonly=False)
        self.url = self.server.url
        self.connection = Redis.from_url(self.url)

    def snapshot(self) -> None:
        self.connection.save()

    def kill(self) -> None:
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def start(self) -> None:
        """Start again on the same port from the last snapshot (writes after it are lost)."""
        self.server = EmbeddedRedis.start(data_dir=self.data_dir, port=self.server.port, appendonly=False)

    def back_to_snapshot(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def own_redis(settings, tmp_path):
    """The test's own Redis, in ``settings`` before the app starts."""
    redis = SnapshotRedis(tmp_path / "redis")
    settings["REDIS_URL"] = redis.url
    yield redis
    redis.close()


def runs(marker: Path) -> int:
    """How many times the ``flaky`` task ran with this marker (a line per run)."""
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_cancel_whose_fence_a_failover_lost_still_keeps_the_job_from_running(own_redis, request, tmp_path, simple):
    client = request.getfixturevalue("client")
    run_burst_worker = request.getfixturevalue("run_burst_worker")
    # Given two queued jobs, and a Redis snapshot that holds both on their queue
    cancelled_marker, kept_marker = tmp_path / "cancelled.runs", tmp_path / "kept.runs"
    cancelled = client.post("/tasks/flaky", json={"kwargs": {"marker": str(cancelled_marker), "failures": 0}})
    kept = client.post("/tasks/flaky", json={"kwargs": {"marker": str(kept_marker), "failures": 0}})
    cancelled, kept = cancelled.get_json(), kept.get_json()
    fences.start_check(own_redis.connection, "any", None)  # the history a worker notes at its first job
    own_redis.snapshot()
    # and one of them cancelled: fenced, taken off its queue, CANCELLED in the store
    assert client.post(f"/jobs/{cancelled['job_id']}/cancel", json={}).status_code == 200
    assert own_redis.connection.exists(fence_key(cancelled["rq_job_id"]))

    # When Redis fails over to a copy that missed the cancel (no fence, the job back on its queue)
    own_redis.back_to_snapshot()
    assert not own_redis.connection.exists(fence_key(cancelled["rq_job_id"]))

    # and a worker takes the queued jobs
    run_burst_worker(simple=simple)

    # Then the cancelled job never ran and stays CANCELLED; the other one ran once
    assert runs(cancelled_marker) == 0
    assert get_job(client, cancelled["job_id"])["status"] == "CANCELLED"
    done = get_job(client, kept["job_id"])
    assert done["status"] == "COMPLETED" and done["result"] == "ok"
    assert runs(kept_marker) == 1


def test_a_cancel_a_promoted_replica_never_received_still_keeps_the_job_from_running(settings, request, tmp_path):
    # Given a master and its replica (real replication), the API on the master
    master = EmbeddedRedis.start(data_dir=tmp_path / "master", appendonly=False)
    replica = EmbeddedRedis.start(data_dir=tmp_path / "replica", appendonly=False)
    try:
        on_master, on_replica = Redis.from_url(master.url), Redis.from_url(replica.url)
        on_master.config_set("repl-diskless-sync-delay", 0)  # 5 s by default: a full sync at once
        on_replica.replicaof("127.0.0.1", master.port)
        settings["REDIS_URL"] = master.url
        client = request.getfixturevalue("client")
        markers = {name: tmp_path / f"{name}.runs" for name in ("cancelled", "kept")}
        jobs = {
            name: client.post("/tasks/flaky", json={"kwargs": {"marker": str(marker), "failures": 0}}).get_json()
            for name, marker in markers.items()
        }
        fences.start_check(on_master, "any", None)  # the history a worker notes at its first job
        wait_until(
            lambda: (
                on_replica.exists(fences.HISTORY_KEY, *(f"rq:job:{job['rq_job_id']}" for job in jobs.values())) == 3
            ),
            what="the replica to have the jobs",
        )
        # When the replica is promoted (Sentinel's REPLICAOF NO ONE) before the cancel reaches it
        on_replica.replicaof("NO", "ONE")
        cancelled = jobs["cancelled"]
        assert client.post(f"/jobs/{cancelled['job_id']}/cancel", json={}).status_code == 200
        assert on_master.exists(fence_key(cancelled["rq_job_id"]))
        assert not on_replica.exists(fence_key(cancelled["rq_job_id"]))
        # and a worker takes the jobs from the new master
        worker = request.getfixturevalue("start_worker")(
            "--burst", "--simple", "--name", "after-failover", env={"REDIS_URL": replica.url}
        )
        assert worker.wait(timeout=60) == 0, worker.output()

        # Then the cancelled job never ran and stays CANCELLED; the other one ran once
        assert runs(markers["cancelled"]) == 0
        assert get_job(client, cancelled["job_id"])["status"] == "CANCELLED"
        assert runs(markers["kept"]) == 1
        assert get_job(client, jobs["kept"]["job_id"])["status"] == "COMPLETED"
    finally:
        replica.stop()
        master.stop()


def test_a_job_that_completed_just_before_a_failover_is_not_run_again_from_the_queue_it_came_back_to(
    own_redis, request, tmp_path
):
    client = request.getfixturevalue("client")
    run_burst_worker = request.getfixturevalue("run_burst_worker")
    # Given a queued job, in a Redis snapshot too
    done_marker, new_marker = tmp_path / "done.runs", tmp_path / "new.runs"
    done = client.post("/tasks/flaky", json={"kwargs": {"marker": str(done_marker), "failures": 0}}).get_json()
    fences.start_check(own_redis.connection, "any", None)  # the history a worker notes at its first job
    own_redis.snapshot()
    # that a worker then ran to COMPLETED
    run_burst_worker()
    assert get_job(client, done["job_id"])["status"] == "COMPLETED"

    # When Redis fails over to a copy that missed the run (the job is back on its queue)
    own_redis.back_to_snapshot()
    new = client.post("/tasks/flaky", json={"kwargs": {"marker": str(new_marker), "failures": 0}}).get_json()
    run_burst_worker()

    # Then the store refuses the old job's second start: it ran once; a job submitted since runs
    assert runs(done_marker) == 1
    assert get_job(client, done["job_id"])["status"] == "COMPLETED"
    assert runs(new_marker) == 1
    assert get_job(client, new["job_id"])["status"] == "COMPLETED"


def test_a_worker_trusts_a_missing_fence_only_for_jobs_created_since_the_redis_history_began(redis_conn):
    from datetime import UTC, datetime, timedelta

    before = datetime.now(UTC) - timedelta(minutes=5)
    # A Redis with no history noted (new, or emptied) holds nothing from an earlier one
    assert fences.start_check(redis_conn, "job-1", before) is fences.StartCheck.CLEAR
    # When it fails over (the history noted is another server's), a job created before is checked
    redis_conn.hset(fences.HISTORY_KEY, "replid", "the-old-masters-replication-id")
    assert fences.start_check(redis_conn, "job-1", before) is fences.StartCheck.ASK_STORE
    since = float(redis_conn.hget(fences.HISTORY_KEY, "since"))
    # one created after it (beyond the clocks' margin) is not
    later = datetime.fromtimestamp(since + fences.CLOCK_MARGIN_SECONDS + 1, UTC)
    assert fences.start_check(redis_conn, "job-2", later) is fences.StartCheck.CLEAR
    # a fence present is obeyed whatever the history
    redis_conn.set(fence_key("job-2"), 1)
    assert fences.start_check(redis_conn, "job-2", later) is fences.StartCheck.FENCED
    # and the history stays the one noted while Redis keeps its replication id
    assert fences.start_check(redis_conn, "job-1", before) is fences.StartCheck.ASK_STORE
    assert float(redis_conn.hget(fences.HISTORY_KEY, "since")) == since


def _processing_job(app, client, worker: str) -> dict:
    """A job the store says worker ``worker`` runs (its RQ job gone, as a failover may leave it)."""
    from datetime import timedelta

    from sqlalchemy import update

    from backend.store.models import Job, utcnow

    job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    services(app).jobs.mark_started(job["job_id"], attempt=1, worker=worker)
    with services(app).sessions() as session:
        session.execute(update(Job).where(Job.id == job["job_id"]).values(updated_at=utcnow() - timedelta(seconds=10)))
        session.commit()
    return job


def test_a_lease_missing_before_a_redis_outage_is_given_its_time_again_after_it(own_redis, request):
    app, client = request.getfixturevalue("app"), request.getfixturevalue("client")
    # Given a reconciler with 4 s leases (a worker counts as dead once its lease was missing 2 s)
    base = services(app).reconciler
    reconciler = Reconciler(base.manager, base.sessions, base.queues, lease_seconds=4.0, confirm_delay=0.2)
    # and a job whose worker's lease a failover has just lost
    job = _processing_job(app, client, "live-worker")
    own_redis.connection.delete(*own_redis.connection.keys("rq:job:*"))
    assert not reconciler.run_once()  # seen missing once: nothing done yet

    # When Redis is down for longer than that (the worker's keeper cannot put the lease back)
    own_redis.kill()
    with pytest.raises(BrokerError):
        reconciler.run_once()
    # longer than 2 s, and past the adapter's fail-fast spell after a failure
    time.sleep(max(reconciler.dead_after, QueueAdapter.DOWN_BACKOFF_SECONDS) + 0.3)
    own_redis.start()

    # Then the first pass after the outage does not take the worker for dead
    report = reconciler.run_once()
    assert not report, report.as_dict()
    # and once its keeper has put the lease back, the job is left to its worker for good
    keeper = leases.LeaseKeeper(Redis.from_url(own_redis.url), "live-worker", ttl=4.0)
    assert keeper.claim()
    assert not reconciler.run_once()
    after = get_job(client, job["job_id"])
    assert (after["status"], after["attempt"]) == ("PROCESSING", 1)


def test_a_redis_failing_every_other_pass_still_lets_a_dead_worker_be_declared_dead(app, client, redis_conn):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from backend.dev.redis_server import free_port

    # Given a reconciler with 2 s leases (dead once a lease was missing 1 s of Redis answering)
    base = services(app).reconciler
    reconciler = Reconciler(base.manager, base.sessions, base.queues, lease_seconds=2.0, confirm_delay=0.1)
    # and a job whose worker is gone for good (no lease, its RQ job lost)
    job = _processing_job(app, client, "gone-worker")
    redis_conn.flushdb()
    up = reconciler.queues
    unreachable = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    down = QueueAdapter(unreachable, result_ttl=60, failure_ttl=60)

    # When Redis answers one pass in two (a flapping network, a failover's retry storm)
    for _ in range(6):
        reconciler.run_once()
        if get_job(client, job["job_id"])["attempt"] == 2:
            break
        time.sleep(0.5)  # Redis answering: this time counts
        reconciler.queues = down
        with pytest.raises(BrokerError):
            reconciler.run_once()
        reconciler.queues = up

    # Then the time Redis answered adds up: the worker is declared dead, its job runs again
    after = get_job(client, job["job_id"])
    assert (after["status"], after["attempt"]) == ("QUEUED", 2), after


@pytest.mark.parametrize("verdict", ["requeue", "dead"])
def test_two_reconciler_passes_at_once_settle_a_job_once(app, client, redis_conn, verdict):
    # Given two reconcilers that both lead (the Redis lock of one was lost in a failover)
    base = services(app).reconciler
    both = [Reconciler(base.manager, base.sessions, base.queues, lease_seconds=1.0) for _ in range(2)]
    # and a job each of them must settle: lost from its queue, or its worker gone
    if verdict == "requeue":
        job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    else:
        job = _processing_job(app, client, "gone-worker")
    redis_conn.flushdb()
    stored = services(app).jobs.get_job(job["job_id"])

    # When both diagnose it before either acts, then both act on what they saw
    seen = [reconciler.diagnose([stored], patient=False)[stored.id] for reconciler in both]
    assert [action for action, _ in seen] == [verdict, verdict]
    for reconciler, (action, rq_job) in zip(both, seen, strict=True):
        # The store refuses the second one's change (its pass logs that and leaves the job)
        with contextlib.suppress(JobServiceError):
            reconciler._act(stored, action, rq_job, ReconcileReport())

    # Then the store made one new attempt, and it is queued once
    after = get_job(client, job["job_id"])
    assert (after["status"], after["attempt"]) == ("QUEUED", 2), after
    queued = [rq_id for name in QUEUE_NAMES for rq_id in redis_conn.lrange(f"rq:queue:{name}", 0, -1)]
    assert queued == [rq_job_id(job["job_id"], 2).encode()]


def test_a_superseded_attempts_result_does_not_land_over_the_new_attempt(app, client, redis_conn, run_burst_worker):
    # Given a job whose attempt 1 was taken for dead (its lease and RQ job lost) and replaced
    job = _processing_job(app, client, "slow-worker")
    redis_conn.flushdb()
    reconciler = services(app).reconciler
    reconciler.confirm_delay = 0.0
    wait_until(lambda: reconciler.run_once(), what="the reconciler settling the job")
    assert (get_job(client, job["job_id"])["status"], get_job(client, job["job_id"])["attempt"]) == ("QUEUED", 2)

    # When attempt 1's worker, alive after all, reports its result
    report = {"event": "completed", "job_id": job["job_id"], "attempt": 1, "result": 99, "at": time.time()}
    answer = client.post(
        "/internal/reports",
        json={"sent_at": time.time(), "reports": [report]},
        headers={"X-Internal-Token": TOKEN},
    )

    # Then the store refuses it, and the job's result is the new attempt's
    assert answer.status_code == 200 and answer.get_json()["results"][0]["status"] == 409
    run_burst_worker()
    done = wait_for_status(client, job["job_id"], {JobStatus.COMPLETED.value})
    assert (done["attempt"], done["result"]) == (2, 3)


def test_a_redis_that_refuses_info_in_scripts_still_has_its_fences_obeyed(tmp_path):
    import subprocess

    from backend.dev import processes
    from backend.dev.redis_server import free_port, redis_server_binary

    # Given a Redis that renamed INFO away, as some managed services restrict commands
    port = free_port()
    (tmp_path / "redis.conf").write_text('rename-command INFO ""\n')
    command = [redis_server_binary(), str(tmp_path / "redis.conf"), "--port", str(port), "--save", ""]
    server = subprocess.Popen([*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        connection = Redis(port=port)
        wait_until(lambda: _answers(connection), what="redis-server answering")
        # Then a worker's start check falls back to the fence alone: absent, the job runs
        assert fences.start_check(connection, "job-1", None) is fences.StartCheck.CLEAR
        # present, it does not
        connection.set(fence_key("job-1"), 1)
        assert fences.start_check(connection, "job-1", None) is fences.StartCheck.FENCED
    finally:
        processes.stop(server)


def _answers(connection: Redis) -> bool:
    try:
        return bool(connection.ping())
    except Exception:
        return False


def test_a_demoted_master_counts_as_down_like_an_unreachable_one(tmp_path):
    from redis.exceptions import ReadOnlyError

    from backend.broker.queues import RedisUnavailable

    # Given the API's queue adapter on a master that a failover demoted (it answers READONLY)
    server = EmbeddedRedis.start(data_dir=tmp_path / "demoted", appendonly=False)
    try:
        Redis.from_url(server.url).replicaof("127.0.0.1", 1)
        queues = QueueAdapter(Redis.from_url(server.url), result_ttl=60, failure_ttl=60)
        job = {"job_id": "job_x", "attempt": 1, "func_path": "add", "args": [1, 2], "kwargs": {}}
        with pytest.raises(ReadOnlyError):
            queues.enqueue(**job, priority="default", timeout=60)
        # Then, as after a refused connection, the next submissions meet "Redis is down" at once
        # (recorded PENDING without waiting on Redis) until the back-off ends
        with pytest.raises(RedisUnavailable):
            queues.enqueue(**job, priority="default", timeout=60)
    finally:
        server.stop()
