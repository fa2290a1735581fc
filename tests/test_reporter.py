"""The worker's report sender against a real API: batches, retries, and a bad report isolated."""

from __future__ import annotations

import time

import pytest

from backend.runner.reporter import RecentSet, Reporter
from tests.conftest import TOKEN

pytestmark = pytest.mark.one_pass(reason="the worker runtime; the store's side of its reports is tested on both stores")


def test_one_bad_report_is_dropped_and_the_rest_of_its_batch_lands(client, live_server):
    jobs = [client.post("/tasks/add", json={"args": [i, 1]}).get_json() for i in range(5)]
    reporter = Reporter(live_server, TOKEN)
    reporter.started(jobs[0]["job_id"], 1, "w")
    # a report the API cannot accept (a task bypassing the job context's checks)
    reporter._put({"job_id": jobs[1]["job_id"], "attempt": 1, "event": "progress", "progress": 500})
    for job in jobs:
        reporter.completed(job["job_id"], 1, "done")

    assert reporter.flush(timeout=30)
    reporter.close()

    after = [client.get(f"/jobs/{job['job_id']}").get_json() for job in jobs]
    assert [(j["status"], j["result"]) for j in after] == [("COMPLETED", "done")] * 5
    assert after[0]["worker"] == "w"


def test_reports_wait_for_an_api_that_is_down_then_land(client, settings):
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from backend.app import create_app
    from backend.dev.redis_server import free_port

    job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    port = free_port()
    reporter = Reporter(f"http://127.0.0.1:{port}", TOKEN)
    reporter.completed(job["job_id"], 1, 2)
    assert not reporter.flush(timeout=1.0)  # nothing listens yet

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", port, create_app(settings), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert reporter.flush(timeout=30)
    finally:
        server.shutdown()
        reporter.close()
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"


def test_a_refusal_is_remembered_and_the_memory_stays_bounded(client, live_server):
    job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    assert client.post(f"/jobs/{job['job_id']}/cancel", json={}).status_code == 200
    reporter = Reporter(live_server, TOKEN)

    # the API refuses a report for the cancelled attempt: the task's next progress sees it
    reporter.started(job["job_id"], 1, "w")
    assert reporter.flush(timeout=30)
    assert reporter.progress(job["job_id"], 1, 50, None) is False

    # a long-lived worker keeps only the latest refusals, the newest always among them
    reporter.refused = RecentSet(size=3)
    for n in range(10):
        reporter.refused.add((f"job-{n}", 1))
    reporter.close()
    assert len(reporter.refused) == 3
    assert ("job-9", 1) in reporter.refused
    assert ("job-0", 1) not in reporter.refused


def test_reports_held_by_the_linger_go_at_once_when_the_worker_goes_idle(client, live_server, monkeypatch):
    from backend.runner import reporter as reporter_module

    # Given a reporter that just sent a request, and whose linger is long (30 s)
    monkeypatch.setattr(reporter_module, "LINGER_SECONDS", 30.0)
    first, second = (client.post("/tasks/add", json={"args": [i, 1]}).get_json() for i in range(2))
    reporter = Reporter(live_server, TOKEN)
    reporter.completed(first["job_id"], 1, 1)

    def status(job) -> str:
        return client.get(f"/jobs/{job['job_id']}").get_json()["status"]

    deadline = time.monotonic() + 10
    while status(first) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(first) == "COMPLETED"  # after a quiet spell: sent at once
    # When another end is queued, it waits for the linger
    reporter.completed(second["job_id"], 1, 2)
    time.sleep(1.0)
    assert status(second) == "QUEUED"
    # Then the worker going idle (nothing left to run) sends it without waiting out the linger
    reporter.hurry()
    deadline = time.monotonic() + 10
    while status(second) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(second) == "COMPLETED"
    reporter.close()


def test_a_worker_fed_one_job_at_a_time_batches_its_reports(app, client, settings, start_worker):
    """A queue that runs dry between two jobs a few ms apart is not idle: the worker keeps its
    reports for the linger instead of sending one request per job (issue 17: under a steady
    trickle every job's end cost the worker, the API and the store a request of its own)."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    posts: list[str] = []

    def counting(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/internal/reports":
            posts.append(environ["PATH_INFO"])
        return app.wsgi_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer

    class Threaded(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server("127.0.0.1", 0, counting, server_class=Threaded, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        start_worker("--simple", "--name", "trickle", env={"API_BASE_URL": url})

        def wait_done(job_ids: list[str]) -> list[str]:
            deadline = time.monotonic() + 30
            while True:
                statuses = [client.get(f"/jobs/{job_id}").get_json()["status"] for job_id in job_ids]
                if all(s == "COMPLETED" for s in statuses) or time.monotonic() > deadline:
                    return statuses
                time.sleep(0.05)

        # Given a worker that is up and idle
        assert wait_done([client.post("/tasks/add", json={"args": [0, 1]}).get_json()["job_id"]]) == ["COMPLETED"]
        time.sleep(0.5)
        posts.clear()
        # When 20 jobs come ~15 ms apart (each runs in a few ms: the queue is empty in between)
        jobs = []
        for i in range(20):
            jobs.append(client.post("/tasks/add", json={"args": [i, 1]}).get_json()["job_id"])
            time.sleep(0.01)
        # Then every one is reported, and in a few requests, not one per job
        assert wait_done(jobs) == ["COMPLETED"] * 20
        assert len(posts) <= 8, f"{len(posts)} report requests for 20 jobs"
    finally:
        server.shutdown()
