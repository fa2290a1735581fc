"""The figures a scenario reports: how often each job ran, the reruns no kill explains, how
long each interrupted job took to come back; printed and appended to $CHAOS_REPORT."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable

from tests.chaos.processes import Execution, Kill
from tests.chaos.recorder import Recorder
from tests.chaos.settings import SOAK, TERMINAL
from tests.chaos.stack import Cluster


def executions_per_job(cluster: Cluster, job_ids: Iterable[str]) -> dict[str, list[Execution]]:
    runs: dict[str, list[Execution]] = {job_id: [] for job_id in job_ids}
    for run in cluster.executions():
        if run.job_id in runs:
            runs[run.job_id].append(run)
    return runs


def histogram(runs: dict[str, list[Execution]]) -> dict[str, int]:
    """{"ran 1x": N, "ran 2x": M, ...}"""
    counts = Counter(len(executions) for executions in runs.values())
    return {f"ran {times}x": counts[times] for times in sorted(counts)}


def unexplained_reruns(cluster: Cluster, runs: dict[str, list[Execution]]) -> list[str]:
    """Jobs that ran more than once without their worker being killed mid-job.

    A job may run again only after a run in a process the test killed (a worker or its
    work-horse), and the store must say so: every attempt before the last one that ran is
    recorded as cut short (INTERRUPTED) by its worker's death, on a worker the test killed.
    """
    killed = {kill.pid for kill in cluster.kills} | {pid for kill in cluster.kills for pid in kill.horses}
    killed_names = {kill.worker for kill in cluster.kills}
    found = []
    for job_id, executions in runs.items():
        if len(executions) < 2:
            continue
        detail = [(run.attempt, run.pid, run.ppid, run.ended is not None) for run in executions]
        spared = [run for run in executions if run.pid not in killed and run.ppid not in killed]
        if len(spared) > 1:
            found.append(f"{job_id} ran {len(executions)}x, {len(spared)} not in killed processes: {detail}")
            continue
        attempts = {a["attempt"]: a for a in cluster.api.get(f"/jobs/{job_id}/attempts").json()["attempts"]}
        last = max(run.attempt for run in executions)
        for run in executions:
            if run.attempt == last:
                continue
            row = attempts.get(run.attempt) or {}
            # INTERRUPTED since issue 13 (a run its worker's death cut), FAILED before it.
            died = row.get("outcome") in ("INTERRUPTED", "FAILED") and row.get("worker") in killed_names
            if not died:
                found.append(f"{job_id} ran again after attempt {run.attempt}, recorded as {row}: {detail}")
    return found


def kill_recovery_seconds(cluster: Cluster, recorder: Recorder) -> list[tuple[Kill, str, float | None]]:
    """For each kill and each job it interrupted: seconds until the job was back on a queue
    (a higher attempt) or done; None if never seen so."""
    found = []
    for kill in cluster.kills:
        for job_id, attempt in kill.inflight.items():

            def recovered(seen_attempt: int, status: str, attempt=attempt) -> bool:
                return seen_attempt > attempt or status in TERMINAL

            seen = recorder.first_seen(job_id, recovered, after=kill.at)
            found.append((kill, job_id, None if seen is None else seen - kill.at))
    return found


def report_figures(scenario: str, figures: dict) -> None:
    """Print the figures, and append them as one JSON line to $CHAOS_REPORT when set."""
    record = {"scenario": scenario, "soak": SOAK, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    print(f"\n[chaos {scenario}] " + json.dumps(figures, indent=None, sort_keys=False))
    path = os.environ.get("CHAOS_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def scenario_name() -> str:
    """The running test's name (pytest's PYTEST_CURRENT_TEST), for figures printed by a check."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "?")
    return current.split("::")[-1].split(" ")[0]


def drain_figures(
    cluster: Cluster, jobs: dict[str, dict], recorder: Recorder | None, *, started: float, live_at_start: int | None
) -> dict:
    """How a wait for jobs to end went: how many, how long, how fast, how often each ran, the
    longest a job waited for a worker and how many retries waited a backoff."""
    seconds = time.time() - started
    ended = sum(1 for job in jobs.values() if job["status"] in TERMINAL)
    live = len(jobs) - ended
    drained = (live_at_start or 0) - live
    waits = [wait for job_id in jobs for wait in _waits(recorder, job_id)] if recorder is not None else []
    return {
        "test": scenario_name(),
        "jobs": len(jobs),
        "live_when_wait_began": live_at_start,
        "live_at_end": live,
        "seconds_to_drain": round(seconds, 1),
        "drain_rate_jobs_per_s": round(drained / seconds, 2) if seconds > 0 and drained > 0 else None,
        "executions_per_job": histogram(executions_per_job(cluster, jobs)),
        "statuses": dict(Counter(job["status"] for job in jobs.values())),
        "jobs_retried": sum(1 for job in jobs.values() if job.get("retry_count")),
        "jobs_interrupted": sum(1 for job in jobs.values() if job.get("interruptions")),
        "longest_wait_for_a_worker_s": round(max(waits), 1) if waits else None,
    }


def _waits(recorder: Recorder, job_id: str) -> list[float]:
    """Seconds from each time the job was first seen QUEUED to when it was seen served."""
    history = list(recorder.history.get(job_id, ()))
    return [
        later - at
        for (at, attempt, status, _), (later, next_attempt, next_status, _) in zip(history, history[1:], strict=False)
        if status == "QUEUED" and next_attempt == attempt and next_status in ("PROCESSING", "COMPLETED", "FAILED")
    ]
