"""The queue adapter's connection and the way it hands arguments to RQ."""

from __future__ import annotations

import pytest
from rq.rate_limit import RateLimitRegistry

from backend.api.context import services
from backend.api.payloads import JobRequest
from backend.broker.connection import connect
from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter
from backend.dev.redis_server import EmbeddedRedis
from backend.tasks import get_task


def test_the_rq_connection_never_decodes_responses(redis_url):
    connection = connect(redis_url)
    assert connection.connection_pool.connection_kwargs.get("decode_responses") is False
    connection.set("raw", b"\xff\xfe")
    assert connection.get("raw") == b"\xff\xfe"


def test_a_url_asking_for_decode_responses_is_refused(redis_url):
    with pytest.raises(ValueError, match="decode_responses"):
        connect(f"{redis_url}?decode_responses=True")


def test_the_app_and_worker_connections_do_not_decode(app):
    assert services(app).redis.connection_pool.connection_kwargs.get("decode_responses") is False


@pytest.mark.parametrize("setting", ["RQ_RESULT_TTL", "RQ_FAILURE_TTL"])
def test_an_outcome_ttl_too_short_to_read_back_is_refused_at_start(settings, setting):
    from backend.app import create_app

    settings[setting] = 0
    with pytest.raises(ValueError, match=f"{setting} must be at least 60 seconds"):
        create_app(settings)


# -- one attempt enqueued by several hosts at once ------------------------------------------


def enqueue_from_many_hosts(redis_url: str, job, spec, *, concurrency=None, hosts: int = 8) -> None:
    """``hosts`` adapters, each on its own connection, enqueue ``job``'s attempt at the same instant."""
    import threading

    adapters = [QueueAdapter(connect(redis_url), result_ttl=600, failure_ttl=600) for _ in range(hosts)]
    start = threading.Barrier(hosts)

    def enqueue(adapter: QueueAdapter) -> None:
        start.wait()
        adapter.enqueue(
            job_id=job.id,
            attempt=job.attempt,
            func_path=spec.path,
            args=job.args,
            kwargs=job.kwargs,
            priority=job.priority,
            timeout=job.timeout,
            concurrency=concurrency,
        )

    threads = [threading.Thread(target=enqueue, args=(adapter,)) for adapter in adapters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def record_pending(app, task: str, **kwargs):
    request = JobRequest(task=get_task(task), args=[], kwargs=kwargs, priority="default", timeout=60, max_retries=0)
    job, _ = services(app).jobs.create_job(request, owner="local")
    return job


def test_an_attempt_enqueued_by_many_hosts_at_once_is_queued_once_and_runs_once(
    app, client, redis_url, redis_conn, run_burst_worker, tmp_path
):
    # Given jobs recorded PENDING, each counting its runs in a file
    jobs = [record_pending(app, "flaky", marker=str(tmp_path / f"runs-{n}"), failures=0) for n in range(10)]

    # When eight hosts enqueue each job's attempt at the same instant
    for job in jobs:
        enqueue_from_many_hosts(redis_url, job, get_task("flaky"))

    # Then each attempt is on its queue once
    queued = [rq_id.decode() for rq_id in redis_conn.lrange("rq:queue:default", 0, -1)]
    assert sorted(queued) == sorted(job.rq_job_id for job in jobs)
    # and, recorded QUEUED (its own enqueue finds the attempt there), runs once
    for job in jobs:
        services(app).jobs.enqueue_job(job.id)
    run_burst_worker()
    for job in jobs:
        assert client.get(f"/jobs/{job.id}").get_json()["status"] == "COMPLETED"
    runs = {job.id: (tmp_path / f"runs-{n}").read_text().splitlines() for n, job in enumerate(jobs)}
    assert runs == {job.id: ["run"] for job in jobs}


def test_a_concurrency_limited_attempt_enqueued_by_many_hosts_at_once_is_queued_once(app, redis_url, redis_conn):
    # Given jobs of tasks that run one at a time, each job the first of its own limit
    jobs = [record_pending(app, "one_at_a_time", seconds=0) for _ in range(10)]

    # When eight hosts enqueue each job's attempt at the same instant
    for n, job in enumerate(jobs):
        enqueue_from_many_hosts(redis_url, job, get_task("one_at_a_time"), concurrency=(f"race-{n}", 1))

    # Then each took its limit's one slot and is on its queue once, waiting for no slot besides
    queued = [rq_id.decode() for rq_id in redis_conn.lrange("rq:queue:default", 0, -1)]
    assert sorted(queued) == sorted(job.rq_job_id for job in jobs)
    for n, job in enumerate(jobs):
        limit = RateLimitRegistry(key=f"jobservice:task:race-{n}", connection=redis_conn)
        assert (limit.get_allowed_job_ids(), limit.get_rate_limited_job_ids()) == ([job.rq_job_id], [])


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_deferred_attempt_released_by_many_hosts_at_once_is_replaced_once(app, redis_url, redis_conn):
    # Given a job's attempt deferred in RQ behind a parent that has not run
    import threading

    adapter = services(app).queues
    parent, child = record_pending(app, "add", a=1, b=2), record_pending(app, "add", a=3, b=4)
    options = {"func_path": get_task("add").path, "args": [], "priority": "default", "timeout": 60}
    adapter.enqueue(job_id=parent.id, attempt=1, kwargs=parent.kwargs, **options)
    adapter.enqueue(job_id=child.id, attempt=1, kwargs=child.kwargs, depends_on=[parent.rq_job_id], **options)
    assert adapter.fetch(child.rq_job_id).get_status() == "deferred"

    # When eight hosts release it at the same instant (its parent needed retries: the store
    # settles the dependency), each replacing the deferred copy by a ready one if it found it
    hosts = [QueueAdapter(connect(redis_url), result_ttl=600, failure_ttl=600) for _ in range(8)]
    start = threading.Barrier(len(hosts))
    replaced = []

    def release(host: QueueAdapter) -> None:
        start.wait()
        if host.discard_deferred(child.rq_job_id):
            replaced.append(host)
            host.enqueue(job_id=child.id, attempt=1, kwargs=child.kwargs, **options)

    threads = [threading.Thread(target=release, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then one host replaced it, and it waits on its queue once, ready
    assert len(replaced) == 1
    queued = [rq_id.decode() for rq_id in redis_conn.lrange("rq:queue:default", 0, -1)]
    assert queued == [parent.rq_job_id, child.rq_job_id]
    assert adapter.fetch(child.rq_job_id).get_status() == "queued"


def test_redis_refusing_a_call_ends_the_moment_it_counts_as_recently_up(tmp_path):
    # Given an adapter whose Redis has just answered (submissions are then recorded QUEUED)
    redis = EmbeddedRedis.start(data_dir=tmp_path, appendonly=False)
    adapter = QueueAdapter(connect(redis.url, socket_timeout=1), result_ttl=60, failure_ttl=60)
    try:
        adapter.existing(["any"])
        assert adapter.recently_up

        # When Redis goes away and the next call fails
        redis.stop()
        with pytest.raises(BrokerError):
            adapter.existing(["any"])

        # Then Redis no longer counts as up: the next submissions are recorded PENDING (the
        # reconciler enqueues them) rather than QUEUED without a queue entry
        assert not adapter.recently_up
    finally:
        redis.stop()
