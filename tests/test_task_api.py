"""The task API of long tasks with real workers: output and progress events, captured logs, the
final progress message, snooze and checkpoints (``backend/tasks/context.py``, ``backend/runner``).

Each behaviour that differs between the two kinds of worker (a ``--simple`` worker runs the task
in its own process; the forking worker in a work-horse that exits after it) runs on both.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from redis import Connection, ConnectionPool, Redis
from rq.job import Job as RQJob

from backend.broker.events import EventLog
from backend.runner.reporter import Reporter
from backend.runner.task_io import EventSender, RunLog
from tests.helpers import attempts, get_job, submit, wait_for_status, wait_until

pytestmark = pytest.mark.one_pass(
    store="postgres",
    reason="the worker's side of the task API; the store's side is tested on both stores in test_snooze, "
    "test_checkpoints and test_job_logs",
)

KINDS = pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])


def _events(redis_conn, job_id: str) -> list[tuple[str, object]]:
    """The job's events in its Redis stream, oldest first: (kind, data)."""
    return [
        (event.kind, json.loads(event.data)) for event in EventLog(redis_conn).history(job_id, after=None, limit=500)
    ]


def _logs(client, job_id: str) -> list[tuple[int, str, str]]:
    response = client.get(f"/jobs/{job_id}/logs")
    assert response.status_code == 200, response.get_json()
    return [(line["attempt"], line["level"], line["message"]) for line in response.get_json()["lines"]]


@KINDS
def test_a_finished_job_keeps_the_last_progress_message_its_task_reported(client, run_burst_worker, simple):
    # Given a sleep task reporting ten steps faster than the reporter sends progress (coalesced)
    job_id = submit(client, "sleep", kwargs={"seconds": 0.5, "steps": 10})["job_id"]

    # When a real worker runs it to the end
    run_burst_worker(simple=simple)

    # Then the job shows the task's last message, not one of the coalesced ones before it
    done = get_job(client, job_id)
    assert (done["status"], done["progress"], done["progress_message"]) == ("COMPLETED", 100, "step 10 of 10")


@KINDS
def test_emit_progress_and_logging_reach_the_jobs_event_stream_and_its_log(
    client, run_burst_worker, redis_conn, simple
):
    # Given a task that emits three words, reports progress after each, and logs
    job_id = submit(client, "chatty", kwargs={"words": ["alpha", "beta", "gamma"]})["job_id"]

    # When a real worker runs it
    run_burst_worker(simple=simple)

    # Then its Redis stream holds an output and a progress event per word, in order
    events = _events(redis_conn, job_id)
    assert [data for kind, data in events if kind == "output"] == [
        {"data": {"word": word}, "attempt": 1} for word in ("alpha", "beta", "gamma")
    ]
    assert [data for kind, data in events if kind == "progress"] == [
        {"progress": 33, "message": "word 1 of 3"},
        {"progress": 66, "message": "word 2 of 3"},
        {"progress": 100, "message": "word 3 of 3"},
    ]
    # And a log event per captured line: INFO and up from logging, and the task's own line,
    # neither the DEBUG record under the task's level nor the worker runtime's own records
    lines = [data for kind, data in events if kind == "log"]
    assert [(line["level"], line["message"], line["attempt"]) for line in lines] == [
        ("INFO", "said 3 words", 1),
        ("WARNING", "by hand", 1),
    ]
    assert all(line["at"].endswith("Z") for line in lines)
    # And the job's log in the store holds the same lines
    assert get_job(client, job_id)["status"] == "COMPLETED"
    assert _logs(client, job_id) == [(1, "INFO", "said 3 words"), (1, "WARNING", "by hand")]


def test_a_task_log_level_of_debug_keeps_its_debug_lines(client, run_burst_worker, redis_conn):
    job_id = submit(client, "chatty_debug")["job_id"]

    worker = run_burst_worker()

    assert _logs(client, job_id) == [
        (1, "DEBUG", "a debug line"),
        (1, "DEBUG", "a debug line by hand"),
        (1, "INFO", "an info line"),
    ]
    # The worker's own log stayed at its level while the task's was lower
    assert "a debug line" not in worker.output()


@KINDS
def test_a_snoozing_task_waits_queued_without_a_failure_then_completes(client, start_worker, simple):
    # Given a task that snoozes 1 s on its first attempt
    job_id = submit(client, "snooze_once", kwargs={"seconds": 1})["job_id"]

    # When a real worker (with RQ's scheduler) runs it
    args = ["--name", f"snoozer-{simple}"] + (["--simple"] if simple else [])
    worker = start_worker(*args)

    # Then its first attempt ends snoozed: queued again, no retry spent
    wait_for_status(client, job_id, {"COMPLETED"}, timeout=30)
    done = get_job(client, job_id)
    assert (done["result"], done["attempt"], done["retry_count"], done["snoozes"]) == (2, 2, 0, 1), worker.output()
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts(client, job_id)] == [
        (1, "SNOOZED", "the provider said 429"),
        (2, "COMPLETED", None),
    ]
    # And the worker logged no traceback for it
    assert "Traceback" not in worker.output()


@KINDS
def test_a_checkpoint_is_what_the_next_attempt_starts_from(client, start_worker, simple):
    # Given a task counting to 10 with a checkpoint per step, whose first attempt fails at step 6
    job_id = submit(client, "count_with_checkpoints", kwargs={"to": 10, "fail_at": 6}, max_retries=1)["job_id"]

    # When a real worker runs both attempts (the retry waits RETRY_BACKOFF_BASE, 1 s)
    worker = start_worker("--name", f"counter-{simple}", *(["--simple"] if simple else []))
    done = wait_for_status(client, job_id, {"COMPLETED", "FAILED"}, timeout=30)

    # Then the second attempt started from the first one's last checkpoint and ran steps 6-9 only
    assert done["result"] == {"ran": [6, 7, 8, 9], "resumed_from": {"next": 6}, "attempt": 2}, worker.output()
    assert done["checkpoint_at"] is not None and done["retry_count"] == 1


def test_a_checkpoint_after_the_job_was_cancelled_stops_the_task_in_a_simple_worker(client, start_worker, redis_conn):
    # Given a task saving a checkpoint every 50 ms for a minute, in a simple worker (which cannot kill it)
    job_id = submit(client, "checkpoint_until_cancelled")["job_id"]
    worker = start_worker("--burst", "--simple", "--name", "cancelled-checkpointer")
    wait_until(lambda: get_job(client, job_id)["checkpoint_at"] is not None, what="a first checkpoint")

    # When the job is cancelled
    assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200

    # Then its next checkpoint stops the task: the burst worker ends long before the minute is up
    assert worker.wait(timeout=30) == 0, worker.output()
    job = get_job(client, job_id)
    assert (job["status"], job["result"]) == ("CANCELLED", None)
    assert RQJob.fetch(f"{job_id}-1", connection=redis_conn).get_status() == "stopped"


def test_an_event_with_a_lone_surrogate_reaches_redis_with_a_question_mark(redis_conn):
    sender = EventSender(redis_conn)  # the worker's, best effort

    sender.append("job_surrogate", "output", '{"data":"file-\udcff.txt","attempt":1}')

    (event,) = EventLog(redis_conn).history("job_surrogate", after=None, limit=10)
    assert (event.kind, event.data) == ("output", '{"data":"file-?.txt","attempt":1}')


def test_a_work_horse_keeps_every_line_its_flush_timer_was_sending_when_the_task_returned(client, run_burst_worker):
    # Given a task that logs 1,000 lines, then works 0.55 s: the run log's 0.5 s flush timer is
    # sending them when it returns, and the forked work-horse exits (os._exit) right after
    job_id = submit(client, "log_then_work", kwargs={"lines": 1000, "pause": 0.55})["job_id"]

    # When a forking worker runs it
    worker = run_burst_worker(simple=False)

    # Then the job completed and its log holds every line, in order
    assert get_job(client, job_id)["status"] == "COMPLETED"
    page = client.get(f"/jobs/{job_id}/logs?limit=1000").get_json()
    assert [line["message"] for line in page["lines"]] == [f"line {n}" for n in range(1000)], (
        len(page["lines"]),
        worker.output()[-500:],
    )


def test_a_job_log_holds_nothing_a_thread_left_by_an_earlier_job_logs(client, start_worker):
    # Given a job (tenant A) whose task returns leaving a thread that logs its secret 0.5 s later,
    # then a job (tenant B) running for 1.5 s
    first = submit(client, "leave_a_logging_thread", kwargs={"secret": "tenant-A-token-123"})["job_id"]
    second = submit(client, "sleep", kwargs={"seconds": 1.5, "steps": 1})["job_id"]

    # When one simple worker runs both in turn
    worker = start_worker("--burst", "--simple", "--name", "leftover-thread")
    assert worker.wait(timeout=60) == 0, worker.output()
    assert [get_job(client, job)["status"] for job in (first, second)] == ["COMPLETED", "COMPLETED"]

    # Then the second job's log holds none of it (the line was logged: the worker printed it)
    assert _logs(client, second) == []
    assert "tenant-A-token-123" in worker.output()


def test_finish_progress_waits_for_the_progress_post_under_way_in_a_work_horse():
    received: list[bytes] = []

    class SlowAPI(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if b"step 10" in body:
                time.sleep(0.4)  # an API answering in 400 ms (under the worker's 1 s read timeout)
            received.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reporter = Reporter(f"http://127.0.0.1:{server.server_port}", "t", progress_interval=0.1)
        reporter.reset()  # as a forked work-horse: it posts progress itself
        # Given a task that reported step 9 (sent at once), then step 10 (coalesced: the timer posts it)
        reporter.progress("job_x", 1, 90, "step 9 of 10")
        reporter.progress("job_x", 1, 100, "step 10 of 10")
        wait_until(lambda: reporter._timer is None, what="the timer's post under way")
        time.sleep(0.02)

        # When the run ends (the work-horse exits right after finish_progress)
        reporter.finish_progress()

        # Then the last progress had reached the API
        assert any(b"step 10 of 10" in body for body in received), received
    finally:
        server.shutdown()


class _CountingConnection(Connection):
    """A Redis connection counting its writes to the socket: one per round trip."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sends += 1
        return super().send_packed_command(command, check_health)


def test_a_log_flush_is_one_round_trip_to_redis_and_sends_the_reports_first(redis_url, redis_conn):
    counted = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=_CountingConnection))
    reports: list[tuple[int, int]] = []

    class Reports:  # the reporter's side: how many lines, and how many events Redis held by then
        def log_lines(self, job_id, attempt, lines):
            reports.append((len(lines), len(EventLog(redis_conn).history(job_id, after=None, limit=1000))))

    job_id = f"job_flush_{time.monotonic_ns()}"
    run_log = RunLog(job_id, 1, Reports(), EventSender(counted))
    for number in range(1000):
        run_log.add(time.time(), "INFO", f"line {number}")
    # A worker that has appended before: its connection open, Redis knowing the append script
    EventSender(counted).append(job_id + "_before", "log", "{}")
    _CountingConnection.sends = 0

    run_log.close()

    # One pipeline for the 1,000 events
    assert _CountingConnection.sends == 1
    # The reports went first, 200 lines each, before any event
    assert reports == [(200, 0)] * 5
    # And the events are there, in order (the stream keeps its newest ~500)
    events = [
        json.loads(event.data)["message"] for event in EventLog(redis_conn).history(job_id, after=None, limit=1000)
    ]
    assert len(events) >= 500 and events == [f"line {n}" for n in range(1000 - len(events), 1000)]


def test_a_flush_after_redis_forgot_the_append_script_still_appends_in_order(redis_conn):
    # Given a Redis that lost its scripts (restarted, or SCRIPT FLUSH) since the worker started
    sender = EventSender(redis_conn)
    redis_conn.script_flush()

    # When a flush appends its lines' events
    sender.append_many("job_noscript", [("log", '{"n":1}'), ("log", '{"n":2}')])

    # Then they are there, in order
    assert [event.data for event in EventLog(redis_conn).history("job_noscript", after=None, limit=10)] == [
        '{"n":1}',
        '{"n":2}',
    ]
