"""RQ Dashboard at /rq, fuzzed: a few hundred hostile requests to every route, against a job
in each of RQ's states, never answer 500, and every error is JSON."""

from __future__ import annotations

import os
import random
import re
from datetime import timedelta

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests.helpers import XHR, wait_for_status

pytestmark = pytest.mark.one_pass(reason="RQ Dashboard reads Redis only")


@pytest.fixture
def jobs_in_every_state(client, run_burst_worker, start_worker, redis_conn):
    """RQ ids of a job in each of RQ's states, in the queues and registries the dashboard shows."""
    failed = client.post("/tasks/fail", json={"max_retries": 0}).get_json()
    finished = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    run_burst_worker()
    wait_for_status(client, failed["job_id"], {"FAILED"})
    wait_for_status(client, finished["job_id"], {"COMPLETED"})
    # A worker of the high queue only, busy for the whole test with one job.
    start_worker("--name", "fuzz-busy", "--simple", "--queues", "high")
    started = client.post("/tasks/sleep", json={"kwargs": {"seconds": 60, "steps": 1}, "priority": "high"}).get_json()
    wait_for_status(client, started["job_id"], {"PROCESSING"})
    queued = client.post("/tasks/add", json={"args": [3, 4]}).get_json()
    deferred = client.post("/tasks/add", json={"args": [5, 6], "depends_on": [queued["job_id"]]}).get_json()
    canceled = client.post("/tasks/add", json={"args": [7, 8], "priority": "low"}).get_json()
    assert client.post(f"/jobs/{canceled['job_id']}/cancel", headers=XHR).status_code == 200
    queue = Queue("default", connection=redis_conn, serializer=JSONSerializer)
    scheduled = queue.enqueue_in(timedelta(hours=1), "tests.fixtures.add", 1, 2)
    # One that another RQ client wrote with RQ's default serializer (pickle), unreadable as JSON.
    foreign = Queue("low", connection=redis_conn).enqueue("tests.fixtures.add", 5, 6, meta={"who": "other"})
    ids = {
        "failed": failed["rq_job_id"],
        "finished": finished["rq_job_id"],
        "started": started["rq_job_id"],
        "queued": queued["rq_job_id"],
        "deferred": client.get(f"/jobs/{deferred['job_id']}").get_json()["rq_job_id"],
        "canceled": canceled["rq_job_id"],
        "scheduled": scheduled.id,
        "foreign": foreign.id,
    }
    for state, rq_id in ids.items():
        assert rq_id, state
    return ids


REGISTRY_NAMES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled")
JUNK = ["%00", "%C3%A9", "%FF", "a:b", "%20", "..", "x" * 300, "%2F", "-", "_", "rq:job:x", "%D9%A1", "1e9", ""]

# /rq's routes with the method each answers; the fuzz mostly keeps it, to reach the views.
ROUTES = [
    ("GET", "/rq/"),
    ("GET", "/rq/{n}/"),
    ("GET", "/rq/{n}/view"),
    ("GET", "/rq/{n}/view/queues"),
    ("GET", "/rq/{n}/view/workers"),
    ("GET", "/rq/{n}/view/jobs"),
    ("GET", "/rq/{n}/view/jobs/{q}/{r}/{num}/{o}/{num}"),
    ("GET", "/rq/{n}/view/job/{id}"),
    ("GET", "/rq/{n}/data/queues.json"),
    ("GET", "/rq/{n}/data/jobs/{q}/{r}/{num}/{o}/{num}.json"),
    ("GET", "/rq/{n}/data/job/{id}.json"),
    ("GET", "/rq/{n}/data/workers.json"),
    ("POST", "/rq/job/{id}/delete"),
    ("POST", "/rq/job/{id}/requeue"),
    ("POST", "/rq/requeue/{q}"),
    ("POST", "/rq/queue/{q}/{r}/empty"),
    ("POST", "/rq/queue/{q}/compact"),
    ("GET", "/rq/static/{any}"),
    ("GET", "/rq/{any}"),
    ("GET", "/rq/{n}/{any}/{any}"),
]


def _random_requests(rng: random.Random, job_ids: list[str], count: int):
    """``count`` requests to /rq: its routes, each segment a fitting value or (a third of the
    time) a hostile one, now and then another method, query string or body."""
    good = {
        "n": ["0"],
        "q": ["default", "default", "high", "low"],
        "r": list(REGISTRY_NAMES),
        "num": ["1", "2", "8", "200"],
        "o": ["asc", "dsc"],
        "id": job_ids,
    }
    bad = {
        "n": ["1", "9", "-1", "00", "99999999999999999999999", "x"],
        "q": ["no-such-queue", "Default", *JUNK],
        "r": ["bogus", "Failed", *JUNK],
        "num": ["201", "0", "-1", "x", "1.5", "99999999999999999999", *JUNK],
        "o": ["desc", *JUNK],
        "id": [*(f"{i}:x" for i in job_ids), *(i.upper() for i in job_ids), "no-such-job", *JUNK],
    }
    queries = ["", "", "", "", "?page=2", "?x=%00", "?per_page=-1&order=%FF", "?" + "a=1&" * 50]
    for _ in range(count):
        method, template = rng.choice(ROUTES)
        path = ""
        for part in re.split(r"(\{\w+\})", template):
            kind = part[1:-1] if part.startswith("{") else None
            if kind == "any":
                path += "".join(rng.choice("aZ09-_.~%:;@!$&'()*+,= ") for _ in range(rng.randint(0, 12)))
            elif kind:
                path += rng.choice(bad[kind] if rng.random() < 0.3 else good[kind])
            else:
                path += part
        if rng.random() < 0.15:
            method = rng.choice(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
        headers = dict(XHR) if rng.random() < 0.9 else {}
        body = None
        if method not in ("GET", "HEAD") and rng.random() < 0.3:
            headers["Content-Type"] = "application/json"
            body = rng.choice(["{}", "[]", '{"a": 1}', "not json", ""])
        yield method, path + rng.choice(queries), headers, body


def test_fuzzed_rq_requests_never_answer_500(client, jobs_in_every_state):
    # A few hundred requests (seed fixed; RQ_FUZZ_SEED and RQ_FUZZ_REQUESTS explore further) with
    # hostile path segments, methods, query strings and bodies, against a job in each state.
    # Before: 500s from job ids RQ cannot hold, Compact on an empty or unknown queue, the data
    # of a job with dependencies, a page past Redis' ranges. Every answer is below 500, and
    # every error is JSON.
    rng = random.Random(int(os.environ.get("RQ_FUZZ_SEED", "20261129")))
    count = int(os.environ.get("RQ_FUZZ_REQUESTS", "400"))
    failures = []
    for method, path, headers, body in _random_requests(rng, list(jobs_in_every_state.values()), count):
        response = client.open(path, method=method, headers=headers, data=body)
        problem = None
        if response.status_code >= 500:
            problem = response.status_code
        elif response.status_code >= 400 and method != "HEAD":
            error = (response.get_json(silent=True) or {}).get("error") or {}
            problem = None if error.get("code") and error.get("message") else "not a JSON error"
        if problem:
            failures.append((method, path[:120], problem, response.get_data(as_text=True)[:200]))
    assert not failures, f"{len(failures)} of {count}:\n" + "\n".join(map(str, failures[:20]))
