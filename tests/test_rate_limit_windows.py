"""Rate limits per key with real workers (issue 15 item 2): a backlog of jobs of a limited task,
several workers. In every sliding window the starts of the key number at most the limit; every
full window uses nearly all of it; a held job holds no worker (another task's job submitted
meanwhile starts ahead of the held ones); every job completes on its first attempt. Starts come
from the jobs' ``started_at`` (the worker's report of the start).

Under make test: "5/2s", 3 workers, 30 jobs (about 12 s of starts). With CHAOS_SOAK=1, the
issue's figure: "60/minute", 4 workers, 500 jobs, measured over 2 full minutes."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from backend.broker import key_limits
from tests.chaos.settings import SOAK
from tests.conftest import TASK_MODULES
from tests.helpers import wait_until

MODULES = TASK_MODULES + ",tests.rate_limit_fixtures"


@pytest.fixture
def limited_settings(settings) -> dict:
    settings["TASK_MODULES"] = MODULES
    return settings


def submit_backlog(client, task: str, n: int, provider: str) -> list[str]:
    """``n`` jobs of ``task`` for ``provider``, in batches of at most 500; their ids."""
    ids: list[str] = []
    while len(ids) < n:
        size = min(500, n - len(ids))
        jobs = (
            [{"args": [1, 2], "kwargs": {"provider": provider}}] * size
            if task == "limited_add"
            else [{"kwargs": {"prompt": "hello", "provider": provider}}] * size
        )
        response = client.post(f"/tasks/{task}/batch", json={"jobs": jobs})
        assert response.status_code == 202, response.get_json()
        ids.extend(response.get_json()["job_ids"])
    return ids


def jobs_of(client, task: str) -> dict[str, dict]:
    """Every job of ``task`` the store holds, by id (GET /jobs pages)."""
    found, cursor = {}, None
    while True:
        query = f"/jobs?task={task}&limit=500" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query).get_json()
        found.update({job["job_id"]: job for job in page["jobs"]})
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def windows_figure(starts: list[float], window: float, span: float | None = None) -> tuple[int, list[int]]:
    """(the most starts in any sliding ``window`` ending at a start, the starts in each full
    window counted from the first start, up to ``span`` seconds or the last start)."""
    starts = sorted(starts)
    most = max(sum(1 for t in starts if end - window < t <= end) for end in starts)
    first = starts[0]
    end = first + span if span is not None else starts[-1]
    full = int((end - first) // window)
    per_window = [sum(1 for t in starts if first + k * window <= t < first + (k + 1) * window) for k in range(full)]
    return most, per_window


class AdmissionLog:
    """Every start the limiter logged (``key_limits``: a ZSET per key, member the RQ id, score the
    time of its admission by Redis' clock), read every 50 ms while the backlog runs. An entry stays
    in the log for at least its window, so none is missed; a release's grant is replaced by the
    job's own admission, whose time is the one kept."""

    def __init__(self, redis_conn) -> None:
        self.redis, self.admitted, self._stop = redis_conn, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for log in self.redis.scan_iter(match=key_limits.log_key("*")):
                self.admitted.update(dict(self.redis.zrange(log, 0, -1, withscores=True)))

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return list(self.admitted.values())


def run_backlog(client, redis_conn, start_worker, *, task, jobs, workers, span=None) -> tuple[list[float], dict]:
    """Submit the backlog, start the workers, and, once jobs are held, another task's job; wait for
    every job (or for ``span`` seconds of starts); return the limited starts and the other job
    (and, under "admitted", the limiter's logged starts)."""
    ids = submit_backlog(client, task, jobs, provider="upstream")
    admissions = AdmissionLog(redis_conn)
    for n in range(workers):
        start_worker("--name", f"limited-{n}", env={"TASK_MODULES": MODULES})
    wait_until(lambda: len(key_limits.held_ids(redis_conn)) >= 5, timeout=60, what="jobs held by the limit")
    other = client.post("/tasks/echo", json={"args": ["not limited"]}).get_json()
    if span is None:
        wait_until(
            lambda: sum(job["status"] == "COMPLETED" for job in jobs_of(client, task).values()) == jobs,
            timeout=60 + jobs,
            what="every limited job to complete",
        )
    else:
        wait_until(lambda: any(job["started_at"] for job in jobs_of(client, task).values()), timeout=60, what="a start")
        first = min(epoch(job["started_at"]) for job in jobs_of(client, task).values() if job["started_at"])
        time.sleep(max(0.0, first + span + 2 - time.time()))
    limited = {job_id: job for job_id, job in jobs_of(client, task).items() if job_id in set(ids)}
    starts = [epoch(job["started_at"]) for job in limited.values() if job["started_at"]]
    other_job = client.get(f"/jobs/{other['job_id']}").get_json()
    return starts, {"other": other_job, "limited": limited, "admitted": admissions.stop()}


@pytest.mark.one_pass("the limiter lives in Redis and the workers; the store only records the starts")
def test_starts_stay_within_the_limit_and_use_it_and_held_jobs_hold_no_worker(
    limited_settings, client, redis_conn, start_worker
):
    starts, jobs = run_backlog(client, redis_conn, start_worker, task="limited_add", jobs=30, workers=3)
    # The limit holds for the starts the limiter admits (Redis' clock). The workers' reported
    # start times come a fork and a report later, by a few ms to a few hundred under load: with
    # the limit saturated, admissions 2.000 s apart gave reported starts 1.99 s apart (6 in a
    # window, the fresh-clone CI on fb4f86a), so those are checked for the use of the limit only.
    admitted = jobs["admitted"]
    most, _ = windows_figure(admitted, window=2.0 - 1e-6)  # (a microsecond less: float sums)
    _, per_window = windows_figure(starts, window=2.0)
    print(
        f"\nrate limit 5/2s, 3 workers, 30 jobs: at most {most} admissions in a 2-s window; full windows {per_window}"
    )
    assert len(starts) == 30 and len(admitted) == 30, (len(starts), len(admitted))
    assert most <= 5, sorted(admitted)
    assert per_window and min(per_window) >= 4, per_window
    assert {job["retry_count"] for job in jobs["limited"].values()} == {0}
    # The other task's job was submitted while jobs were held: no worker was kept by them, so it
    # started ahead of the held ones (the last 5 limited starts at least came after it).
    other = jobs["other"]
    assert other["status"] == "COMPLETED", other
    assert sum(1 for t in starts if t > epoch(other["started_at"])) >= 5, (other["started_at"], sorted(starts))


@pytest.mark.skipif(not SOAK, reason="the issue's 2-minute figure runs with CHAOS_SOAK=1")
@pytest.mark.timeout(600)
def test_soak_60_a_minute_with_4_workers_and_500_jobs(settings, client, redis_conn, start_worker):
    starts, _ = run_backlog(
        client, redis_conn, start_worker, task="call_limited_provider", jobs=500, workers=4, span=120
    )
    first = min(starts)
    measured = [t for t in starts if t < first + 120]
    most, per_minute = windows_figure(measured, window=60.0, span=120)
    print(
        f"\nrate limit 60/minute, 4 workers, 500 jobs: at most {most} starts in a 60-s window; per minute {per_minute}"
    )
    assert most <= 60
    assert len(per_minute) == 2 and min(per_minute) >= 55, per_minute
