"""A steady load of short jobs for the Redis failover scenarios (F16, F17): a fixed number of
submissions at a fixed rate, from a thread, across the fault, keeping the acknowledged jobs and
every answer.

Why a fixed number rather than "until stopped" (F7's submitter): these scenarios bound how long
the work takes after the fault, so the work must not grow with how long the fault lasted.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import requests

from tests.chaos.client import Api


class Load(threading.Thread):
    """Submits ``total`` chaos_sleep jobs, ``rate`` a second, each sleeping ``low``-``high`` s.

    An answer is fine when it is a 202 (QUEUED, or PENDING while Redis is down) or a 503 with
    Retry-After; anything else, and a request the API did not answer, is a problem.
    """

    def __init__(self, api: Api, *, total: int, rate: float, seed: int, low: float = 0.05, high: float = 0.3):
        super().__init__(name="load", daemon=True)
        self.api = api
        self.total = total
        self.pause = 1.0 / rate
        self.rng = random.Random(seed)
        self.low, self.high = low, high
        self.acked: list[str] = []
        self.answers: Counter[str] = Counter()
        self.problems: list[str] = []
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            for _ in range(self.total):
                started = time.monotonic()
                self._submit_one()
                time.sleep(max(0.0, self.pause - (time.monotonic() - started)))
        finally:
            self.finished.set()

    def _submit_one(self) -> None:
        body = {"kwargs": {"seconds": round(self.rng.uniform(self.low, self.high), 2)}, "max_retries": 5}
        try:
            response = self.api.post_task("chaos_sleep", **body)
        except requests.RequestException as exc:
            self.problems.append(f"no answer from the API: {exc}")
            return
        if response.status_code == 202:
            job = response.json()
            self.acked.append(job["job_id"])
            self.answers[f"202 {job['status']}"] += 1
            if job["status"] not in ("QUEUED", "PENDING"):
                self.problems.append(f"202 with status {job['status']}")
            return
        self.answers[str(response.status_code)] += 1
        if response.status_code != 503:
            self.problems.append(f"{response.status_code}: {response.text[:200]}")
        elif not response.headers.get("Retry-After"):
            self.problems.append("503 without Retry-After")


def unix_time(stamp: str) -> float:
    """A job's ISO timestamp (``completed_at``) as Unix time, to compare with the test's clock."""
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
