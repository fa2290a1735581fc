"""The Python client (jobservice_client) against the real API and real workers.

The API runs as ``live_server`` with workers from ``start_worker``: nothing of it is mocked.
What a real service cannot be made to do on cue (answer 503 then 200, drop an event stream
half-way) is played by a scripted server in tests/test_client_scripted.py.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from jobservice_client import (
    BadRequest,
    Client,
    Conflict,
    JobCancelled,
    JobFailed,
    NotFound,
    RateLimited,
    Unauthorized,
    WaitTimeout,
)

pytestmark = pytest.mark.one_pass(reason="the client over HTTP; every route it calls is tested on both stores")


# -- against the real service --------------------------------------------------------------


def test_task_arguments_named_like_options_reach_the_task(live_server, start_worker):
    # Given a client
    client = Client(live_server)

    # When a job's task arguments are named like the submission's options, beside those options,
    # submitted twice with one idempotency key while the job waits (a key returns its job only
    # while the job is live: a worker already running could end it between the two), then run
    job = client.submit(
        "echo",
        args=[1],
        kwargs={"priority": "low", "job_id": "mine", "timeout": 3, "idempotency_key": "arg"},
        priority="high",
        idempotency_key="client-test-1",
    )
    again = client.submit(
        "echo",
        args=[1],
        kwargs={"priority": "low", "job_id": "mine", "timeout": 3, "idempotency_key": "arg"},
        priority="high",
        idempotency_key="client-test-1",
    )
    start_worker()
    job.wait(timeout=60)

    # Then the task got them all as its arguments, and the options were the job's
    assert job.status == "COMPLETED", job.data
    assert job.result == {
        "args": [1],
        "kwargs": {"priority": "low", "job_id": "mine", "timeout": 3, "idempotency_key": "arg"},
    }
    assert job.priority == "high"
    # the same idempotency key gave the same job back
    assert (job.created, again.created, again.id) == (True, False, job.id)
    # and RQ's own option name reaches a task that takes it
    reserved = client.submit(
        "reserved_names",
        kwargs={"job_id": "j", "timeout": 1, "ttl": 2, "description": "d", "meta": {}, "retry": 0},
    ).wait(timeout=60)
    assert reserved.result["job_id"] == "j" and reserved.result["timeout"] == 1


def test_wait_follows_the_event_stream_with_progress_output_and_logs(live_server, start_worker, caplog):
    # Given a client and a worker
    client = Client(live_server)
    start_worker()
    caplog.set_level(logging.DEBUG, logger="jobservice_client")

    # When it waits for a job that reports progress four times
    seen = []
    job = client.submit("sleep", kwargs={"seconds": 0.8, "steps": 4})
    job.wait(timeout=60, on_progress=lambda j: seen.append((j.status, j.progress, j.progress_message)))

    # Then it saw every step in order (the stream misses none, where polling could), then the result
    assert job.status == "COMPLETED" and job.result == {"slept": 0.8}
    steps = list(dict.fromkeys(message for _, _, message in seen if message))
    assert steps == [f"step {n} of 4" for n in range(1, 5)], seen
    assert [progress for _, progress, _ in seen] == sorted(progress for _, progress, _ in seen), seen
    assert "polling" not in caplog.text and "dropped" not in caplog.text

    # And a task's output arrives as events, its log lines through logs()
    events = []
    words = client.submit("summarise_stream", kwargs={"text": "One two three. Four five.", "delay": 0})
    words.wait(timeout=60, on_event=events.append)
    assert words.result == {"summary": "One two three. Four five.", "words": 5}
    assert "".join(e.json()["data"]["token"] for e in events if e.kind == "output") == "One two three. Four five."
    messages = [line["message"] for line in words.logs()]
    assert "summary of 5 words ready" in messages

    # And a failing task ends FAILED, raised on request
    failed = client.submit("fail", kwargs={"message": "no luck"}, max_retries=0).wait(timeout=60)
    assert failed.status == "FAILED" and "no luck" in failed.error
    with pytest.raises(JobFailed, match="no luck"):
        failed.raise_for_status()


@pytest.fixture
def one_stream(settings):
    """An API that serves one event stream at a time (set before ``live_server`` builds it)."""
    settings["EVENTS_MAX_STREAMS"] = 1


def test_wait_polls_when_the_event_stream_is_refused(one_stream, live_server, start_worker, caplog):
    # Given an API that serves one stream at a time, held by someone else
    client = Client(live_server)
    parked = client.submit("sleep", kwargs={"seconds": 30})
    holder = requests.get(f"{live_server}/jobs/{parked.id}/events", stream=True, timeout=10)
    assert holder.status_code == 200
    start_worker("--queues", "high")
    caplog.set_level(logging.INFO, logger="jobservice_client")

    try:
        # When the client waits for another job
        job = client.submit("sleep", kwargs={"seconds": 0.5, "steps": 2}, priority="high")
        job.wait(timeout=60, poll_interval=0.1)
    finally:
        holder.close()

    # Then the stream's 503 sent it to polling, and it still saw the end
    assert "no event stream (HTTP 503" in caplog.text
    assert job.status == "COMPLETED" and job.result == {"slept": 0.5}


def test_errors_are_typed_as_the_api_answers_them(live_server):
    client = Client(live_server)

    with pytest.raises(NotFound) as missing:
        client.job("no-such-job")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(NotFound):
        client.submit("no_such_task")
    with pytest.raises(BadRequest) as refused:
        client.submit("sleep", priority="urgent")
    assert refused.value.status == 422 and "priority" in refused.value.message
    with pytest.raises(TypeError, match="task arguments go in args= or kwargs="):
        client.submit("sleep", seconds=1)

    # a queued job (no worker here) outlasts a wait's timeout: raised, and the job goes on
    job = client.submit("sleep", kwargs={"seconds": 30})
    with pytest.raises(WaitTimeout) as timed_out:
        job.wait(timeout=0.5)
    assert timed_out.value.job is job and job.status == "QUEUED"
    # cancelled: wait returns at once, and raise_for_status says so
    assert job.cancel().status == "CANCELLED"
    assert job.wait(timeout=5).status == "CANCELLED"
    with pytest.raises(JobCancelled):
        job.raise_for_status()
    with pytest.raises(Conflict) as conflict:
        job.cancel()
    assert conflict.value.status == 409
    # any route, a write without a body too (not refused 415: the client says it is no web form)
    with pytest.raises(Conflict):
        client.request("POST", f"/jobs/{job.id}/cancel")
    assert client.request("GET", "/tasks").json()["tasks"]


@pytest.fixture
def keyed_and_limited(settings):
    """An API with one key, allowed one submission a minute (set before ``live_server`` builds it)."""
    settings.update(API_KEYS="alice:alice-key-0123456789abcdef", RATE_LIMIT_ENABLED=1, RATE_LIMIT_SUBMIT="1/minute")


def test_unknown_keys_and_rate_limits_are_typed(keyed_and_limited, live_server):
    with pytest.raises(Unauthorized):
        Client(live_server, "wrong-key").job("x")
    client = Client(live_server, "alice-key-0123456789abcdef")
    client.submit("sleep")
    with pytest.raises(RateLimited) as limited:
        client.submit("sleep")  # Retry-After is the rest of the minute: past the 30 s cap, raised
    assert limited.value.status == 429
    assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 60


def test_jobs_follows_pages_and_filters_by_keyword_arguments(live_server):
    client = Client(live_server)
    added = [client.submit("add", kwargs={"a": n, "b": 1}).id for n in range(5)]

    # every page, newest first, by cursor; limit stops early
    listed = list(client.jobs(task="add", page_size=2))
    assert [job.id for job in listed] == added[::-1]
    assert [job.id for job in client.jobs(task="add", status="QUEUED", page_size=2, limit=3)] == added[::-1][:3]
    # a listed job leaves its arguments out; asked for, they are read
    assert listed[0].partial and listed[0].kwargs == {"a": 4, "b": 1}

    seven = client.submit("echo", kwargs={"document_id": 7, "draft": True})
    seven_text = client.submit("echo", kwargs={"document_id": "7"})
    client.submit("echo", kwargs={"document_id": 8, "draft": True})

    def ids(**filters) -> list[str]:
        return [job.id for job in client.jobs(page_size=1, **filters)]

    # 7 matches the number and the text "7", across pages (the cursor carries the filters)
    assert ids(kwargs={"document_id": 7}) == [seven_text.id, seven.id]
    assert ids(task="echo", kwargs={"document_id": 7, "draft": True}) == [seven.id]
    assert ids(kwargs={"a": 4}) == [added[4]] and ids(kwargs={"a": 4}, task="echo") == []
    with pytest.raises(TypeError):
        list(client.jobs(kwargs={"document_id": [7]}))
    with pytest.raises(BadRequest) as refused:
        list(client.jobs(kwargs={"bad name": 1}))
    assert refused.value.status == 422


@pytest.fixture
def quick_keepalive(monkeypatch):
    """The API's event stream sends its keep-alive every 0.3 s (5 s in production)."""
    monkeypatch.setattr("backend.api.events.KEEPALIVE_SECONDS", 0.3)


def test_wait_timeout_is_honoured_while_the_stream_sends_only_keepalives(quick_keepalive, live_server):
    # Given a queued job (no worker) whose event stream brings only keep-alives, more often
    # than the wait's timeout
    client = Client(live_server)
    job = client.submit("sleep", kwargs={"seconds": 30})
    outcome = []

    def wait():
        try:
            job.wait(timeout=1.5)
            outcome.append("returned")
        except WaitTimeout:
            outcome.append("WaitTimeout")

    # When it waits for it with that timeout
    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    try:
        # Then WaitTimeout comes though the stream never goes quiet (it used to block until the end)
        assert outcome == ["WaitTimeout"], "wait(timeout=1.5) still blocked on a stream of keep-alives"
    finally:
        client.cancel(job.id)
        waiter.join(timeout=10)


def test_a_naive_datetime_is_refused_as_the_api_refuses_a_naive_run_at(live_server):
    client = Client(live_server)
    job = client.submit("echo")
    # a naive datetime names no instant (local time? UTC?): refused before anything is sent
    with pytest.raises(ValueError, match="zone"):
        client.jobs(created_after=datetime.now() - timedelta(minutes=5))
    with pytest.raises(ValueError, match="zone"):
        client.submit("echo", run_at=datetime.now())
    # one with a zone finds the job, whatever the machine's zone
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert job.id in [j.id for j in client.jobs(created_after=since.astimezone(timezone(timedelta(hours=9))))]
