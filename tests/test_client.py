"""The Python client (jobservice_client) against the real API, real workers and real HTTP servers.

The API runs as ``live_server`` with workers from ``start_worker``: nothing of it is mocked.
What a real service cannot be made to do on cue (answer 503 then 200, drop an event stream
half-way) is played by a small scripted HTTP server on loopback (``Scripted``).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from jobservice_client import (
    BadRequest,
    Client,
    Conflict,
    Job,
    JobCancelled,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from jobservice_client.events import Parser, StreamError
from tests.conftest import ROOT
from tests.test_layers import contract_lines, lint_imports

pytestmark = pytest.mark.one_pass(reason="the client over HTTP; every route it calls is tested on both stores")

CLIENT_CONTRACT = "The Python client and the service know nothing of each other"


# -- against the real service --------------------------------------------------------------


def test_task_arguments_named_like_options_reach_the_task(live_server, start_worker):
    # Given a client and a worker
    client = Client(live_server)
    start_worker()

    # When a job's task arguments are named like the submission's options, beside those options
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


# -- against scripted servers ------------------------------------------------------------


class Scripted:
    """A real HTTP server on loopback: the n-th request gets ``answers[n]`` (status, headers,
    body), the last answer past the list; each request is recorded with its arrival time and
    the client's address. HTTP/1.0 (a connection per request, so a stream ends with its body),
    or HTTP/1.1 with ``keep_alive``."""

    def __init__(self, answers, keep_alive: bool = False):
        self.answers, self.requests = list(answers), []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                index = len(scripted.requests)
                scripted.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body,
                     "at": time.monotonic(), "peer": self.client_address}
                )  # fmt: skip
                status, headers, payload = scripted.answers[min(index, len(scripted.answers) - 1)]
                payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                if keep_alive:
                    self.send_header("Content-Length", str(len(payload)))
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made = []

    def make(*answers, keep_alive: bool = False) -> Scripted:
        made.append(Scripted(answers, keep_alive))
        return made[-1]

    yield make
    for server in made:
        server.close()


def job_body(status="COMPLETED", **fields) -> dict:
    return {"job_id": "j1", "task": "sleep", "status": status, "progress": 0, "result": None, **fields}


def error(code: str) -> dict:
    return {"error": {"code": code, "message": code.replace("_", " "), "details": None}}


def test_a_503_is_tried_again_after_its_retry_after(scripted):
    server = scripted((503, {"Retry-After": "1"}, error("service_unavailable")), (200, {}, job_body()))

    job = Client(server.url).job("j1")

    assert job.status == "COMPLETED"
    first, second = server.requests
    assert second["at"] - first["at"] >= 1.0  # it waited what the server asked
    assert (first["path"], second["path"]) == ("/jobs/j1", "/jobs/j1")


def test_a_submission_is_sent_again_only_after_an_answer_that_says_it_did_nothing(scripted):
    # a 429 says the job was not created: the same POST goes again
    limited = scripted((429, {"Retry-After": "0"}, error("too_many_requests")), (202, {}, job_body("QUEUED")))
    job = Client(limited.url).submit("sleep", kwargs={"seconds": 1})
    assert job.status == "QUEUED"
    assert [r["method"] for r in limited.requests] == ["POST", "POST"]
    assert json.loads(limited.requests[1]["body"]) == {"kwargs": {"seconds": 1}}

    # a 500 may have come after the job was recorded: raised, never sent twice
    broken = scripted((500, {}, error("internal_error")))
    with pytest.raises(ServerError):
        Client(broken.url).submit("sleep")
    assert len(broken.requests) == 1


def test_calls_share_one_kept_alive_connection(scripted):
    server = scripted(
        (404, {}, error("not_found")),
        (503, {"Retry-After": "0"}, error("service_unavailable")),
        (200, {}, job_body()),
        (202, {}, job_body("QUEUED")),
        keep_alive=True,
    )
    client = Client(server.url)

    with pytest.raises(NotFound):
        client.job("j1")
    client.job("j1")  # a 503, then the answer
    client.submit("sleep")

    assert [r["method"] for r in server.requests] == ["GET", "GET", "GET", "POST"]
    assert len({r["peer"] for r in server.requests}) == 1  # one connection, one client port


def test_retries_are_bounded_and_a_long_retry_after_is_raised(scripted):
    down = scripted((503, {"Retry-After": "0"}, error("service_unavailable")))
    with pytest.raises(Unavailable) as unavailable:
        Client(down.url, retries=2).job("j1")
    assert len(down.requests) == 3 and unavailable.value.retry_after == 0

    later = scripted((429, {"Retry-After": "120"}, error("too_many_requests")))
    with pytest.raises(RateLimited) as limited:
        Client(later.url).job("j1")
    assert len(later.requests) == 1 and limited.value.retry_after == 120


def sse(*frames: tuple[str, str, dict]) -> bytes:
    return b"retry: 2000\n\n" + b"".join(
        f"id: {eid}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode() for eid, kind, data in frames
    )


def test_a_dropped_event_stream_is_resumed_after_its_last_event(scripted):
    stream = {"Content-Type": "text/event-stream"}
    server = scripted(
        (
            200,
            stream,
            sse(("1-0", "status", job_body("PROCESSING")), ("2-0", "progress", {"progress": 50, "message": "half"})),
        ),
        (200, stream, sse(("3-0", "end", job_body(result={"slept": 1})))),
    )
    seen = []

    job = Job(Client(server.url), job_body("QUEUED"))
    job.wait(timeout=30, on_progress=lambda j: seen.append((j.status, j.progress_message)))

    assert job.status == "COMPLETED" and job.result == {"slept": 1}
    assert seen == [("PROCESSING", None), ("PROCESSING", "half"), ("COMPLETED", None)]
    first, second = server.requests
    assert "Last-Event-ID" not in first["headers"] and second["headers"]["Last-Event-ID"] == "2-0"


def test_a_server_without_the_event_stream_is_polled(scripted):
    server = scripted(
        (404, {}, error("not_found")),  # GET /jobs/j1/events: no such route
        (200, {}, job_body("PROCESSING")),  # GET /jobs/j1: the job is there
        (200, {}, job_body("PROCESSING")),  # the first poll
        (200, {}, job_body("COMPLETED", result=3)),
    )

    job = Job(Client(server.url), job_body("QUEUED")).wait(timeout=30, poll_interval=0.01)

    assert job.status == "COMPLETED" and job.result == 3
    assert [r["path"] for r in server.requests] == ["/jobs/j1/events"] + ["/jobs/j1"] * 3


def test_polling_waits_for_a_retry_no_longer_than_the_waits_timeout(scripted):
    # Given a server without the event stream whose job route then answers 503, retry in 20 s
    server = scripted(
        (404, {}, error("not_found")),
        (200, {}, job_body("PROCESSING")),
        (503, {"Retry-After": "20"}, error("service_unavailable")),
    )
    job = Job(Client(server.url, retries=1), job_body("QUEUED"))

    # When it waits 1 s: the 503 is raised at once (its wait would pass the timeout), not
    # slept on and sent again
    with pytest.raises(Unavailable) as raised:
        job.wait(timeout=1, poll_interval=0.01)
    assert raised.value.retry_after == 20 and len(server.requests) == 3


def test_jobs_stops_when_the_server_repeats_its_cursor(scripted):
    server = scripted((200, {}, {"jobs": [job_body("QUEUED")], "next_cursor": "same"}))
    seen = []

    with pytest.raises(ServerError, match="repeated"):
        for job in Client(server.url, retries=0).jobs():
            seen.append(job.id)
            if len(seen) > 50:
                break
    assert seen == ["j1", "j1"]  # the first page, and the page its repeated cursor brought


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_is_raised_with_where_it_points(scripted, status):
    # a redirect whose body is a job's JSON is not read as the job
    server = scripted((status, {"Location": "https://jobs.example.invalid/jobs/j1"}, job_body()))
    with pytest.raises(ServerError, match="redirects to https://jobs.example.invalid/jobs/j1") as raised:
        Client(server.url).job("j1")
    assert raised.value.status == status and len(server.requests) == 1


def test_depends_on_takes_one_id_one_job_or_several(scripted):
    server = scripted((202, {}, job_body("PENDING")))
    client = Client(server.url)
    parent = Job(client, job_body("QUEUED", job_id="job_p"))

    client.submit("echo", depends_on="job_abc")
    client.submit("echo", depends_on=parent)
    client.submit("echo", depends_on=["job_abc", parent])
    with pytest.raises(TypeError):
        client.submit("echo", depends_on=7)

    sent = [json.loads(r["body"])["depends_on"] for r in server.requests]
    assert sent == [["job_abc"], ["job_p"], ["job_abc", "job_p"]]


def test_nan_in_the_arguments_is_refused_before_sending_not_unavailable(scripted):
    server = scripted((202, {}, job_body("QUEUED")))
    with pytest.raises(ValueError, match="JSON") as raised:
        Client(server.url).submit("echo", kwargs={"x": float("nan")})
    assert not isinstance(raised.value, Unavailable) and server.requests == []


# -- the event stream parser -------------------------------------------------------------


def test_the_parser_reads_frames_however_the_bytes_are_cut():
    raw = (
        'retry: 2000\r\n\r\n: keep-alive\r\n\r\nid: 1-0\r\nevent: status\r\ndata: {"a": 1}\r\n\r\n'
        "id: 2-0\nevent: output\ndata: line one\ndata: line two\n\n"
        'id:3-0\revent:end\rdata:{"é": true}\r\r'
    ).encode()
    for cut in range(1, len(raw)):
        parser = Parser()
        events = parser.feed(raw[:cut]) + parser.feed(raw[cut:]) + parser.close()
        assert [(e.id, e.kind, e.data) for e in events] == [
            ("1-0", "status", '{"a": 1}'),
            ("2-0", "output", "line one\nline two"),
            ("3-0", "end", '{"é": true}'),
        ], cut
        assert parser.retry_ms == 2000


def test_the_parser_holds_no_more_than_its_cap_of_one_event():
    parser = Parser(max_event_bytes=1000)
    parser.feed(b"data: " + b"x" * 900 + b"\n")
    with pytest.raises(StreamError):
        parser.feed(b"data: " + b"x" * 200)


# -- the package stands alone --------------------------------------------------------------


def test_the_client_imports_nothing_of_the_service(tmp_path):
    # Given a copy of both packages, where the client contract holds
    for package in ("backend", "jobservice_client"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    assert contract_lines(lint_imports(tmp_path).stdout)[CLIENT_CONTRACT] == "KEPT"

    # When the client imports a module of the service
    with (tmp_path / "jobservice_client" / "client.py").open("a") as source:
        source.write("\nimport backend.core.errors  # noqa\n")
    result = lint_imports(tmp_path)

    # Then lint-imports fails on that contract
    assert result.returncode != 0
    assert contract_lines(result.stdout)[CLIENT_CONTRACT] == "BROKEN", result.stdout
    assert "jobservice_client.client -> backend.core.errors" in result.stdout
