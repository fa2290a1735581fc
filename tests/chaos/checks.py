"""The checks every scenario ends with: wait until each job is terminal (failing on one stuck
longer than the recovery bound), then the promise: store and RQ agree, no backward move, no 5xx."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import requests

from tests.chaos.settings import RECOVERY_BOUND, RQ_AGREES, SLOWEST_DRAIN_RATE, TERMINAL

#: A job waiting for a worker, and what ends a wait by serving it.
WAITING = frozenset({"PENDING", "QUEUED"})
SERVED = frozenset({"PROCESSING", "COMPLETED", "FAILED"})

if TYPE_CHECKING:  # types only: the stack waits with wait_until, so it imports this module
    from tests.chaos.recorder import Recorder
    from tests.chaos.stack import Cluster


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout} s")


def drain_timeout(live: int, *, rate: float = SLOWEST_DRAIN_RATE, base: float = RECOVERY_BOUND + 60) -> float:
    """A safety net for waiting on ``live`` jobs that grows with them: ``base`` plus the time
    the slowest drain a working stack may have (``rate`` jobs per second) takes over them.

    What fails a wait first is a job-level check (``wait_all_terminal``); this only ends a
    drain that keeps changing without ending, which the per-job checks cannot see.
    """
    return base + live / SLOWEST_DRAIN_RATE


def wait_all_terminal(
    cluster: Cluster,
    job_ids: Iterable[str],
    *,
    timeout: float,
    stall: float = RECOVERY_BOUND,
    recorder: Recorder | None = None,
    max_run: float | None = None,
    fifo: bool = False,
) -> dict[str, dict]:
    """Poll until every job in ``job_ids`` is terminal; return them by id.

    Fails when ``timeout`` passes, when none of the live jobs changed in any way for
    ``stall`` seconds (nothing may be stuck for longer than the recovery bound), or, given
    the ``recorder`` and ``max_run`` (the longest a task of the scenario runs), as soon as a
    job has been PROCESSING the same attempt for longer than ``max_run`` + ``stall``.

    With ``fifo`` (and the recorder; for jobs without dependencies), a long backlog may take
    its time, but a job may not be left behind: it fails as soon as a waiting job was
    overtaken (``overtaken``), which tells "stuck" from "draining" whatever the job count.
    Prints the drain's figures (``drain_figures``) whether it ends or fails.
    """
    wanted = set(job_ids)
    started = time.time()
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    last_view: dict[str, tuple] = {}
    jobs: dict[str, dict] = {}
    live_at_start: int | None = None
    try:
        while True:
            if recorder is not None:
                listing = recorder.poll()
            else:
                try:
                    listing = cluster.api.all_jobs()
                except requests.RequestException:
                    listing = None
            if listing is not None:
                jobs = {job["job_id"]: job for job in listing if job["job_id"] in wanted}
                live = [job for job_id, job in jobs.items() if job["status"] not in TERMINAL]
                if live_at_start is None:
                    live_at_start = len(live)
                missing = wanted - set(jobs)
                assert not missing, f"acknowledged jobs missing from the store: {sorted(missing)[:10]}"
                if not live:
                    return jobs
                if recorder is not None and max_run is not None:
                    overdue = [
                        cluster.describe(job)
                        for job in live
                        if job["status"] == "PROCESSING"
                        and time.time() - recorder.since(job["job_id"]) > stall + max_run
                    ]
                    if overdue:
                        raise AssertionError(
                            f"{len(overdue)} job(s) PROCESSING for more than {max_run} + {stall} s, stuck:\n"
                            + "\n".join([*overdue[:20], cluster.reconciler_lock()])
                        )
                if recorder is not None and fifo:
                    left = overtaken(recorder, jobs, slack=stall)
                    if left:
                        raise AssertionError(
                            f"{len(left)} job(s) left waiting while jobs that became ready more than {stall} s "
                            "after them ran (stuck, not draining):\n"
                            + "\n".join([*left[:20], cluster.reconciler_lock()])
                        )
                view = {job["job_id"]: (job["status"], job["attempt"], job["progress"]) for job in live}
                if view != last_view:
                    last_view = view
                    last_change = time.monotonic()
            now = time.monotonic()
            stuck = [cluster.describe(job) for job in jobs.values() if job["status"] not in TERMINAL]
            if stuck and (now - last_change > stall or now > deadline):
                stuck.append(cluster.reconciler_lock())
            if now - last_change > stall:
                raise AssertionError(f"{len(stuck)} job(s) unchanged for {stall} s, stuck:\n" + "\n".join(stuck[:20]))
            if now > deadline:
                raise AssertionError(f"{len(stuck)} job(s) not terminal after {timeout} s:\n" + "\n".join(stuck[:20]))
            time.sleep(0.25)
    finally:
        # Lazy: figures imports the stack, which imports this module.
        from tests.chaos.figures import drain_figures, report_figures

        report_figures("drain", drain_figures(cluster, jobs, recorder, started=started, live_at_start=live_at_start))


def _epoch(value: str | None) -> float | None:
    """An API time (ISO 8601, UTC) as a Unix time."""
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def overtaken(recorder: Recorder, jobs: dict[str, dict], *, slack: float) -> list[str]:
    """Waiting jobs that the queue went past: still PENDING or QUEUED although a job of the
    same priority that became ready more than ``slack`` seconds after them already ran.

    A queue serves its jobs in order, so however long the backlog, a job that waits while
    later ones run is not in the queue: lost by Redis and not yet re-queued, or held by a
    backoff (its ``next_retry_at`` and ``run_at`` count as when it became ready). ``slack``
    is the recovery bound: what the reconciler may take to put a lost job back.
    """
    served: dict[str, float] = {}  # priority -> the latest time a job seen waiting was ready
    waiting: list[tuple[float, dict]] = []
    for job_id, job in jobs.items():
        if job.get("depends_on"):
            continue
        history = list(recorder.history.get(job_id, ()))
        for (at, attempt, status, _), (_, next_attempt, next_status, _) in zip(history, history[1:], strict=False):
            if status in WAITING and next_attempt == attempt and next_status in SERVED:
                served[job["priority"]] = max(served.get(job["priority"], 0.0), at)
        if job["status"] in WAITING and history:
            ready = max(t for t in (history[-1][0], _epoch(job["next_retry_at"]), _epoch(job["run_at"])) if t)
            waiting.append((ready, job))
    return [
        f"ready {served[job['priority']] - ready:.1f} s before a job that ran: {describe_waiting(job)}"
        for ready, job in waiting
        if served.get(job["priority"], 0.0) - ready > slack
    ]


def describe_waiting(job: dict) -> str:
    keys = ("job_id", "status", "attempt", "retry_count", "next_retry_at", "run_at", "error", "updated_at")
    return str({k: job.get(k) for k in keys})


def store_rq_mismatches(cluster: Cluster, jobs: Iterable[dict], *, gone_ok: Iterable[str] = ()) -> list[str]:
    """Terminal jobs whose current RQ job (``rq_job_id``) ended differently; ``gone_ok``:
    jobs whose RQ job the test itself deleted, for which "gone" agrees with any end."""
    gone_ok = set(gone_ok)
    found = []
    for job in jobs:
        status = cluster.rq_status(job["rq_job_id"])
        if status is None and job["job_id"] in gone_ok:
            continue
        if status not in RQ_AGREES.get(job["status"], set()):
            found.append(f"{job['job_id']}: store {job['status']} but RQ {job['rq_job_id']} is {status!r}")
    return found


def check_invariants(
    cluster: Cluster, jobs: dict[str, dict], recorder: Recorder | None, *, gone_ok: Iterable[str] = ()
) -> None:
    """The promise, for ``jobs`` (already waited for with ``wait_all_terminal``):
    terminal, agreeing with RQ, never moved backwards, and no 500 anywhere."""
    live = [cluster.describe(job) for job in jobs.values() if job["status"] not in TERMINAL]
    assert not live, "jobs not terminal:\n" + "\n".join(live[:20])
    mismatches = store_rq_mismatches(cluster, jobs.values(), gone_ok=gone_ok)
    assert not mismatches, f"{len(mismatches)} store/RQ mismatch(es):\n" + "\n".join(mismatches[:20])
    if recorder is not None:
        backwards = recorder.violations()
        assert not backwards, f"{len(backwards)} backward move(s):\n" + "\n".join(backwards[:20])
    check_no_server_errors(cluster)


def check_no_server_errors(cluster: Cluster) -> None:
    assert not cluster.api.server_errors, "HTTP 5xx answers:\n" + "\n".join(cluster.api.server_errors[:20])
    api_log = cluster.api_output()
    assert "unhandled error" not in api_log, f"the API logged an unhandled error:\n{api_log[-5000:]}"
    # Werkzeug's access log has every request, the workers' reports included.
    answered_5xx = [line for line in api_log.splitlines() if re.search(r'HTTP/1\.[01]" 5(?!03)\d\d ', line)]
    assert not answered_5xx, "the API answered 5xx:\n" + "\n".join(answered_5xx[:20])
    for worker in cluster.workers:
        out = worker.output()
        for needle in ("HTTP 500", "report answered 500"):
            assert needle not in out, f"worker {worker.name} got a 500 from the API:\n{out[-3000:]}"
