"""The /dashboard job view, live, in a real headless Chromium: a running job's output and logs
arrive from its event stream (fetch + a stream reader, not EventSource, not polling), a waiting
job says why in words, and a tenant's output or log line holding HTML shows as text.

The stream reader itself (dashboard_stream.js) is checked on canned answers: SSE lines split
anywhere across chunks, a dropped stream resumed with Last-Event-ID, a 503's Retry-After, the
stop at ``end`` and at a 204.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.tasks import current_job, task
from tests.browser import launch, playwright, requires_chromium
from tests.conftest import TASK_MODULES
from tests.helpers import wait_for_status

pytestmark = [
    requires_chromium,
    pytest.mark.one_pass(reason="a page in Chromium: the store behind the API plays no part in what it shows"),
]

SHOTS = Path("/tmp/issue14-shots")
# No quotes: it reads the same as text in JSON and in the page.
PAYLOAD = "<img src=x onerror=window.__pwned=1;alert(1)>"
THIS_MODULE = __name__
logger = logging.getLogger(__name__)


@task("chatter", concurrency=1)
def chatter(release_file: str) -> dict:
    """Log and emit a payload, then emit a numbered token every 0.2 s until ``release_file``
    exists (60 s at most): a long task with live output, one at a time."""
    job = current_job()
    logger.info("chatter starts %s", PAYLOAD)
    job.log(f"a tenant's log line {PAYLOAD}", level="WARNING")
    for word in ("Hello ", "from ", "the ", "task. "):
        job.emit(word)
    job.emit(PAYLOAD)
    job.progress(50, "talking until released")
    ticks = 0
    deadline = time.monotonic() + 60
    while not Path(release_file).exists() and time.monotonic() < deadline:
        ticks += 1
        job.emit(f" tick {ticks}")
        time.sleep(0.2)
    job.progress(100, f"done after {ticks} ticks")
    return {"ticks": ticks}


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog {dialog.message}"), dialog.dismiss()))
    return page


def stream_module(page, live_server):
    page.goto(f"{live_server}/dashboard")
    page.evaluate("async () => { window.stream = await import('/static/dashboard_stream.js'); }")


@pytest.mark.timeout(60)
def test_the_stream_reader_parses_lines_split_anywhere(live_server, page):
    stream_module(page, live_server)
    # Given SSE text cut at awkward places: inside a field, between \r and \n, in a data line
    chunks = [
        "retry: 150\n\n: keep-alive\n",
        'id: 1-0\nevent: progress\ndata: {"progress": 5,',
        ' "message": "a"}\r',
        '\n\r\nid: 1-1\nevent: output\ndata: {"data":"x"}\ndata: more\r\rdata:no-space\n',
        "\n",
    ]
    # When the parser reads them
    parsed = page.evaluate(
        """chunks => { const events = [], retries = [];
        const parser = new window.stream.EventParser((e) => events.push(e), (ms) => retries.push(ms));
        chunks.forEach((c) => parser.push(c));
        return { events: events.map((e) => [e.id, e.kind, e.data]), retries }; }""",
        chunks,
    )
    # Then it finds each event whole, once, and the retry time
    assert parsed["retries"] == [150]
    assert parsed["events"] == [
        ["1-0", "progress", '{"progress": 5, "message": "a"}'],
        ["1-1", "output", '{"data":"x"}\nmore'],
        [None, "message", "no-space"],
    ]


@pytest.mark.timeout(60)
def test_a_dropped_stream_resumes_from_its_last_event_id_and_stops_at_end(live_server, page):
    stream_module(page, live_server)
    answers = [
        # busy: come back in 1 s
        {"status": 503, "headers": {"Retry-After": "1"}, "body": '{"error": {"message": "too many streams"}}'},
        # two events, then the connection drops (no end)
        {
            "body": 'retry: 50\n\nid: 5-0\nevent: progress\ndata: {"progress": 40, "message": "m"}\n\n'
            'id: 5-1\nevent: output\ndata: {"data": "tok", "attempt": 1}\n\n'
        },
        {"body": 'id: 6-0\nevent: end\ndata: {"status": "COMPLETED"}\n\n'},
    ]
    seen: list[str | None] = []

    def answer(route):
        seen.append(route.request.headers.get("last-event-id"))
        canned = answers[min(len(seen), len(answers)) - 1]
        route.fulfill(
            status=canned.get("status", 200),
            headers={"Content-Type": "text/event-stream", **canned.get("headers", {})},
            body=canned["body"],
        )

    page.route("**/canned/events", answer)
    # When the page reads the stream until it ends
    result = page.evaluate(
        """() => new Promise((resolve) => { const events = [], states = [];
        window.stream.openEventStream('/canned/events', {
          headers: () => ({ Authorization: 'Bearer k' }),
          onEvent: (e) => events.push([e.id, e.kind, e.data]),
          onState: (s) => { states.push(s); if (s === 'ended' || s === 'failed') resolve({ events, states }); },
        }); })"""
    )
    # Then it waited out the 503, reconnected after the drop with the last id it saw, got each
    # event once, and asked no more after end
    assert seen == [None, None, "5-1"]
    assert result["events"] == [
        ["5-0", "progress", {"progress": 40, "message": "m"}],
        ["5-1", "output", {"data": "tok", "attempt": 1}],
        ["6-0", "end", {"status": "COMPLETED"}],
    ]
    assert result["states"] == ["connecting", "reconnecting", "live", "reconnecting", "live", "ended"]

    # And a 204 (the end was seen before) ends the stream without an event
    page.route("**/ended/events", lambda route: route.fulfill(status=204, body=""))
    ended = page.evaluate(
        """() => new Promise((resolve) => { const events = [];
        window.stream.openEventStream('/ended/events', { headers: () => ({}), onEvent: (e) => events.push(e),
          onState: (s) => { if (s === 'ended') resolve(events.length); } }); })"""
    )
    assert ended == 0
    assert page.errors == []


def highest_tick(text: str) -> int:
    return max((int(n) for n in re.findall(r"tick (\d+)", text)), default=0)


@pytest.mark.timeout(150)
def test_the_job_view_shows_live_output_logs_and_a_waiting_reason_in_words(
    settings, live_server, start_worker, client, tmp_path, page
):
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"
    release = tmp_path / "release"
    start_worker("--name", "live-worker", "--simple", env={"TASK_MODULES": settings["TASK_MODULES"]})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        # Given the page, when the user starts a long task from it
        page.goto(f"{live_server}/dashboard")
        page.wait_for_selector("#start-task option:has-text('chatter')", state="attached")
        page.select_option("#start-task", "chatter")
        page.fill("#start-kwargs", f'{{"release_file": "{release}"}}')
        page.click("#start-button")
        page.wait_for_selector("#start-result:has-text('started')")
        running = page.inner_text("#start-result").split()[-1]

        # Then its view follows it live: its output arrives token by token, as text
        page.wait_for_selector("#detail .job-status.PROCESSING", timeout=30000)
        page.wait_for_function(
            "text => document.getElementById('job-output').innerText.includes(text)", arg=PAYLOAD, timeout=30000
        )
        first = highest_tick(page.inner_text("#job-output"))
        page.wait_for_function(
            "n => /tick (\\d+)(?!.*tick)/s.test(document.getElementById('job-output').innerText) &&"
            " Number(document.getElementById('job-output').innerText.match(/tick (\\d+)(?!.*tick)/s)[1]) > n",
            arg=first + 2,
            timeout=30000,
        )
        assert "Hello from the task. " in page.inner_text("#job-output")
        # and its log lines (the logging record and current_job().log()), as text too
        page.wait_for_function(
            "() => { const t = document.getElementById('job-logs').innerText;"
            " return t.includes('chatter starts <img') && t.includes(\"a tenant's log line <img\"); }",
            timeout=30000,
        )
        assert "50%" in page.inner_text("#detail .job-progress")
        assert "talking until released" in page.inner_text("#detail .job-progress")

        # Given a second chatter (one at a time) and a job scheduled an hour ahead
        held = client.post("/tasks/chatter", json={"kwargs": {"release_file": str(release)}}).get_json()
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        scheduled = client.post("/tasks/sleep", json={"run_at": later}).get_json()
        waits = {job["job_id"]: client.get(f"/jobs/{job['job_id']}").get_json() for job in (held, scheduled)}
        assert waits[held["job_id"]]["waiting_reason"] == "concurrency_limit"
        assert waits[scheduled["job_id"]]["waiting_reason"] == "scheduled"

        # Then the list says in words why each waits, and when the scheduled one resumes
        for job_id, job in waits.items():
            page.wait_for_function(
                "([id, words]) => { const r = document.querySelector(`tr[data-job-id='${id}'] .waiting`);"
                " return r && r.innerText.includes(words); }",
                arg=[job_id, job["waiting_detail"]],
                timeout=15000,
            )
        assert "resumes" in page.inner_text(f"tr[data-job-id='{scheduled['job_id']}'] .waiting")
        countdown = page.inner_text(f"tr[data-job-id='{scheduled['job_id']}'] .countdown")
        assert re.fullmatch(r"in (1 h|\d+ min( \d+ s)?)", countdown), countdown
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "dashboard-live-output.png"), full_page=True)

        # When the user opens the waiting job, its view says why it waits
        page.click(f"tr[data-job-id='{held['job_id']}'] td:first-child")
        page.wait_for_function(
            "words => { const w = document.querySelector('#detail .waiting');"
            " return w && w.innerText.includes(words); }",
            arg=waits[held["job_id"]]["waiting_detail"],
            timeout=15000,
        )
        page.wait_for_selector("#detail .job-stream:has-text('live')")
        page.screenshot(path=str(SHOTS / "dashboard-waiting.png"), full_page=True)

        # When the first is released, the waiting one runs; its view sees it run and end, then
        # reads the log lines stored after the last it saw
        with page.expect_response(lambda r: f"/jobs/{held['job_id']}/logs?" in r.url, timeout=45000):
            release.write_text("done")
            page.wait_for_selector("#detail .job-status.COMPLETED", timeout=30000)
        page.wait_for_selector("#detail .job-stream:has-text('ended')", timeout=15000)
        assert "done after" in page.inner_text("#detail .job-progress")
        assert "100%" in page.inner_text("#detail .job-progress")
        page.wait_for_selector("#detail .attempts td.COMPLETED")
        # each line once, though both the store and the stream's history gave it
        logs = page.inner_text("#job-logs")
        assert logs.count("chatter starts <img") == 1 and logs.count("a tenant's log line <img") == 1, logs
        assert wait_for_status(client, running, {"COMPLETED"})["result"]["ticks"] > 0
    finally:
        release.write_text("done")

    # No payload ran or became an element, and no job was polled: each view read its job once
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    assert page.errors == []
    for job_id in (running, held["job_id"]):
        assert sum(url.endswith(f"/jobs/{job_id}") for url in requests) == 1, job_id


@pytest.mark.timeout(90)
def test_the_open_job_view_follows_its_job_when_it_is_run_again(live_server, client, page):
    job_id = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]  # no worker: it waits
    client.post(f"/jobs/{job_id}/cancel", json={})
    page.goto(f"{live_server}/dashboard")
    row = f"tr[data-job-id='{job_id}']"
    page.click(f"{row} td:first-child")  # the user opens the cancelled job: its stream ended
    page.wait_for_selector("#detail .job-stream:has-text('ended')")

    # When the user presses Retry on its row, the view follows the new attempt at once
    page.click(f"{row} button:has-text('Retry')")
    page.wait_for_selector("#detail .job-status.QUEUED", timeout=15000)
    page.wait_for_selector("#detail dd:text-is('2')")
    # and when another client cancels it (seen live) and runs it again, the list's refresh brings it back
    client.post(f"/jobs/{job_id}/cancel", json={})
    page.wait_for_selector("#detail .job-stream:has-text('ended')", timeout=15000)
    assert client.post(f"/jobs/{job_id}/retry", json={}).status_code == 202
    page.wait_for_selector("#detail .job-status.QUEUED", timeout=15000)
    page.wait_for_selector("#detail dd:text-is('3')")
    assert "ended" not in page.inner_text("#detail .job-stream")
    assert page.errors == []
