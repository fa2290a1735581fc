"""The recorder: polls every job through GET /jobs while a scenario runs, so that the checks
can see a backward move and the figures how long a recovery took."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import requests

from tests.chaos.client import Api
from tests.chaos.settings import _RANK, TERMINAL


class Recorder:
    """Polls every job through GET /jobs while a scenario runs and keeps each job's changes
    of (attempt, status, worker), with the time they were first seen."""

    def __init__(self, api: Api, interval: float = 0.25):
        self.api = api
        self.interval = interval
        self.history: dict[str, list[tuple[float, int, str, str | None]]] = {}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._lock = threading.Lock()
        self._polling = threading.Lock()

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> list[dict] | None:
        """One look at every job; None while the API does not answer.

        One look at a time (``_polling``): each starts after the previous one was answered,
        so the looks are in the store's order and a change seen is never undone by an older
        answer arriving late.
        """
        with self._polling:
            at = time.time()
            try:
                jobs = self.api.all_jobs()
            except (requests.RequestException, AssertionError):
                return None
            self._observe(jobs, at)
            return jobs

    def _observe(self, jobs: Iterable[dict], at: float) -> None:
        with self._lock:
            self.polls += 1
            for job in jobs:
                seen = (at, job["attempt"], job["status"], job.get("worker"))
                history = self.history.setdefault(job["job_id"], [])
                if not history or history[-1][1:] != seen[1:]:
                    history.append(seen)

    def since(self, job_id: str) -> float:
        """When the job's current (attempt, status, worker) was first seen."""
        with self._lock:
            return self.history[job_id][-1][0]

    def violations(self) -> list[str]:
        """Every backward move seen: a lower attempt, an earlier status within one attempt,
        or any change after a terminal status."""
        found = []
        with self._lock:
            for job_id, history in self.history.items():
                for (_, a1, s1, _), (_, a2, s2, _) in zip(history, history[1:], strict=False):
                    if s1 in TERMINAL and (a2, s2) != (a1, s1) or a2 < a1 or (a2 == a1 and _RANK[s2] < _RANK[s1]):
                        found.append(f"{job_id}: {s1} (attempt {a1}) then {s2} (attempt {a2})")
        return found

    def first_seen(self, job_id: str, predicate: Callable[[int, str], bool], *, after: float) -> float | None:
        """When a (attempt, status) matching ``predicate`` was first seen after ``after``."""
        with self._lock:
            history = list(self.history.get(job_id, []))
        for index, (at, attempt, status, _) in enumerate(history):
            if predicate(attempt, status):
                # A state that began before ``after`` and still held counts from ``after``.
                if at >= after:
                    return at
                if index + 1 == len(history) or history[index + 1][0] > after:
                    return after
        return None
