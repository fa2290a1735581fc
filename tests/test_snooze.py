"""Snooze: a task asks to run again later (``raise Snooze(seconds, reason)``), no failure counted.

First the API's side (a worker's ``snoozed`` report, as a worker sends it), then real workers.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Queue

from backend.api.context import services
from backend.core.settings import QUEUE_NAMES
from tests.conftest import TASK_MODULES
from tests.helpers import AUTH, attempts, get_job, submit, submit_add, wait_for_status
from tests.test_reconciler import age


def _report(client, *reports):
    response = client.post("/internal/reports", json={"sent_at": time.time(), "reports": list(reports)}, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return [answer["status"] for answer in response.get_json()["results"]]


def _started(job_id, attempt):
    return {"job_id": job_id, "attempt": attempt, "event": "started", "worker": "w", "at": time.time()}


def _snoozed(job_id, attempt, seconds, reason):
    return {"job_id": job_id, "attempt": attempt, "event": "snoozed", "seconds": seconds, "reason": reason}


def _scheduled(redis_conn) -> set[str]:
    """The RQ job ids waiting in RQ's scheduler, on every queue of the service."""
    return {
        rq_id
        for name in QUEUE_NAMES
        for rq_id in Queue(name, connection=redis_conn).scheduled_job_registry.get_job_ids()
    }


def test_a_snooze_queues_a_new_attempt_later_without_spending_a_retry(client, redis_conn):
    # Given a running job
    job = submit_add(client)
    job_id = job["job_id"]
    assert _report(client, _started(job_id, 1)) == [200]

    # When its worker reports that the task snoozed for 30 s
    assert _report(client, _snoozed(job_id, 1, 30, "rate limited by the provider")) == [200]

    # Then the job waits QUEUED on attempt 2, in RQ's scheduler, with no retry spent
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["interruptions"]) == ("QUEUED", 2, 0, 0)
    assert (after["snoozes"], after["max_snoozes"], after["error"]) == (1, 100, None)
    wait = datetime.fromisoformat(after["next_retry_at"]) - datetime.fromisoformat(after["updated_at"])
    assert timedelta(seconds=29) < wait <= timedelta(seconds=30)
    assert f"{job_id}-2" in _scheduled(redis_conn)
    # And its history shows the snooze and why
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts(client, job_id)] == [
        (1, "SNOOZED", "rate limited by the provider")
    ]


def test_the_snooze_past_max_snoozes_ends_the_job_failed_with_a_clear_error(client):
    # Given a job that may snooze once
    job_id = submit_add(client, max_snoozes=1)["job_id"]
    assert get_job(client, job_id)["max_snoozes"] == 1
    _report(client, _started(job_id, 1), _snoozed(job_id, 1, 1, "busy"))

    # When its second attempt snoozes too
    assert _report(client, _started(job_id, 2), _snoozed(job_id, 2, 1, "still busy")) == [200, 200]

    # Then the job has FAILED, saying why, and both attempts show their snooze
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["snoozes"]) == ("FAILED", 2, 0, 2)
    assert after["error"] == "snoozed more than max_snoozes (1) times; last reason: still busy"
    assert [(a["outcome"], a["error"]) for a in attempts(client, job_id)] == [
        ("SNOOZED", "busy"),
        ("SNOOZED", after["error"]),
    ]


def test_a_snooze_past_max_attempts_per_job_ends_the_job_failed_naming_the_setting(settings, request):
    # Given a service allowing 3 attempts per job, and a job that may snooze 10,000 times
    settings["MAX_ATTEMPTS_PER_JOB"] = 3
    client = request.getfixturevalue("client")
    job_id = submit_add(client, max_snoozes=10_000)["job_id"]

    # When each of its attempts snoozes (as a task behind a provider answering 429 would)
    for attempt in range(1, 6):
        _report(client, _started(job_id, attempt), _snoozed(job_id, attempt, 1, "429"))

    # Then the snooze that would have started a 4th attempt ended it FAILED instead, saying why
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["snoozes"]) == ("FAILED", 3, 0, 3)
    assert after["error"] == (
        "snoozed on attempt 3, the most a job may have (MAX_ATTEMPTS_PER_JOB=3); last reason: 429"
    )
    assert [a["outcome"] for a in attempts(client, job_id)] == ["SNOOZED"] * 3


def test_max_snoozes_zero_fails_the_first_snooze_and_a_stale_snooze_is_refused(client):
    job_id = submit_add(client, max_snoozes=0)["job_id"]

    # A snooze for an attempt the job is not on changes nothing
    assert _report(client, _snoozed(job_id, 2, 5, "stale")) == [409]
    assert get_job(client, job_id)["status"] == "QUEUED"

    # A NUL in the reason (PostgreSQL's text cannot hold one) is replaced, not refused (here by
    # the one-report route, as scripts use it: it answers the job)
    one = client.post(
        f"/internal/jobs/{job_id}/snoozed", json={"attempt": 1, "seconds": 5, "reason": "no\x00way"}, headers=AUTH
    )
    assert (one.status_code, one.get_json()["status"]) == (200, "FAILED")
    assert attempts(client, job_id)[0]["error"].endswith("last reason: no\ufffdway")


def test_a_snooze_of_too_many_seconds_for_a_float_or_a_huge_attempt_is_a_400_not_a_500(client):
    job_id = submit_add(client)["job_id"]
    for body in ({"attempt": 1, "seconds": 10**400}, {"attempt": 10**30, "seconds": 5}):
        # The one-report route, and a batch holding such a report
        one = client.post(f"/internal/jobs/{job_id}/snoozed", json=body, headers=AUTH)
        report = {"job_id": job_id, "event": "snoozed", **body}
        batch = client.post("/internal/reports", json={"sent_at": time.time(), "reports": [report]}, headers=AUTH)
        for response in (one, batch):
            assert (response.status_code, response.is_json) == (400, True), (body, response.get_data()[:300])
    assert get_job(client, job_id)["status"] == "QUEUED"


def test_max_snoozes_outside_0_to_the_limit_is_a_clear_422(client):
    for value in [-1, 10_001, "3", True, 1.5]:
        body = submit(client, "add", status=422, args=[1, 2], max_snoozes=value)
        assert "max_snoozes must be an integer from 0 to 10000" in body["error"]["message"], value


def test_max_snoozes_is_taken_by_batches_too(client):
    response = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 2], "max_snoozes": 7}]})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_ids"][0]
    assert get_job(client, job_id)["max_snoozes"] == 7


# -- real workers -------------------------------------------------------------------------


@pytest.fixture
def store_tasks(settings) -> dict:
    """This module's tasks, known to the API (ask for it before ``client``) and to the workers (``env``)."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},tests.store_long_task_fixtures"
    return {"TASK_MODULES": settings["TASK_MODULES"]}


@contextmanager
def rate_limited_provider(refusals: dict[str, int | None]):
    """A local HTTP API answering ``GET /<name>`` 429 with ``Retry-After: 1`` the first
    ``refusals[name]`` times (None: always), then 200; yields its base URL."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.strip("/")
            with lock:
                left = refusals.get(name, 0)
                if left:
                    refusals[name] = left - 1
            self.send_response(429 if left or left is None else 200)
            if left or left is None:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_task_snoozes_as_long_as_a_429_says_then_completes_or_fails_past_max_snoozes(
    store_tasks, client, start_worker
):
    with rate_limited_provider({"twice": 2, "always": None}) as provider:
        # Given a task whose provider refuses it twice with 429 Retry-After: 1, and one whose
        # provider always does (that job may snooze once)
        patient = submit(client, "call_rate_limited", kwargs={"url": f"{provider}/twice"})["job_id"]
        limited = submit(client, "call_rate_limited", kwargs={"url": f"{provider}/always"}, max_snoozes=1)["job_id"]

        # When a real worker (with RQ's scheduler) runs them
        worker = start_worker("--simple", "--name", "snoozer", env=store_tasks)
        done = wait_for_status(client, patient, {"COMPLETED", "FAILED"}, timeout=40)
        failed = wait_for_status(client, limited, {"COMPLETED", "FAILED"}, timeout=40)

    # Then the first completed on its third attempt, after two snoozes and no failure
    assert (done["status"], done["result"], done["attempt"]) == ("COMPLETED", 200, 3), worker.output()
    assert (done["retry_count"], done["snoozes"], done["interruptions"]) == (0, 2, 0)
    history = attempts(client, patient)
    assert [(a["outcome"], a["error"]) for a in history] == [
        ("SNOOZED", "rate limited"),
        ("SNOOZED", "rate limited"),
        ("COMPLETED", None),
    ]
    # And each snooze lasted what the provider's Retry-After said (1 s), not the default 60 s
    # (times in milliseconds, the end by the worker's report and the start by RQ's scheduler)
    for snoozed, after in zip(history, history[1:], strict=False):
        gap = datetime.fromisoformat(after["started_at"]) - datetime.fromisoformat(snoozed["ended_at"])
        assert timedelta(seconds=0.9) <= gap < timedelta(seconds=30), history
    last = datetime.fromisoformat(done["next_retry_at"]) - datetime.fromisoformat(history[1]["ended_at"])
    assert timedelta(seconds=0.99) <= last < timedelta(seconds=2), (done, history)

    # And the second ended FAILED at its second snooze, saying why, with no retry spent
    assert (failed["status"], failed["retry_count"], failed["snoozes"]) == ("FAILED", 0, 2)
    assert failed["error"] == "snoozed more than max_snoozes (1) times; last reason: rate limited"
    assert [a["outcome"] for a in attempts(client, limited)] == ["SNOOZED", "SNOOZED"]


def test_a_snooze_whose_report_was_lost_is_copied_from_rq_as_a_snooze(app, client, start_worker):
    # Given a worker that cannot reach the API, running a task that snoozes on its first attempt
    job_id = submit(client, "snooze_once", kwargs={"seconds": 60})["job_id"]
    worker = start_worker(
        "--burst", "--simple", "--name", "mute",
        env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"},
    )  # fmt: skip
    assert worker.wait(timeout=30) == 0, worker.output()
    assert get_job(client, job_id)["status"] == "QUEUED"
    age(app, job_id)

    # When the reconciler copies the outcome RQ recorded
    report = services(app).reconciler.run_once()

    # Then it is a snooze, as the report would have said: no failure, a new attempt in 60 s
    assert report.copied == [job_id], worker.output()
    after = get_job(client, job_id)
    assert (after["status"], after["attempt"], after["retry_count"], after["snoozes"]) == ("QUEUED", 2, 0, 1)
    assert [(a["outcome"], a["error"]) for a in attempts(client, job_id)] == [("SNOOZED", "the provider said 429")]


def test_a_snooze_copied_from_rq_keeps_a_reason_within_the_message_cap(app, client, start_worker):
    # Given a worker that cannot reach the API, running a task that snoozes with a 200,000
    # character reason (a provider's whole error body)
    job_id = submit(client, "snooze_once", kwargs={"seconds": 60, "reason": "x", "repeat": 200_000})["job_id"]
    worker = start_worker(
        "--burst", "--simple", "--name", "mute-long",
        env={"API_BASE_URL": "http://127.0.0.1:9", "REPORT_RETRY_SECONDS": "0.5"},
    )  # fmt: skip
    assert worker.wait(timeout=30) == 0, worker.output()[-2000:]
    age(app, job_id)

    # When the reconciler copies the outcome RQ recorded
    report = services(app).reconciler.run_once()

    # Then the snooze's reason is cut to MAX_PROGRESS_MESSAGE (1,024), as a reported one is
    assert report.copied == [job_id]
    assert get_job(client, job_id)["snoozes"] == 1
    (only,) = attempts(client, job_id)
    assert only["outcome"] == "SNOOZED" and 0 < len(only["error"]) <= 1024, len(only["error"])
    assert only["error"].startswith("xxx")


@contextmanager
def recording_server(seen: list[str]):
    """A local HTTP service (an admin port, cloud metadata) that notes every path asked of it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_the_provider_example_snoozes_on_its_429_and_a_client_cannot_point_it_at_an_address(client, start_worker):
    seen: list[str] = []
    # Given an internal HTTP service only the worker's network reaches
    with recording_server(seen) as internal:
        # When a client asks for the old URL-fetching example, or hands the provider example a URL
        gone = client.post("/tasks/fetch_url", json={"kwargs": {"url": f"{internal}/admin"}})
        pointed = client.post("/tasks/call_provider", json={"kwargs": {"prompt": "hi", "url": f"{internal}/admin"}})
        # Then neither is accepted (no such task; no such argument)
        assert gone.status_code == 404, gone.get_json()
        assert pointed.status_code == 422 and "url" in str(pointed.get_json()), pointed.get_json()

        # And the example shows the lesson with no network: its in-process provider's 429 with
        # Retry-After: 1 snoozes the job that long, and the next attempt gets the answer
        job_id = submit(client, "call_provider", kwargs={"prompt": "two words", "retry_after": 1})["job_id"]
        worker = start_worker("--simple", "--name", "provider-example")
        done = wait_for_status(client, job_id, {"COMPLETED", "FAILED"}, timeout=40)
    assert seen == []
    assert (done["status"], done["result"], done["snoozes"]) == (
        "COMPLETED",
        {"status": 200, "answer": "(simulated) 2 words received", "attempt": 2},
        1,
    ), worker.output()
    history = attempts(client, job_id)
    assert [(a["outcome"], a["error"]) for a in history] == [
        ("SNOOZED", "provider answered 429 (Retry-After: 1)"),
        ("COMPLETED", None),
    ]
    gap = datetime.fromisoformat(history[1]["started_at"]) - datetime.fromisoformat(history[0]["ended_at"])
    assert timedelta(seconds=0.9) <= gap < timedelta(seconds=30), history


def test_a_time_between_seconds_is_never_due_early_in_rqs_scheduler(redis_conn):
    """RQ scores a scheduled job by whole seconds, rounded down: a snooze of 1 s (a provider's
    Retry-After) due at 12:00:04.689 was due at 12:00:04, and its next attempt could start 0.7 s
    early (the fresh-clone CI saw a gap of 0.898 s). The adapter rounds the time up."""
    from backend.broker.queues import QueueAdapter

    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    at = datetime.now(UTC).replace(microsecond=689000) + timedelta(seconds=5)
    rq_id = adapter.enqueue(
        job_id="job_later", attempt=1, func_path="backend.tasks.examples.add", args=[1, 2], kwargs={},
        priority="default", timeout=60, at=at,
    )  # fmt: skip
    assert redis_conn.zscore("rq:scheduled:default", rq_id) >= at.timestamp()
