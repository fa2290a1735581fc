"""The steps tests take against the API, written once: submit, read, wait, authenticate.

Fixtures (a Redis, a store, the app, workers) live in conftest.py; these are plain functions
that take the test client, so each test reads as Given / When / Then over the same words.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rq import Queue

from backend.core.settings import QUEUE_NAMES
from tests.conftest import TOKEN

# The header a worker sends with its reports to /internal/*.
AUTH = {"X-Internal-Token": TOKEN}


def bearer(key: str) -> dict:
    """The headers of a client that authenticates with API key ``key``."""
    return {"Authorization": f"Bearer {key}"}


def submit(client, task: str, *, status: int = 202, headers: dict | None = None, **body) -> dict:
    """POST /tasks/<task> with ``body``; assert the answer's status code; return its JSON."""
    response = client.post(f"/tasks/{task}", json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def submit_add(client, **body) -> dict:
    """A queued ``add(1, 2)``: the job a test submits when any job will do."""
    return submit(client, "add", **{"args": [1, 2], **body})


def get_job(client, job_id: str, headers: dict | None = None) -> dict:
    """GET /jobs/<id> as JSON."""
    return client.get(f"/jobs/{job_id}", headers=headers).get_json()


def attempts(client, job_id: str) -> list[dict]:
    """A job's recorded attempts, oldest first."""
    return client.get(f"/jobs/{job_id}/attempts").get_json()["attempts"]


def stored_jobs(client) -> list:
    """The first page of GET /jobs: what the store holds."""
    return client.get("/jobs").get_json()["jobs"]


def queued_count(redis_conn) -> int:
    """How many RQ jobs wait on all of the service's queues."""
    return sum(Queue(name, connection=redis_conn).count for name in QUEUE_NAMES)


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} never held within {timeout} s")


def wait_for_status(client, job_id: str, statuses: set[str], timeout: float = 30, headers=None) -> dict:
    """Poll GET /jobs/<id> until its status is in ``statuses``; return the job."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = get_job(client, job_id, headers=headers)
        if job.get("status") in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}; last seen {job}")


# What a page's own script sends on a state-changing request: a cross-site form cannot, so
# the browser guard lets it through.
XHR = {"X-Requested-With": "XMLHttpRequest"}
