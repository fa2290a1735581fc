"""The worker's pop script against the session's real Redis (no store, no workers but the last
test's): fair share by owner and weight, priorities first, stale index entries skipped and not
charged, an empty queue dropping its fair state, pauses read atomically, the blocking fallback
pushing a job of a queue paused meanwhile back to the front, and never RQ's intermediate list."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rq.job import Job as RQJob

from backend.broker.fair_queue import FairQueues, fair_prefix
from backend.broker.pauses import PAUSED_KEY
from backend.broker.queues import QueueAdapter
from backend.core.settings import SettingError, Settings
from tests.conftest import ROOT
from tests.helpers import submit, wait_for_status

pytestmark = pytest.mark.one_pass("the pop script and the worker's dequeue: Redis only, no store")

FUNC = "backend.tasks.examples.add"


@pytest.fixture
def adapter(redis_conn) -> QueueAdapter:
    return QueueAdapter(redis_conn, result_ttl=600, failure_ttl=600)


def put(adapter: QueueAdapter, owner: str | None, n: int, *, priority: str = "default", tag: str = "") -> list[str]:
    """``n`` jobs of ``owner`` on ``priority``; their RQ ids (job ids name the owner)."""
    return [
        adapter.enqueue(
            job_id=f"{owner}{tag}-{i}", attempt=1, func_path=FUNC, args=[1, 2], kwargs={},
            priority=priority, timeout=60, owner=owner,
        )
        for i in range(n)
    ]  # fmt: skip


def owner_of(rq_id: str) -> str:
    return rq_id.split("-")[0]


def drain(fair: FairQueues, n: int, queues=("high", "default", "low")) -> list[str]:
    taken = []
    for _ in range(n):
        popped = fair.take(queues)[0]
        assert isinstance(popped, tuple), (taken, popped)
        taken.append(popped[1])
    return taken


def test_a_newcomer_is_served_at_once_and_owners_alternate(adapter, redis_conn):
    fair = FairQueues(redis_conn)
    put(adapter, "a", 50)
    first = drain(fair, 5)
    assert [owner_of(i) for i in first] == ["a"] * 5  # one owner alone: its jobs in order
    assert first == [f"a-{i}-1" for i in range(5)]
    put(adapter, "b", 3)
    # b's first job is the next one started, then the owners alternate until b has none left.
    assert [owner_of(i) for i in drain(fair, 8)] == ["b", "a", "b", "a", "b", "a", "a", "a"]
    # The RQ list stays complete: what is left is a's, in order.
    assert [i.decode() for i in redis_conn.lrange("rq:queue:default", 0, -1)] == [f"a-{i}-1" for i in range(10, 50)]


def test_weights_give_an_owner_three_starts_per_start_of_another(adapter, redis_conn):
    put(adapter, "a", 60)
    put(adapter, "b", 60)
    owners = [owner_of(i) for i in drain(FairQueues(redis_conn, weights={"a": 3}), 40)]
    assert owners.count("a") == 30 and owners.count("b") == 10, owners
    # Interleaved, not in runs: every 4 starts hold b once.
    assert all(owners[k : k + 4].count("b") == 1 for k in range(0, 40, 4)), owners


def test_priorities_come_first_whoever_waited_longest(adapter, redis_conn):
    low = put(adapter, "patient", 2, priority="low")
    default = put(adapter, "middle", 1, priority="default")
    high = put(adapter, "late", 1, priority="high")
    assert drain(FairQueues(redis_conn), 4) == [*high, *default, *low]


def test_stale_entries_are_skipped_and_not_charged(adapter, redis_conn):
    a = put(adapter, "a", 5)
    b = put(adapter, "b", 5)
    for rq_id in a[:3]:
        adapter.fence(rq_id)
        adapter.cancel(rq_id)  # RQ's cancel: LREM from the list, status canceled; the index keeps it
    # Taken by the blocking fallback (status still queued, no longer in the list).
    assert redis_conn.lpop("rq:queue:default") == a[3].encode()
    assert FairQueues(redis_conn).after_blocking_take("default", a[3]) is not None
    # a's stale ids are dropped without a charge: a's last job still goes first (a < b at equal time).
    assert drain(FairQueues(redis_conn), 6) == [a[4], b[0], b[1], b[2], b[3], b[4]]
    assert not redis_conn.exists(fair_prefix("default") + "index")


def test_an_empty_queue_drops_its_fair_state(adapter, redis_conn):
    put(adapter, "a", 3)
    put(adapter, "b", 3)
    redis_conn.delete("rq:queue:default")  # every job taken by the fallback, say
    assert redis_conn.keys("jobservice:fair:*")
    assert FairQueues(redis_conn).take(["high", "default", "low"])[0] == ["high", "default", "low"]
    assert redis_conn.keys("jobservice:fair:*") == []


def test_jobs_rq_pushed_itself_go_first_when_at_the_head(adapter, redis_conn):
    put(adapter, "a", 3)
    redis_conn.lpush("rq:queue:default", "released-1")  # a limiter's release, RQ's scheduler
    assert FairQueues(redis_conn).take(["default"])[0][:2] == ("default", "released-1")


def test_a_paused_queue_is_never_popped(adapter, redis_conn):
    redis_conn.sadd(PAUSED_KEY, "default")
    put(adapter, "a", 1)  # enqueued after the pause
    assert FairQueues(redis_conn).take(["high", "default", "low"])[0] == ["high", "low"]
    assert redis_conn.llen("rq:queue:default") == 1
    low = put(adapter, "a", 1, priority="low", tag="low")
    assert FairQueues(redis_conn).take(["high", "default", "low"])[0][:2] == ("low", low[0])


def test_the_fallback_puts_a_job_of_a_queue_paused_meanwhile_back_at_the_front(adapter, redis_conn):
    jobs = put(adapter, "a", 2)
    taken = redis_conn.lpop("rq:queue:default").decode()  # BLPOP took it; then the pause landed
    redis_conn.sadd(PAUSED_KEY, "default")
    assert FairQueues(redis_conn).after_blocking_take("default", taken) is None
    assert [i.decode() for i in redis_conn.lrange("rq:queue:default", 0, -1)] == jobs


def test_with_fair_share_off_nothing_is_indexed_and_the_pop_is_first_come_first_served(redis_conn):
    adapter = QueueAdapter(redis_conn, result_ttl=600, failure_ttl=600, fair_share=False)
    a = put(adapter, "a", 3)
    b = put(adapter, "b", 1)
    assert redis_conn.keys("jobservice:fair:*") == []
    assert drain(FairQueues(redis_conn, fair=False), 4) == [*a, *b]


def test_workers_with_fair_share_off_keep_no_state_of_an_api_that_indexes(adapter, redis_conn):
    put(adapter, "a", 3)  # this API has FAIR_SHARE on
    fifo = FairQueues(redis_conn, fair=False)
    assert isinstance(fifo.take(["default"])[0], tuple)
    assert redis_conn.keys("jobservice:fair:*") == []  # dropped while the list still holds jobs
    put(adapter, "b", 1)
    assert drain(fifo, 3) == ["a-1-1", "a-2-1", "b-0-1"]


def test_a_worker_with_two_of_three_queues_paused_leaves_no_intermediate_entry(client, redis_conn, run_burst_worker):
    redis_conn.sadd(PAUSED_KEY, "high", "low")
    job = submit(client, "add", args=[2, 3])
    run_burst_worker("--queues", "high,default,low", simple=False)
    assert wait_for_status(client, job["job_id"], {"COMPLETED"})["result"] == 5
    for name in ("high", "default", "low"):
        assert redis_conn.llen(f"rq:queue:{name}:intermediate") == 0
    assert RQJob.fetch(f"{job['job_id']}-1", connection=redis_conn).get_status() == "finished"


@pytest.mark.parametrize("bad", ["alice", "alice:0", "alice:1.5", ":3", "alice:2,alice:3", "alice:x"])
def test_a_bad_owner_weights_setting_stops_the_process_at_start_naming_it(bad):
    with pytest.raises(SettingError, match="OWNER_WEIGHTS"):
        Settings.load({"OWNER_WEIGHTS": bad})
    assert Settings.load({"OWNER_WEIGHTS": "alice:3, bob:2"}).owner_weights == "alice:3, bob:2"


def test_a_worker_with_bad_owner_weights_refuses_to_start_with_one_line():
    env = {**os.environ, "OWNER_WEIGHTS": "alice:0"}
    result = subprocess.run(
        [sys.executable, "backend/worker.py", "--burst"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "refusing to start the worker: OWNER_WEIGHTS entry 'alice:0'" in result.stderr
    assert "Traceback" not in result.stderr
