"""The rate limiter's scripts (backend/broker/key_limits.py) against the session's real Redis, with
a fake clock passed as ``now``: admission, holding, release to the front of the queue, overrides,
expiry, garbled meta, and the invariant over random sequences. No workers, no store: fast."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

import backend.tasks.examples  # noqa: F401  (registers call_limited_provider)
from backend.broker import key_limits
from backend.broker.queues import QueueAdapter
from backend.core.errors import ValidationFailed
from backend.core.rate_spec import Rate, parse_rate
from backend.tasks.registry import get_task, task

pytestmark = pytest.mark.one_pass("the limiter's scripts run on Redis alone; no store")

FUNC = "backend.tasks.examples.echo"


@pytest.fixture
def queue(redis_conn) -> Queue:
    return Queue("default", connection=redis_conn, serializer=JSONSerializer)


def put(queue: Queue, rq_id: str, key: str = "provider", limit: str = "2/10s", meta: dict | None = None) -> RQJob:
    """An RQ job as a submission enqueues it, with the ``rate`` meta of a limited task."""
    return queue.enqueue_call(
        FUNC, job_id=rq_id, meta=meta if meta is not None else {"rate": {"key": key, "limit": limit}}
    )


def pop(queue: Queue) -> RQJob | None:
    """What a worker's dequeue does before it asks the limiter: take the head of the list."""
    rq_id = queue.connection.lpop(queue.key)
    return (
        None if rq_id is None else RQJob.fetch(rq_id.decode(), connection=queue.connection, serializer=JSONSerializer)
    )


def take(queue: Queue, rq_id: str) -> RQJob:
    """A worker's pop of one given job."""
    assert queue.connection.lrem(queue.key, 1, rq_id) == 1
    return RQJob.fetch(rq_id, connection=queue.connection, serializer=JSONSerializer)


def queue_ids(queue: Queue) -> list[str]:
    return [rq_id.decode() for rq_id in queue.connection.lrange(queue.key, 0, -1)]


def test_admission_counts_the_window_ending_now(redis_conn, queue):
    for index in range(4):
        put(queue, f"a{index}", limit="3/10s")
    assert [key_limits.admit(redis_conn, pop(queue), now=t) for t in (100.0, 101.0, 102.0)] == [None, None, None]
    # The fourth in the window is held until the first start (100) leaves it.
    assert key_limits.admit(redis_conn, pop(queue), now=105.0) == pytest.approx(110.0)
    # Once it left, a start is admitted again: the window is the one ending now, not a fixed minute.
    put(queue, "a4", limit="3/10s")
    assert key_limits.admit(redis_conn, pop(queue), now=110.5) is None
    put(queue, "a5", limit="3/10s")
    assert key_limits.admit(redis_conn, pop(queue), now=110.6) == pytest.approx(111.0)


def test_a_held_job_waits_outside_the_queue_with_the_time_its_slot_frees(redis_conn, queue):
    for index in range(3):
        put(queue, f"h{index}")
    put(queue, "other", meta={})
    key_limits.admit(redis_conn, pop(queue), now=50.0)
    key_limits.admit(redis_conn, pop(queue), now=52.0)
    assert key_limits.admit(redis_conn, pop(queue), now=53.0) == pytest.approx(60.0)
    assert queue_ids(queue) == ["other"]
    assert key_limits.held_ids(redis_conn) == {"h2"}
    assert key_limits.held_until(redis_conn, ["h2", "h0", "nope"]) == {"h2": ("provider", pytest.approx(60.0))}
    assert key_limits.held_counts(redis_conn, ["provider", "unknown"]) == {"provider": 1, "unknown": 0}
    assert key_limits.held_totals(redis_conn) == {"provider": 1}
    # The reconciler counts it waiting, though it is in no queue list.
    adapter = QueueAdapter(redis_conn, result_ttl=600, failure_ttl=600)
    assert adapter.queued_ids() == {"other", "h2"}
    # Its RQ job is untouched: still queued, so a cancel finds it as RQ would.
    assert RQJob.fetch("h2", connection=redis_conn, serializer=JSONSerializer).get_status() == "queued"


def test_release_puts_exactly_the_free_number_back_at_the_front_in_arrival_order(redis_conn, queue):
    for index in range(6):
        put(queue, f"r{index}", limit="2/10s")
    assert key_limits.admit(redis_conn, pop(queue), now=0.0) is None
    assert key_limits.admit(redis_conn, pop(queue), now=1.0) is None
    for t in (2.0, 3.0, 4.0, 5.0):
        key_limits.admit(redis_conn, pop(queue), now=t)
    put(queue, "unlimited", meta={})
    assert key_limits.release_due(redis_conn, now=9.9) == 0  # no slot free before 10
    assert key_limits.release_due(redis_conn, now=10.5) == 1  # the start at 0 left; the one at 1 did not
    assert queue_ids(queue) == ["r2", "unlimited"]
    assert key_limits.release_due(redis_conn, now=10.9) == 0
    assert key_limits.held_until(redis_conn, ["r3"]) == {"r3": ("provider", pytest.approx(11.0))}
    # Both slots free: two more, oldest first, ahead of what waited in the queue.
    assert key_limits.release_due(redis_conn, now=30.0) == 2
    assert queue_ids(queue) == ["r3", "r4", "r2", "unlimited"]
    assert key_limits.held_ids(redis_conn) == {"r5"}


def test_a_released_job_starts_on_its_own_grant_and_the_grant_is_not_counted_twice(redis_conn, queue):
    for index in range(4):
        put(queue, f"g{index}", limit="2/10s")
    key_limits.admit(redis_conn, pop(queue), now=0.0)
    key_limits.admit(redis_conn, pop(queue), now=1.0)
    key_limits.admit(redis_conn, pop(queue), now=2.0)
    assert key_limits.release_due(redis_conn, now=10.5) == 1
    assert key_limits.admit(redis_conn, pop(queue), now=10.6) is None  # g2 on its grant
    # Two starts in the window now (1 and g2): the next is held, g2 was logged once.
    assert key_limits.admit(redis_conn, pop(queue), now=10.7) == pytest.approx(11.0)
    assert redis_conn.zcard(key_limits.log_key("provider")) == 2


def test_a_grant_used_after_its_window_is_held_again_not_started(redis_conn, queue):
    for index in range(4):
        put(queue, f"l{index}", limit="1/10s")
    key_limits.admit(redis_conn, pop(queue), now=0.0)
    for t in (1.0, 2.0):
        key_limits.admit(redis_conn, pop(queue), now=t)
    assert key_limits.release_due(redis_conn, now=10.0) == 1  # l1 granted at 10
    l1 = pop(queue)
    # l1 waited in the queue past its window (every worker busy); another start took the slot.
    put(queue, "late", limit="1/10s")
    redis_conn.lrem(queue.key, 1, "late")
    late = RQJob.fetch("late", connection=redis_conn, serializer=JSONSerializer)
    assert key_limits.admit(redis_conn, late, now=21.0) is None
    assert key_limits.admit(redis_conn, l1, now=22.0) == pytest.approx(31.0)
    assert key_limits.held_ids(redis_conn) == {"l1", "l2"}
    assert key_limits.release_due(redis_conn, now=31.0) == 1
    assert key_limits.release_due(redis_conn, now=41.0) == 1
    assert set(queue_ids(queue)) == {"l1", "l2", "l3"}


def test_a_job_cancelled_while_held_is_dropped_without_taking_a_slot(redis_conn, queue):
    for index in range(4):
        put(queue, f"c{index}", limit="1/10s")
    key_limits.admit(redis_conn, pop(queue), now=0.0)
    held = [pop(queue) for _ in range(3)]
    for job in held:
        key_limits.admit(redis_conn, job, now=1.0)
    held[0].cancel()
    assert RQJob.fetch("c1", connection=redis_conn, serializer=JSONSerializer).get_status() == "canceled"
    assert key_limits.release_due(redis_conn, now=10.5) == 1
    assert queue_ids(queue) == ["c2"]
    assert key_limits.held_ids(redis_conn) == {"c3"}
    redis_conn.delete(RQJob.key_for("c3"))  # a hash gone meanwhile: dropped too
    assert key_limits.release_due(redis_conn, now=30.0) == 0
    assert key_limits.held_ids(redis_conn) == set()


def test_an_override_lowers_and_raises_the_limit_at_once(redis_conn, queue):
    for index in range(6):
        put(queue, f"o{index}", limit="5/10s")
    redis_conn.hset(key_limits.OVERRIDES, "provider", "1/10s")
    assert key_limits.admit(redis_conn, pop(queue), now=0.0) is None
    assert key_limits.admit(redis_conn, pop(queue), now=0.1) == pytest.approx(10.0)
    for t in (0.2, 0.3, 0.4):
        key_limits.admit(redis_conn, pop(queue), now=t)
    # Raised: the held jobs are due now, and the next release takes as many as the new limit allows.
    redis_conn.hset(key_limits.OVERRIDES, "provider", "3/10s")
    key_limits.wake(redis_conn, "provider")
    assert key_limits.release_due(redis_conn, now=0.5) == 2
    redis_conn.hdel(key_limits.OVERRIDES, "provider")
    key_limits.wake(redis_conn, "provider")
    assert key_limits.release_due(redis_conn, now=0.6) == 2  # back to the declared 5
    # A garbled override is ignored: the declared limit holds.
    redis_conn.hset(key_limits.OVERRIDES, "provider", "lots")
    assert key_limits.admit(redis_conn, take(queue, "o5"), now=0.7) == pytest.approx(10.0)


def test_one_release_moves_a_bounded_number_of_jobs_and_the_next_goes_on(redis_conn, queue, monkeypatch):
    monkeypatch.setattr(key_limits, "RELEASE_JOBS", 2)
    for index in range(6):
        put(queue, f"b{index}", limit="1/10s")
    for t in range(6):
        key_limits.admit(redis_conn, pop(queue), now=float(t))
    redis_conn.hset(key_limits.OVERRIDES, "provider", "100/10s")
    key_limits.wake(redis_conn, "provider")
    assert [key_limits.release_due(redis_conn, now=6.0) for _ in range(4)] == [2, 2, 1, 0]
    assert queue_ids(queue) == ["b5", "b3", "b4", "b1", "b2"]


def test_per_key_state_expires_and_is_deleted_when_nothing_is_held(redis_conn, queue, monkeypatch):
    for index in range(3):
        put(queue, f"e{index}", limit="1/10s")
    for t in (0.0, 1.0, 2.0):
        key_limits.admit(redis_conn, pop(queue), now=t)
    assert 0 < redis_conn.pttl(key_limits.log_key("provider")) <= 20_000
    assert key_limits.release_due(redis_conn, now=10.0) == 1
    assert key_limits.release_due(redis_conn, now=20.0) == 1
    # Nothing held: only the log and its windows in use (both expiring) and the metric's counts are left.
    assert {key.decode() for key in redis_conn.keys("jobservice:rl:*")} == {
        key_limits.log_key("provider"),
        key_limits.windows_key("provider"),
        key_limits.HELD_TOTAL,
    }
    assert 0 < redis_conn.pttl(key_limits.log_key("provider")) <= 20_000
    assert 0 < redis_conn.pttl(key_limits.windows_key("provider")) <= 20_000
    # The metric counts a bounded number of keys: past the cap the least held other key leaves
    # it, its count going under one name (so the newest keys still get their own).
    monkeypatch.setattr(key_limits, "MAX_TOTAL_KEYS", 3)
    redis_conn.delete(queue.key)
    for index in range(6):
        put(queue, f"m{index}", key=f"tenant-{index}", limit="1/hour")
        put(queue, f"n{index}", key=f"tenant-{index}", limit="1/hour")
    for _ in range(12):
        key_limits.admit(redis_conn, pop(queue), now=100.0)
    totals = key_limits.held_totals(redis_conn)
    assert totals == {"provider": 2, "tenant-4": 1, "tenant-5": 1, key_limits.OTHER_KEY: 4}


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"rate": None},
        {"rate": "60/minute"},
        {"rate": {"key": 5, "limit": "1/second"}},
        {"rate": {"key": "k", "limit": "often"}},
        {"rate": {"key": "k", "limit": 60}},
        {"rate": {"key": "", "limit": "1/second"}},
        {"rate": {"key": "k" * 201, "limit": "1/second"}},
    ],
)
def test_absent_or_garbled_meta_is_no_limit(redis_conn, queue, meta):
    for index in range(3):
        put(queue, f"x{index}", meta=meta)
        assert key_limits.admit(redis_conn, pop(queue), now=1.0) is None
    assert redis_conn.keys("jobservice:rl:*") == []


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 4),
    window=st.integers(1, 5),
    steps=st.lists(
        st.tuples(st.sampled_from(["pop", "pop", "release", "wait", "cancel"]), st.sampled_from([0.1, 0.25, 0.5, 1.0])),
        max_size=80,
    ),
)
def test_no_window_ever_holds_more_starts_than_the_limit(redis_conn, queue, limit, window, steps):
    redis_conn.flushall()
    text = Rate(limit, window).text
    ids = [f"p{index}" for index in range(12)]
    for rq_id in ids:
        put(queue, rq_id, limit=text)
    now, started, cancelled = 1000.0, {}, set()
    for action, step in steps:
        if action == "wait":
            now += step
        elif action == "release":
            key_limits.release_due(redis_conn, now=now)
        elif action == "cancel":
            held = sorted(key_limits.held_ids(redis_conn) - cancelled)
            if held:
                RQJob.fetch(held[0], connection=redis_conn, serializer=JSONSerializer).cancel()
                cancelled.add(held[0])
        elif (job := pop(queue)) is not None and key_limits.admit(redis_conn, job, now=now) is None:
            assert job.id not in started
            started[job.id] = now
    # Then time goes on, and every job not cancelled starts: none is lost or started twice.
    for _ in range(200):
        if (job := pop(queue)) is not None:
            if key_limits.admit(redis_conn, job, now=now) is None:
                assert job.id not in started
                started[job.id] = now
            continue
        if not key_limits.held_ids(redis_conn):
            break
        now += 0.5
        key_limits.release_due(redis_conn, now=now)
    assert set(started) | cancelled == set(ids) and not set(started) & cancelled
    times = sorted(started.values())
    for end in times:
        assert sum(1 for t in times if end - window < t <= end) <= limit


def test_parse_rate_reads_the_texts_and_refuses_the_rest():
    assert parse_rate("60/minute") == Rate(60, 60)
    assert parse_rate(" 5/Second ") == Rate(5, 1)
    assert parse_rate("10/5s") == Rate(10, 5)
    assert parse_rate("3/3600s").text == "3/hour"
    assert parse_rate("10/5s").text == "10/5s"
    for bad in (
        "",
        "60",
        "60/minutes",
        "0/minute",
        "1000001/hour",
        "5/0s",
        "5/86401s",
        "-1/second",
        "1e3/hour",
        None,
        60,
        ["1/second"],
        "9" * 50,
    ):
        with pytest.raises(ValueError, match="rate limit"):
            parse_rate(bad)


def test_a_task_declares_its_limit_and_key():
    spec = get_task("call_limited_provider")
    assert (spec.describe()["rate_limit"], spec.describe()["rate_key"]) == ("60/minute", "provider")
    assert spec.rate_for([], {"prompt": "x", "provider": "openai"}) == ("openai", "60/minute")
    # Passed by position, the same provider is the same key (else a caller doubles the limit).
    assert spec.rate_for(["x", "openai"], {}) == ("openai", "60/minute")
    # Left out, the key is the default the task gets; None (or no rate_key) is the task's name.
    assert spec.rate_for([], {"prompt": "x"}) == ("example", "60/minute")
    assert spec.rate_for([], {"prompt": "x", "provider": None}) == ("call_limited_provider", "60/minute")
    assert spec.rate_for([], {"provider": 7}) == ("7", "60/minute")
    assert get_task("echo").rate_for([], {"provider": "x"}) is None
    for value in (["a"], {"a": 1}, "", "k" * 201):
        with pytest.raises(ValidationFailed, match="rate key"):
            spec.check_arguments([], {"prompt": "x", "provider": value})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "60/fortnight"}, "bad rate_limit"),
        ({"rate_limit": "0/minute"}, "bad rate_limit"),
        ({"rate_key": "provider"}, "needs a rate_limit"),
        ({"rate_limit": "1/second", "rate_key": "nope"}, "names none of its keyword arguments"),
    ],
)
def test_a_bad_declaration_fails_at_import_naming_the_task(options, message):
    with pytest.raises(TypeError, match=f"task 'badly_limited'.*{message}"):
        task("badly_limited", **options)(badly_limited)


def badly_limited(provider: str = "x") -> None:
    """A task function whose declarations the test above gets wrong."""


def test_get_tasks_shows_each_tasks_limit_and_a_bad_rate_key_is_refused_at_submission(client):
    tasks = {entry["name"]: entry for entry in client.get("/tasks").get_json()["tasks"]}
    assert (tasks["call_limited_provider"]["rate_limit"], tasks["call_limited_provider"]["rate_key"]) == (
        "60/minute",
        "provider",
    )
    assert (tasks["echo"]["rate_limit"], tasks["echo"]["rate_key"]) == (None, None)
    response = client.post("/tasks/call_limited_provider", json={"kwargs": {"prompt": "hi", "provider": ["x"]}})
    assert response.status_code == 422, response.get_json()  # as any bad argument of a task
    assert "rate key" in response.get_json()["error"]["message"]
    assert client.get("/jobs").get_json()["jobs"] == []
