"""What the Redis failover scenarios (F16, F17) measure around one moment, the fault: the runs
in flight at it, the reruns it does not explain, the jobs whose RQ job it took, and how long
until the work was done.

Why apart from figures.py: those figures count worker kills (``cluster.kills``); here no worker
is killed, Redis lost its writes, and a run that straddled that moment is the one that may run
again.
"""

from __future__ import annotations

from tests.chaos.load import unix_time
from tests.chaos.processes import Execution
from tests.chaos.recorder import Recorder
from tests.chaos.stack import Cluster

#: Longer than the recorder's interval: an attempt first seen this long after the fault may
#: have been made before it.
SEEN_LATE = 1.0


def in_flight_at(cluster: Cluster, at: float, *, until: float | None = None) -> dict[str, Execution]:
    """job id -> its run that had started by ``until`` (a fault that took from ``at`` to
    ``until``; default ``at``) and not ended at ``at``."""
    started_by = at if until is None else until
    return {
        run.job_id: run
        for run in cluster.executions()
        if run.started <= started_by and (run.ended is None or run.ended > at)
    }


def unexplained_reruns(runs: dict[str, list[Execution]], in_flight: dict[str, Execution]) -> list[str]:
    """Jobs that ran more than once though no run of theirs was cut by the fault."""
    return [
        f"{job_id} ran {len(executions)}x: {[(r.attempt, r.pid, r.started, r.ended) for r in executions]}"
        for job_id, executions in runs.items()
        if len(executions) > 1 and job_id not in in_flight
    ]


def made_before(recorder: Recorder, jobs: dict[str, dict], at: float) -> set[str]:
    """Jobs whose final attempt (and so its RQ job) may have been made before ``at``: a Redis
    that lost its data lost that RQ job too, and "gone" then agrees with any end."""
    found = set()
    with recorder._lock:
        histories = {job_id: list(recorder.history.get(job_id, [])) for job_id in jobs}
    for job_id, job in jobs.items():
        first = next((seen for seen, attempt, _, _ in histories[job_id] if attempt == job["attempt"]), None)
        if first is None or first < at + SEEN_LATE:
            found.add(job_id)
    return found


def first_completed_after(jobs: dict[str, dict], runs: dict[str, list[Execution]], at: float) -> float | None:
    """Seconds from ``at`` to the first job COMPLETED by a run started after ``at``."""
    ends = [
        unix_time(job["completed_at"])
        for job_id, job in jobs.items()
        if job["status"] == "COMPLETED" and runs[job_id] and runs[job_id][-1].started > at
    ]
    return round(min(ends) - at, 2) if ends else None


def all_done_after(jobs: dict[str, dict], at: float) -> float | None:
    """Seconds from ``at`` to the last job's end."""
    ends = [unix_time(job["completed_at"]) for job in jobs.values() if job.get("completed_at")]
    return round(max(ends) - at, 2) if ends else None
