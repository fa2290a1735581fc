"""The /dashboard page in a real headless Chromium: start a job, watch its bar reach 100%; with
API keys, the page lists tasks only once a key is entered, and follows a job's events with it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from backend.app import create_app
from tests.browser import launch, playwright, requires_chromium

pytestmark = [
    requires_chromium,
    pytest.mark.one_pass(reason="a page in Chromium: the store behind the API plays no part in what it shows"),
]

SCREENSHOT = Path(__file__).resolve().parent.parent / "backend" / "data" / "dashboard.png"


@pytest.mark.timeout(120)
def test_a_job_started_from_the_page_fills_its_bar_to_100(live_server, start_worker, client):
    start_worker("--name", "browser", "--simple")
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{live_server}/dashboard")

            # Given the page, when the user starts a 2-second sleep job from it
            page.select_option("#start-task", "sleep")
            page.fill("#start-kwargs", '{"seconds": 2, "steps": 4}')
            page.click("#start-button")
            page.wait_for_selector("#start-result:has-text('started')")
            job_id = page.inner_text("#start-result").split()[-1]
            row = page.locator(f"tr[data-job-id='{job_id}']")

            # Then its row shows progress on the way, and ends COMPLETED at 100%
            page.wait_for_function(
                "id => { const r = document.querySelector(`tr[data-job-id='${id}'] [role=progressbar]`);"
                " return r && Number(r.getAttribute('aria-valuenow')) > 0; }",
                arg=job_id,
                timeout=20000,
            )
            page.wait_for_function(
                "id => { const r = document.querySelector(`tr[data-job-id='${id}'] [role=progressbar]`);"
                " return r && r.getAttribute('aria-valuenow') === '100'; }",
                arg=job_id,
                timeout=30000,
            )
            # (the bar follows the job's progress events, so it may reach 100% just before the end)
            page.wait_for_selector(f"tr[data-job-id='{job_id}'] td.COMPLETED", timeout=30000)
            assert "COMPLETED" in row.inner_text()
            row.click()
            page.wait_for_selector("#detail .attempts td.COMPLETED")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert client.get(f"/jobs/{job_id}").get_json()["result"] == {"slept": 2}


@pytest.mark.timeout(60)
def test_with_keys_the_page_lists_tasks_only_after_a_key_is_entered(settings):
    # The page itself names no task (GET /tasks answers 401 without a key); its script lists
    # them from GET /tasks once the user enters a key.
    settings["API_KEYS"] = "alice:alice-key-0123456789abcdef"
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page()
                base = f"http://127.0.0.1:{server.server_port}"
                page.goto(f"{base}/dashboard")
                page.wait_for_selector("#problem:has-text('API key')")
                assert page.locator("#start-task option").count() == 0

                # a job of alice's waits (no worker)
                job = requests.post(
                    f"{base}/tasks/sleep",
                    json={},
                    headers={"Authorization": "Bearer alice-key-0123456789abcdef"},
                    timeout=10,
                ).json()
                page.fill("#key", "alice-key-0123456789abcdef")
                page.dispatch_event("#key", "change")
                page.wait_for_selector("#start-task option:has-text('sleep')", state="attached")
                assert "word_count" in page.locator("#task").inner_text()

                # Its view follows it live: the event stream is read with the key (EventSource,
                # which cannot send it, would get 401 here)
                page.click(f"tr[data-job-id='{job['job_id']}'] td:first-child")
                page.wait_for_selector("#detail .job-stream:has-text('live')")
                assert "no live worker" in page.inner_text("#detail .waiting")
            finally:
                browser.close()
    finally:
        server.shutdown()
        thread.join(timeout=5)
