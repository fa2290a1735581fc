"""The /dashboard page of issue 16 in a real headless Chromium: the Activity charts (jobs ended
per minute, queue depth, run time p50/p95 per task) from the history the service keeps, the
Workers panel (its current job opens in the job view), the search filters of the job list (a
kwargs filter narrows it; a refused filter is said), a queue's Pause button, at 1280x800 and at
390x844 without horizontal scroll (also with long tenant tokens without a space), times on the
browser's clock that the "Created after" filter reads the same way (a browser in Asia/Tokyo), and
no request to another origin (the page works offline).

Screenshots of both widths go to ``$DASHBOARD_SHOTS`` (else the test's tmp_path).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.api.context import services
from tests.browser import launch, playwright, requires_chromium
from tests.helpers import get_job, submit, submit_add, wait_for_status, wait_until

pytestmark = [
    requires_chromium,
    pytest.mark.one_pass(reason="a page in Chromium: the store behind the API plays no part in what it shows"),
]

PAYLOAD = "<img src=x onerror=window.__pwned=1>"
# The page's width and the screen's, and what sticks out of the screen outside a .scroll box
# (a wide table scrolls inside itself, not the page).
WIDTHS = """() => ({ screen: innerWidth, page: document.documentElement.scrollWidth,
  over: [...document.querySelectorAll('body *')]
    .filter((e) => !e.closest('.scroll') && e.getBoundingClientRect().right > innerWidth + 1)
    .map((e) => `${e.tagName}.${e.className.baseVal ?? e.className}#${e.id}`).slice(0, 10) })"""
# Chromium logs each answer of 400 or more itself; the tests check those answers one by one.
REFUSED = re.compile(r"^error: Failed to load resource: the server responded with a status of \d+ ")


@pytest.fixture
def settings(settings):
    # The test's own pass samples the queues (once a minute): the periodic thread would take the
    # minute's sample before the test's jobs wait.
    settings["HOUSEKEEPING_INTERVAL"] = 0
    return settings


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("DASHBOARD_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(live_server, request):
    # A test may ask for the browser's time zone: parametrize("page", ["Asia/Tokyo"], indirect=True)
    timezone = getattr(request, "param", None)
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id=timezone).new_page()
            page.errors = []
            page.urls = []
            page.refused = []
            page.on("request", lambda r: page.urls.append(r.url))
            page.on("response", lambda r: r.status >= 400 and page.refused.append((r.status, r.url)))
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.on("console", lambda m: m.type in ("error", "warning") and page.errors.append(f"{m.type}: {m.text}"))
            yield page
        finally:
            browser.close()


def wait_for_text(page, selector: str, text: str, timeout: float = 20000) -> None:
    page.wait_for_function(
        "([s, t]) => { const n = document.querySelector(s); return n && n.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )


def fits(page, width: int, height: int) -> dict:
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)  # the charts are drawn again at the new width on the next frame
    widths = page.evaluate(WIDTHS)
    assert widths["page"] <= widths["screen"] and not widths["over"], widths
    return widths


def listed_jobs(page) -> list[str]:
    return page.eval_on_selector_all("#jobs tr[data-job-id]", "rows => rows.map((r) => r.dataset.jobId)")


def housekeeping_pass(app) -> None:
    """A housekeeping pass (queue depths sampled), then the roll-up as the pass a minute later
    does it: the history rolls up full minutes only (5 s after their end), and the test waits
    for no minute to end. The day window shows the quarter hour under way, so it has them."""
    assert services(app).housekeeping.run_once() is not None
    roll_up = dict(services(app).housekeeping.steps)["history.roll_up"]
    assert roll_up(now=datetime.now(UTC) + timedelta(seconds=66)) >= 1


@pytest.mark.timeout(150)
def test_charts_workers_search_and_pause_on_a_real_fleet(app, live_server, client, start_worker, page, shots):
    # Given a worker that completed three jobs and failed two, and now runs a long one
    start_worker("--name", "charts-worker", "--simple")
    done = [submit(client, "add", kwargs={"a": a, "b": 1})["job_id"] for a in (1, 2, 3)]
    failed = [submit(client, "fail", kwargs={"message": f"broken {n}"}, max_retries=0)["job_id"] for n in (1, 2)]
    for job_id in done:
        wait_for_status(client, job_id, {"COMPLETED"})
    for job_id in failed:
        wait_for_status(client, job_id, {"FAILED"})
    running = submit(client, "sleep", kwargs={"seconds": 60, "steps": 60})["job_id"]
    wait_for_status(client, running, {"PROCESSING"})

    page.goto(f"{live_server}/dashboard")

    # Then the Workers panel lists the worker, its queues and the job it runs, which opens in the job view
    worker = "#workers-panel tr[data-worker='charts-worker']"
    wait_for_text(page, worker, running)
    row = page.inner_text(worker)
    assert "default" in row and "busy" in row, row
    assert re.search(r"(just now|\d+ s ago)", row), row
    page.click(f"{worker} button.current-job")
    wait_for_text(page, "#detail .job-head", running)
    page.wait_for_selector("#detail .job-status.PROCESSING")

    # When the user searches the list for kwargs a=2: only that job is left
    wait_until(lambda: set(done) <= set(listed_jobs(page)), what="the jobs listed")
    page.fill("#search-kwargs .kwarg-name", "a")
    page.fill("#search-kwargs .kwarg-value", "2")
    page.click("#search-button")
    page.wait_for_function(
        "id => [...document.querySelectorAll('#jobs tr[data-job-id]')].map((r) => r.dataset.jobId).join() === id",
        arg=done[1],
    )
    # and a filter the API refuses says why, in the API's words, instead of a list it does not describe
    page.fill("#search-q", "ab")
    page.click("#search-button")
    wait_for_text(page, "#search-error", "Search refused")
    assert "q" in page.inner_text("#search-error") and listed_jobs(page) == []
    page.click("#search-clear")
    wait_until(lambda: set(done + failed) <= set(listed_jobs(page)), what="the whole list again")
    assert page.inner_text("#search-error") == ""
    # and a creation time (the browser's local time, sent in UTC) no job is younger than: none listed
    page.fill("#search-after", "2099-01-01T00:00:00")
    page.click("#search-button")
    wait_for_text(page, "#jobs", "No job matches these filters.")
    assert listed_jobs(page) == [] and page.inner_text("#search-error") == ""
    page.click("#search-clear")
    wait_until(lambda: set(done + failed) <= set(listed_jobs(page)), what="the whole list again")

    # When the admin pauses the low queue from its button, two jobs wait in it
    low = "#queues-panel tr[data-queue='low']"
    page.click(f"{low} button:text-is('Pause')")
    page.wait_for_selector(f"{low} button:text-is('Resume')")
    # The button turns first; the row's state follows with the next read of GET /queues.
    wait_until(lambda: "paused" in page.inner_text(low), what="the low queue shown paused")
    for b in (1, 2):
        submit(client, "add", kwargs={"a": 0, "b": b}, priority="low")
    wait_for_text(page, f"{low} td:nth-child(2)", "2")

    # and a housekeeping pass rolls up the minute they ended in; the user picks the last day
    housekeeping_pass(app)
    page.click("#charts-panel button[data-window='day']")
    wait_for_text(page, "#chart-jobs figcaption", "last day")
    assert page.get_attribute("#charts-panel button[data-window='day']", "aria-pressed") == "true"

    # Then the charts show them: bars of completed and failed jobs, their counts, the queues' depths
    wait_for_text(page, "#chart-jobs .legend", "3 completed")
    assert "2 failed" in page.inner_text("#chart-jobs .legend")
    assert page.locator("#chart-jobs svg rect.bar-completed").count() >= 1
    assert page.locator("#chart-jobs svg rect.bar-failed").count() >= 1
    assert page.locator("#chart-jobs svg text.x-tick").count() == 3
    assert page.locator("#chart-queues svg g[data-queue='low']").count() == 1
    legend = page.inner_text("#chart-queues .legend")
    assert "low: 2 waiting" in legend and "default: 0 waiting" in legend, legend
    # and the run-time table a row per task: add's three runs with their p50 and p95
    add = page.inner_text("#charts-panel tr[data-task='add']").split("\t")
    assert add[:3] == ["add", "3", "0"], add
    assert all(re.fullmatch(r"\d+(\.\d)? (ms|s)", value) for value in add[3:5]), add
    assert page.inner_text("#charts-panel tr[data-task='fail']").split("\t")[:3] == ["fail", "0", "2"]

    # At 1280 and on a phone (390 px) nothing is wider than the screen
    fits(page, 1280, 800)
    page.screenshot(path=str(shots / "dashboard-1280.png"), full_page=True)
    fits(page, 390, 844)
    assert page.locator("#chart-jobs svg rect.bar-completed").count() >= 1
    assert page.locator(f"{worker} button.current-job").is_visible()
    page.screenshot(path=str(shots / "dashboard-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # When the admin resumes the queue, and goes back to the last hour, the page follows
    page.click(f"{low} button:text-is('Resume')")
    page.wait_for_selector(f"{low} button:text-is('Pause')")
    page.click("#charts-panel button[data-window='hour']")
    wait_for_text(page, "#chart-jobs figcaption", "last hour")

    # (the long job is cancelled: the worker then stops at once after the test, not after 10 s)
    assert client.post(f"/jobs/{running}/cancel", headers={"X-Requested-With": "test"}).status_code == 200
    # Every request went to the API's own origin (no CDN: the page works offline)
    assert page.urls and all(url.startswith(live_server + "/") for url in page.urls), page.urls
    assert [e for e in page.errors if not REFUSED.search(e)] == [], page.errors
    assert {(status, url.split("?")[0][len(live_server) :]) for status, url in page.refused} <= {
        (404, "/favicon.ico"),
        (422, "/jobs"),
    }, page.refused


@pytest.mark.timeout(60)
def test_tenant_text_in_the_charts_and_workers_shows_as_text(live_server, page, shots):
    # Given history and workers whose task, queue and worker names hold HTML (canned answers)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    at = [(now - timedelta(minutes=59 - i)).isoformat().replace("+00:00", "Z") for i in range(60)]
    history = {
        "window": "hour",
        "step_seconds": 60,
        "points": [{"at": t, "completed": (i % 7) * 3, "failed": int(i % 5 == 0)} for i, t in enumerate(at)],
        "queues": {
            "default": [{"at": t, "depth": (i * 13) % 40} for i, t in enumerate(at)],
            "high": [{"at": t, "depth": 0} for t in at],
            PAYLOAD: [{"at": at[-1], "depth": 4}],
        },
        "tasks": [
            {"task": PAYLOAD, "completed": 120, "failed": 3, "p50_ms": 850, "p95_ms": 4200},
            {"task": "summarise", "completed": 7, "failed": 0, "p50_ms": 95000, "p95_ms": None},
        ],
    }
    workers = {
        "workers": [
            {"name": PAYLOAD, "queues": ["high", PAYLOAD], "state": "busy", "current_job": PAYLOAD,
             "last_heartbeat": at[-1], "jobs_done": 42, "alive": True},
            {"name": "w-2", "queues": ["default"], "state": "idle", "current_job": None,
             "last_heartbeat": at[0], "jobs_done": 0, "alive": False},
        ]
    }  # fmt: skip
    answers = {"/monitoring/history": history, "/monitoring/queue/workers": workers}

    def answer(route):
        path = route.request.url[len(live_server) :].split("?")[0]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[path]))

    page.route(re.compile(r".*/monitoring/(history|queue/workers).*"), answer)
    page.goto(f"{live_server}/dashboard")

    # Then every name shows as the characters it is, nothing runs
    wait_for_text(page, "#charts-panel table.run-times", PAYLOAD)
    wait_for_text(page, "#workers-panel", PAYLOAD)
    assert f"{PAYLOAD}: 4 waiting" in page.inner_text("#chart-queues .legend")
    assert page.inner_text("#workers-panel tr[data-worker='w-2']").count("no heartbeat lease") == 1
    first = page.inner_text("#charts-panel table.run-times tbody tr").split("\t")
    assert first == [PAYLOAD, "120", "3", "850 ms", "4.2 s"], first
    assert page.inner_text("#charts-panel tr[data-task='summarise']").split("\t")[3:] == ["1.6 min", "–"]
    # a bar group per step where jobs ended; the y axis's top is a round number above the largest step
    steps = sum(1 for p in history["points"] if p["completed"] or p["failed"])
    assert page.locator("#chart-jobs svg g.step").count() == steps == 53
    assert page.inner_text("#chart-jobs .legend").startswith(
        f"{sum(p['completed'] for p in history['points'])} completed"
    )
    assert page.locator("#chart-jobs svg text.y-tick").all_text_contents() == ["0", "10", "20"]
    fits(page, 1280, 800)
    page.screenshot(path=str(shots / "dashboard-canned-1280.png"), full_page=True)
    fits(page, 390, 844)
    page.screenshot(path=str(shots / "dashboard-canned-390.png"), full_page=True)
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    assert [e for e in page.errors if not REFUSED.search(e)] == [], page.errors


# A tenant's token without a space: a pod's host name as a worker name, a URL or a base64 id.
LONG = "x" * 160
# How wide the job list's table is, and the box it scrolls in.
JOB_LIST = """() => { const t = document.querySelector('#jobs').closest('table');
  return {table: t.scrollWidth, box: t.parentElement.clientWidth}; }"""


@pytest.mark.timeout(60)
def test_long_unbroken_tenant_text_wraps_instead_of_scrolling_sideways(live_server, page, shots):
    # Given a job, a worker, a task and a queue whose names and message are long tokens without a space
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    job = {
        "job_id": "job_" + "a" * 32,
        "task": "t" + LONG,
        "status": "PROCESSING",
        "progress": 40,
        "progress_message": "m" + LONG,
        "attempt": 1,
        "created_at": now,
        "priority": "default",
    }
    answers = {
        "/jobs": {"jobs": [job], "next_cursor": None},
        "/monitoring/history": {"window": "hour", "step_seconds": 60,
                                "points": [{"at": now, "completed": 3, "failed": 1}],
                                "queues": {"default": [{"at": now, "depth": 2}], "q" + LONG: [{"at": now, "depth": 1}]},
                                "tasks": [{"task": "t" + LONG, "completed": 3, "failed": 1, "p50_ms": 5, "p95_ms": 9}]},
        "/monitoring/queue/workers": {"workers": [{"name": "w" + LONG, "queues": ["default", "q" + LONG],
                                                   "state": "busy", "current_job": job["job_id"],
                                                   "last_heartbeat": now, "jobs_done": 1, "alive": True}]},
    }  # fmt: skip

    def answer(route):
        path = route.request.url[len(live_server) :].split("?")[0]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[path]))

    page.route(re.compile(r".*/(jobs|monitoring/history|monitoring/queue/workers)(\?.*)?$"), answer)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server}/dashboard")
    page.wait_for_selector("#jobs tr[data-job-id]")
    page.wait_for_selector("#workers-panel tr[data-worker]")
    wait_for_text(page, "#chart-queues .legend", "1 waiting")

    # Then on a phone and at 1280 px the text wraps: neither the page nor the job list scrolls sideways
    for width, height in ((390, 844), (1280, 800)):
        widths = fits(page, width, height)
        jobs = page.evaluate(JOB_LIST)
        assert jobs["table"] <= jobs["box"], (width, jobs, widths)
        if width == 390:
            page.screenshot(path=str(shots / "dashboard-long-390.png"), full_page=True)
    # and every character is still there, nothing cut off
    for text in ("t" + LONG, "m" + LONG):
        assert text in page.inner_text("#jobs")
    assert "w" + LONG in page.inner_text("#workers-panel")
    assert [e for e in page.errors if not REFUSED.search(e)] == [], page.errors


@pytest.mark.timeout(60)
@pytest.mark.parametrize("page", ["Asia/Tokyo"], indirect=True)
def test_a_time_read_off_the_list_filters_it_on_the_same_clock(live_server, client, page):
    # Given a job, and a browser in Tokyo (UTC+9 all year)
    job_id = submit_add(client)["job_id"]
    stored = get_job(client, job_id)["created_at"]
    page.goto(f"{live_server}/dashboard")
    row = f"#jobs tr[data-job-id='{job_id}']"
    page.wait_for_selector(row)

    # Then its row shows when it was created on the browser's clock, to the second, the UTC value on hover,
    # and the list and the "Created after" filter both say which clock that is
    shown = page.inner_text(f"{row} td[data-label='Created']").strip()
    utc = datetime.fromisoformat(stored.replace("Z", "+00:00"))
    assert shown == (utc + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S"), (shown, stored)
    assert stored in page.get_attribute(f"{row} td[data-label='Created'] time", "title")
    assert "Asia/Tokyo" in page.inner_text("table.jobs-table thead")
    assert "Asia/Tokyo" in page.inner_text("label:has(#search-after)")

    # When the user asks for the jobs created a minute after the time the row shows: it is not listed
    created = datetime.strptime(shown, "%Y-%m-%d %H:%M:%S")
    page.fill("#search-after", (created + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#search-button")
    wait_for_text(page, "#jobs", "No job matches these filters.")
    # and a minute before: it is
    page.fill("#search-after", (created - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#search-button")
    page.wait_for_selector(row)
    assert [e for e in page.errors if not REFUSED.search(e)] == [], page.errors
