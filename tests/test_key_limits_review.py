"""Review 15b's findings on the limiter (backend/broker/key_limits.py, TaskSpec.rate_for): two
limits on one key, key spellings, keys an operator cannot name, a recorded job whose key no
longer validates, paused queues and priorities among held jobs, a clock stepped back, the metric."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

import tests.key_limits_review_fixtures  # noqa: F401  (registers the klr_* tasks)
from backend.api.context import services
from backend.broker import key_limits, limit_overrides
from backend.broker.pauses import PAUSED_KEY
from backend.core.errors import ValidationFailed
from backend.core.rate_spec import Rate, parse_rate
from backend.tasks import registry
from tests.conftest import TASK_MODULES
from tests.helpers import get_job
from tests.test_reconciler import age

FUNC = "backend.tasks.examples.echo"
ONE_PASS = pytest.mark.one_pass("the limiter's scripts and rate_for need Redis alone; no store")


@pytest.fixture
def review_settings(settings) -> dict:
    settings["TASK_MODULES"] = TASK_MODULES + ",tests.key_limits_review_fixtures"
    return settings


def put(queue: Queue, rq_id: str, key: str, limit: str) -> RQJob:
    return queue.enqueue_call(FUNC, job_id=rq_id, meta={"rate": {"key": key, "limit": limit}})


def take(queue: Queue, rq_id: str) -> RQJob:
    assert queue.connection.lrem(queue.key, 1, rq_id) == 1
    return RQJob.fetch(rq_id, connection=queue.connection, serializer=JSONSerializer)


def queues(redis_conn) -> dict[str, Queue]:
    return {name: Queue(name, connection=redis_conn, serializer=JSONSerializer) for name in ("high", "default", "low")}


def ids(queue: Queue) -> list[str]:
    return [rq_id.decode() for rq_id in queue.connection.lrange(queue.key, 0, -1)]


@ONE_PASS
def test_a_shorter_window_on_the_same_key_does_not_erase_a_longer_limit(redis_conn):
    """B allows 2 starts in 20 s for key "budget", A 10 a second for the same key: A's admissions
    used to trim the key's log to A's 1-s window, so B started 6 times in 18 s."""
    queue = queues(redis_conn)["default"]
    b_starts, t = [], 1000.0
    for i in range(6):
        if key_limits.admit(redis_conn, take(queue, put(queue, f"b{i}", "budget", "2/20s").id), now=t) is None:
            b_starts.append(t)
        key_limits.admit(redis_conn, take(queue, put(queue, f"a{i}", "budget", "10/1s").id), now=t + 1.5)
        t += 3.0
    # A's starts count against B too (one key, one budget): B's first is its only one in 18 s.
    assert b_starts == [1000.0]
    # A's own window still counts only its second: A is not held by B's older starts.
    assert key_limits.admit(redis_conn, take(queue, put(queue, "a-late", "budget", "10/1s").id), now=t + 5) is None
    # The log lives as long as the longest window asks (2 x 20 s), not A's 2 s.
    assert redis_conn.pttl(key_limits.log_key("budget")) > 30_000


@ONE_PASS
@pytest.mark.parametrize(
    ("value", "fault"),
    [
        (1.0, "not a float or boolean"),
        (True, "not a float or boolean"),
        ("a\tb", "control characters"),
        ("/v1/chat", 'begin with "/"'),
        ("v1//chat", 'hold "//"'),
        ("klr_budget", "task 'klr_budget'"),
    ],
)
def test_rate_keys_that_would_share_or_escape_a_budget_are_refused_at_submission(value, fault):
    """1, 1.0 and true are one account to the task, so only str and int make keys; a key no
    PUT /rate-limits/<key> can name is refused; a value naming a task keyed by its own name would
    spend (or, with another window, erase) that task's budget."""
    spec = registry.get_task("klr_burst")
    with pytest.raises(ValidationFailed, match=fault):
        spec.rate_for([], {"provider": value})
    assert spec.rate_for([], {"provider": 1}) == ("1", "10/second")
    assert spec.rate_for([], {"provider": "1"}) == ("1", "10/second")


def test_a_rate_key_naming_a_tasks_budget_is_a_422_and_nothing_is_recorded(review_settings, client):
    response = client.post("/tasks/klr_burst", json={"kwargs": {"provider": "klr_budget"}})
    assert response.status_code == 422, response.get_json()
    assert "klr_budget" in response.get_json()["error"]["message"]
    assert client.get("/jobs", query_string={"task": "klr_burst"}).get_json()["jobs"] == []


def test_a_job_recorded_before_its_task_got_a_rate_key_is_not_stuck(
    review_settings, app, client, redis_conn, monkeypatch
):
    """Acknowledged with provider={"region": "eu"} while the task had no limit; a deploy declares
    rate_key="provider"; Redis loses the job. The requeue used to raise ValidationFailed in _send
    on every reconciler pass (PENDING forever): it now sends the job under the task's name."""
    response = client.post("/tasks/klr_later", json={"kwargs": {"provider": {"region": "eu"}}})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    spec = registry.get_task("klr_later")
    later = dataclasses.replace(spec, rate_limit="60/minute", rate_key="provider")
    monkeypatch.setitem(registry._REGISTRY, "klr_later", later)
    monkeypatch.setitem(registry._BY_PATH, spec.path, later)
    redis_conn.flushall()  # a managed Redis that lost its data
    for _ in range(3):
        age(app, job_id)
        services(app).reconciler.run_once()
    job = get_job(client, job_id)
    listed = redis_conn.lrange("rq:queue:default", 0, -1)
    assert job["status"] == "QUEUED" and listed, job
    rq_job = RQJob.fetch(listed[0].decode(), connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.meta["rate"] == {"key": "klr_later", "limit": "60/minute"}


@ONE_PASS
def test_a_high_priority_job_is_released_before_low_ones_of_its_key(redis_conn):
    q = queues(redis_conn)
    assert key_limits.admit(redis_conn, take(q["low"], put(q["low"], "l0", "openai", "1/10s").id), now=100.0) is None
    for i in range(1, 4):
        assert key_limits.admit(redis_conn, take(q["low"], put(q["low"], f"l{i}", "openai", "1/10s").id), now=100.0 + i)
    assert key_limits.admit(redis_conn, take(q["high"], put(q["high"], "h0", "openai", "1/10s").id), now=105.0)
    assert key_limits.release_due(redis_conn, now=110.5) == 1
    assert ids(q["high"]) + ids(q["low"]) == ["h0"]
    # Within one priority, oldest first.
    assert key_limits.release_due(redis_conn, now=120.5) == 1
    assert ids(q["low"]) == ["l1"]


@ONE_PASS
def test_held_jobs_of_a_paused_queue_take_no_slot_and_keep_their_order(redis_conn):
    """With high paused, its held jobs used to take every free slot of their key (moved onto the
    paused list, where their grants expired unused) while default's job of the key waited."""
    q = queues(redis_conn)
    assert key_limits.admit(redis_conn, take(q["high"], put(q["high"], "h0", "openai", "1/10s").id), now=100.0) is None
    for i in range(1, 4):
        assert key_limits.admit(redis_conn, take(q["high"], put(q["high"], f"h{i}", "openai", "1/10s").id), now=100 + i)
    assert key_limits.admit(redis_conn, take(q["default"], put(q["default"], "d0", "openai", "1/10s").id), now=105.0)
    redis_conn.sadd(PAUSED_KEY, "high")
    assert key_limits.release_due(redis_conn, now=110.5) == 1
    assert (ids(q["default"]), ids(q["high"])) == (["d0"], [])
    assert key_limits.held_ids(redis_conn) == {"h1", "h2", "h3"}
    # Resumed: the next slots go to high's jobs in their order, and each lands behind the one before.
    redis_conn.srem(PAUSED_KEY, "high")
    redis_conn.lrem(q["default"].key, 1, "d0")
    redis_conn.hset(key_limits.OVERRIDES, "openai", "3/10s")
    key_limits.wake(redis_conn, "openai")
    assert key_limits.release_due(redis_conn, now=121.0) == 3
    assert ids(q["high"]) == ["h1", "h2", "h3"]


@ONE_PASS
def test_a_clock_stepped_back_an_hour_does_not_stall_the_key_for_an_hour(redis_conn):
    queue = queues(redis_conn)["default"]
    for i in range(2):
        assert (
            key_limits.admit(redis_conn, take(queue, put(queue, f"s{i}", "openai", "2/minute").id), now=10_000.0)
            is None
        )
    back = 10_000.0 - 3600  # Redis's clock steps back one hour
    assert key_limits.admit(redis_conn, take(queue, put(queue, "late", "openai", "2/minute").id), now=back + 1) is None


@ONE_PASS
def test_the_hold_metric_counts_a_key_first_held_after_1000_others(redis_conn):
    """The counts used to keep the first 1,000 keys forever: openai, first held later, was never
    counted by name. Now the least held other key folds into "(other keys)"."""
    queue = queues(redis_conn)["default"]
    redis_conn.zadd(key_limits.HELD_TOTAL, {f"tenant-value-{i}": 1 for i in range(key_limits.MAX_TOTAL_KEYS)})
    for i in range(3):
        key_limits.admit(redis_conn, take(queue, put(queue, f"o{i}", "openai", "1/minute").id), now=500.0 + i)
    totals = key_limits.held_totals(redis_conn, top=100)
    assert totals["openai"] == 2 and totals[key_limits.OTHER_KEY] == 1
    assert redis_conn.zcard(key_limits.HELD_TOTAL) == key_limits.MAX_TOTAL_KEYS


# Review 15c: a paused queue's held jobs beyond one release step, and the key's window record.


@ONE_PASS
def test_a_paused_queues_held_jobs_beyond_one_release_step_do_not_stall_the_key_on_open_queues(redis_conn, monkeypatch):
    """release_due used to look at RELEASE_JOBS held ids of a key per call from the head of the held
    set, where a paused high queue's jobs sort first: with more of them than that, every call spent
    its step skipping them, and default's job of the key never went though slots were free.
    RELEASE_JOBS is lowered to 3 here instead of holding 1,001 jobs."""
    monkeypatch.setattr(key_limits, "RELEASE_JOBS", 3)
    q = queues(redis_conn)
    assert key_limits.admit(redis_conn, take(q["high"], put(q["high"], "h0", "openai", "1/10s").id), now=100.0) is None
    for i in range(1, 5):  # 4 > RELEASE_JOBS held jobs of high
        assert key_limits.admit(
            redis_conn, take(q["high"], put(q["high"], f"h{i}", "openai", "1/10s").id), now=100 + i / 10
        )
    assert key_limits.admit(redis_conn, take(q["default"], put(q["default"], "d0", "openai", "1/10s").id), now=101.0)
    redis_conn.sadd(PAUSED_KEY, "high")  # an incident: high paused
    released = [key_limits.release_due(redis_conn, now=t) for t in (111.0, 112.0, 113.0, 130.0, 200.0)]
    assert ids(q["default"]) == ["d0"], f"default's job not released in 90 s of free slots ({released})"
    assert ids(q["high"]) == [] and key_limits.held_ids(redis_conn) == {f"h{i}" for i in range(1, 5)}
    # Resumed: high's jobs go in their order, one a slot (its 1/10s), the paused wait kept their places.
    redis_conn.srem(PAUSED_KEY, "high")
    assert [key_limits.release_due(redis_conn, now=t) for t in (201.0, 211.5, 222.0)] == [1, 1, 1]
    assert ids(q["high"]) == ["h3", "h2", "h1"]


@ONE_PASS
def test_a_removed_day_override_does_not_make_the_key_keep_a_day_of_starts(redis_conn):
    """The key's window record only grew: one admission under a "1/day" override (DELETEd a moment
    later) made the log keep 24 h of starts for as long as jobs kept coming (432,000 entries a day at
    5/second). Now a window is kept while in use: the override's DELETE forgets it at once."""
    queue = queues(redis_conn)["default"]
    redis_conn.hset(key_limits.OVERRIDES, "openai", "1/day")  # PUT /rate-limits/openai
    assert key_limits.admit(redis_conn, take(queue, put(queue, "first", "openai", "5/second").id), now=1000.0) is None
    limit_overrides.replace(redis_conn, dict, force=True, wake="openai")  # DELETE /rate-limits/openai
    for i in range(400):
        assert (
            key_limits.admit(redis_conn, take(queue, put(queue, f"j{i}", "openai", "5/second").id), now=1001.0 + i / 4)
            is None
        )
    kept = redis_conn.zcard(key_limits.log_key("openai"))
    assert kept <= 10, f"the key's log keeps {kept} starts for a 5/second limit"
    assert 0 < redis_conn.pttl(key_limits.log_key("openai")) <= 2000


@ONE_PASS
def test_a_window_no_limit_used_for_its_own_length_is_forgotten(redis_conn):
    """A task declaring "2/minute" on a shared key, then only "5/second" jobs of the key (an override
    set and lost in Redis, or the slow task gone): after a minute unused the log keeps a second."""
    queue = queues(redis_conn)["default"]
    assert key_limits.admit(redis_conn, take(queue, put(queue, "slow", "openai", "2/minute").id), now=1000.0) is None
    t = 1001.0
    while t < 1100:
        assert (
            key_limits.admit(redis_conn, take(queue, put(queue, f"f{round(t * 2)}", "openai", "5/second").id), now=t)
            is None
        )
        if t < 1059:  # still within the slow limit's minute: the log keeps a minute of starts
            assert redis_conn.zcard(key_limits.log_key("openai")) == 1 + round((t - 1001.0) / 0.5) + 1
        t += 0.5
    assert redis_conn.zcard(key_limits.log_key("openai")) <= 3
    # Used again: its own starts are older than its window, so none of them was needed.
    assert key_limits.admit(redis_conn, take(queue, put(queue, "slow2", "openai", "2/minute").id), now=t) is not None


def covered(tries: list[float], start: float, window: float, since: float) -> bool:
    """Whether a limit was tried in every ``window``-long stretch ending in [start - window, start]
    (from ``since``, the first start: no trim before it): its window was then in use at every trim
    that could drop a start it must count."""
    reach = max(start - window, since)  # every r from here on needs a try in (r - window, r]
    for at in sorted(t for t in tries if start - 2 * window < t <= start):
        if at > reach:  # nothing tried in (reach - window, reach]
            return False
        reach = max(reach, at + window)
    return reach > start


@ONE_PASS
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limits=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 6)), min_size=2, max_size=2, unique_by=lambda x: x[1]),
    steps=st.lists(
        st.tuples(st.sampled_from(["pop", "pop", "release", "wait"]), st.sampled_from([0.25, 0.5, 1.0, 4.0])),
        max_size=80,
    ),
)
def test_two_limits_on_one_key_count_every_start_while_in_use(redis_conn, limits, steps):
    """One key, two limits with different windows, jobs of both interleaved, windows forgotten when
    unused: while a limit is in use, the window ending at each of its starts holds no more of the
    key's starts (admitted up to it) than that limit."""
    redis_conn.flushall()
    queue = queues(redis_conn)["default"]
    texts = [Rate(count, window).text for count, window in limits]
    for index in range(16):
        put(queue, f"p{index}", "shared", texts[index % 2])
    now, started, tries = 1000.0, {}, {text: [] for text in texts}
    for action, step in steps:
        if action == "wait":
            now += step
        elif action == "release":
            key_limits.release_due(redis_conn, now=now)
        elif rq_id := redis_conn.lpop(queue.key):
            job = RQJob.fetch(rq_id.decode(), connection=redis_conn, serializer=JSONSerializer)
            text = job.meta["rate"]["limit"]
            tries[text].append(now)
            if key_limits.admit(redis_conn, job, now=now) is None:
                assert job.id not in started
                started[job.id] = (now, text, len(started))
    checked = 0
    for at, text, order in started.values():
        rate = parse_rate(text)
        if covered(tries[text], at, rate.window_seconds, 1000.0):
            checked += 1
            # Starts admitted up to this one (a later one under a looser limit may add to its window).
            before = [t for t, _, earlier in started.values() if earlier <= order and t > at - rate.window_seconds]
            assert len(before) <= rate.count, (text, started)
    note(f"{checked} starts checked")


@ONE_PASS
def test_an_override_deleted_keeps_the_starts_the_declared_limit_counts(redis_conn):
    """Forgetting the deleted override's window must not forget the declared limit's, though both
    are 20 s: B's three starts under "5/20s" still count against its "2/20s" after the DELETE, even
    once another limit of the key ("10/second") trimmed the log in between."""
    queue = queues(redis_conn)["default"]
    limit_overrides.replace(redis_conn, lambda: {"shared": "5/20s"}, force=True, wake="shared")
    for i in range(3):
        assert (
            key_limits.admit(redis_conn, take(queue, put(queue, f"b{i}", "shared", "2/20s").id), now=1000.0 + i) is None
        )
    limit_overrides.replace(redis_conn, dict, force=True, wake="shared")
    assert key_limits.admit(redis_conn, take(queue, put(queue, "a0", "shared", "10/second").id), now=1004.0) is None
    assert key_limits.admit(redis_conn, take(queue, put(queue, "b3", "shared", "2/20s").id), now=1005.0) == 1022.0
