"""The Python client (jobservice_client) against scripted HTTP servers: what a real service
cannot be made to do on cue (answer 503 then 200, drop an event stream half-way, repeat a
cursor, redirect), the event stream parser, and the package standing alone.

Why apart from tests/test_client.py: those run against the real API and workers; these need
only a small scripted HTTP server on loopback (``Scripted``).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobservice_client import (
    Client,
    Job,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
)
from jobservice_client.events import Parser, StreamError
from tests.conftest import ROOT
from tests.test_layers import contract_lines, lint_imports

pytestmark = pytest.mark.one_pass(reason="the client over HTTP against scripted servers: no store involved")

CLIENT_CONTRACT = "The Python client and the service know nothing of each other"


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
