"""Stored XSS through the admin pages, in a real headless Chromium.

A tenant controls its jobs' arguments, results and error messages. Each page of /rq and
/dashboard that shows them must show them as text: no script of theirs runs in the admin's
browser. rq-dashboard 0.9.0's own pages put a job's result and exc_info into the page as HTML,
so ``<img src=x onerror=...>`` ran there.

Also: the /rq buttons that change Redis still work (they POST).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from backend.tasks import task
from tests.browser import launch, playwright, requires_chromium
from tests.conftest import TASK_MODULES
from tests.helpers import wait_for_status, wait_until

pytestmark = [
    requires_chromium,
    pytest.mark.one_pass(reason="a page in Chromium: the store behind the API plays no part in what it shows"),
]

# No quotes, so that the text reads the same in JSON, in a Python repr and in a traceback.
PAYLOADS = (
    "<img src=x onerror=window.__pwned=1;alert(1)>",
    "<script>window.__pwned=2;alert(2)</script>",
    "<svg/onload=window.__pwned=3;alert(3)>",
)
PAYLOAD = "".join(PAYLOADS)
THIS_MODULE = __name__


@task("hold_text")
def hold_text(text: str, release_file: str) -> str:
    """Keep a worker busy with ``text`` in its arguments until ``release_file`` exists (60 s at most)."""
    deadline = time.monotonic() + 60
    while not Path(release_file).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


@pytest.fixture
def payload_tasks(settings):
    """The API and the workers know ``hold_text`` (this module) besides the usual tasks."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"
    return {"TASK_MODULES": settings["TASK_MODULES"]}


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page that records every dialog and page error; dialogs are dismissed, or accepted."""

    def __init__(self, browser, *, accept_dialogs: bool = False):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.dialogs: list[str] = []
        self.errors: list[str] = []

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.accept() if accept_dialogs else dialog.dismiss()

        self.page.on("dialog", on_dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def open_and_check(self, url: str, *texts: str) -> None:
        """Open ``url``, wait until every one of ``texts`` is on the page as text, and check that
        no payload ran and none became an element."""
        self.page.goto(url)
        missing = None
        for text in texts:
            try:
                self.page.wait_for_function(
                    "text => document.body.innerText.includes(text)", arg=text, timeout=15000, polling=200
                )
            except playwright.TimeoutError:
                missing = text
                break
        # Give a payload that did land in the DOM time to fire (image errors, the next refresh).
        self.page.wait_for_timeout(1500)
        pwned = self.page.evaluate("() => window.__pwned")
        assert pwned is None, f"a payload's script ran on {url}: window.__pwned = {pwned}"
        assert self.dialogs == [], f"a payload opened a dialog on {url}: {self.dialogs}"
        injected = self.page.evaluate(
            "() => document.querySelectorAll('img[onerror], svg[onload]').length"
            " + [...document.scripts].filter((s) => s.text.includes('__pwned')).length"
        )
        assert injected == 0, f"{url}: the payload became {injected} element(s) instead of text"
        assert missing is None, f"{url} never showed {missing!r}; it shows:\n{self.page.inner_text('body')}"


@pytest.mark.timeout(180)
def test_job_results_and_errors_with_script_payloads_show_as_text_on_every_admin_page(
    payload_tasks, live_server, start_worker, client, tmp_path, browser
):
    release = tmp_path / "release"
    start_worker("--name", "xss-worker", "--simple", env=payload_tasks)
    try:
        # Given a job whose result carries the payloads, and one whose error carries them
        echoed = client.post("/tasks/echo", json={"args": [PAYLOAD]}).get_json()
        failed = client.post("/tasks/fail", json={"kwargs": {"message": PAYLOAD}, "max_retries": 0}).get_json()
        assert wait_for_status(client, echoed["job_id"], {"COMPLETED"})["result"] == {"args": [PAYLOAD], "kwargs": {}}
        assert PAYLOAD in wait_for_status(client, failed["job_id"], {"FAILED"})["error"]
        # and a worker busy with a job whose arguments carry them (shown on the workers page)
        held = client.post("/tasks/hold_text", json={"args": [PAYLOAD, str(release)]}).get_json()
        wait_for_status(client, held["job_id"], {"PROCESSING"})

        # When an admin opens each page that shows them, then each shows the payloads as text
        watched = Watched(browser)
        rq = f"{live_server}/rq/0/view"
        watched.open_and_check(f"{rq}/queues", "default")
        watched.open_and_check(f"{rq}/jobs/default/finished/8/asc/1", echoed["rq_job_id"])
        watched.open_and_check(f"{rq}/jobs/default/failed/8/asc/1", failed["rq_job_id"], *PAYLOADS)
        watched.open_and_check(f"{rq}/jobs/default/started/8/asc/1", held["rq_job_id"])
        watched.open_and_check(f"{rq}/job/{echoed['rq_job_id']}", *PAYLOADS)
        watched.open_and_check(f"{rq}/job/{failed['rq_job_id']}", *PAYLOADS)
        watched.open_and_check(f"{rq}/job/{held['rq_job_id']}", "started")
        # RQ cuts the call string short: the first payload is shown whole
        watched.open_and_check(f"{rq}/workers", "xss-worker", PAYLOADS[0])

        watched.open_and_check(f"{live_server}/dashboard", echoed["job_id"], failed["job_id"], held["job_id"])
        for job in (echoed, failed, held):
            watched.page.click(f"tr[data-job-id='{job['job_id']}'] td:first-child")
            watched.page.wait_for_function(
                "([id, text]) => { const d = document.getElementById('detail').innerText;"
                " return d.includes(id) && d.includes(text); }",
                arg=[job["job_id"], PAYLOADS[0]],
                timeout=15000,
            )
            watched.page.wait_for_timeout(1500)
            assert watched.page.evaluate("() => window.__pwned") is None
            assert watched.dialogs == []
        assert watched.errors == [], watched.errors
    finally:
        release.write_text("done")


@pytest.mark.timeout(120)
def test_the_rq_buttons_requeue_delete_and_requeue_all_with_a_post(
    live_server, run_burst_worker, client, redis_url, browser
):
    # Given three failed jobs in RQ's failed registry
    first, second, third = (client.post("/tasks/fail", json={"max_retries": 0}).get_json() for _ in range(3))
    run_burst_worker()
    for job in (first, second, third):
        wait_for_status(client, job["job_id"], {"FAILED"})
    connection = Redis.from_url(redis_url)
    failed = FailedJobRegistry("default", connection=connection)
    assert set(failed.get_job_ids()) == {first["rq_job_id"], second["rq_job_id"], third["rq_job_id"]}

    watched = Watched(browser, accept_dialogs=True)
    page = watched.page
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.method, request.url)))

    # When the admin requeues the first from its job page
    page.goto(f"{live_server}/rq/0/view/job/{first['rq_job_id']}")
    page.wait_for_selector("#requeue-job-btn:not([hidden])")
    page.click("#requeue-job-btn")
    # Then it leaves the failed registry and is queued again, by a POST
    # (RQ's requeue takes the id out of the registry, then pushes it in a second round trip: both are waited for)
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    wait_until(lambda: first["rq_job_id"] not in failed.get_job_ids() and first["rq_job_id"] in queue.get_job_ids())
    assert ("POST", f"{live_server}/rq/job/{first['rq_job_id']}/requeue") in requests

    # When the admin deletes the second from the failed list (confirming the dialog)
    page.goto(f"{live_server}/rq/0/view/jobs/default/failed/8/asc/1")
    button = page.locator(f"tr[data-job-id='{second['rq_job_id']}'] [data-role=delete-job-btn]")
    button.click()
    # Then it is gone, by a POST
    wait_until(lambda: second["rq_job_id"] not in failed.get_job_ids())
    assert ("POST", f"{live_server}/rq/job/{second['rq_job_id']}/delete") in requests

    # When the admin requeues all that are left (confirming), then the third is queued again
    page.click("#requeue-all-btn")
    wait_until(lambda: failed.get_job_ids() == [] and third["rq_job_id"] in queue.get_job_ids())
    assert ("POST", f"{live_server}/rq/requeue/default") in requests
    assert watched.dialogs == [f"Delete job {second['rq_job_id']}?", "Requeue all failed jobs of default?"]
    assert watched.errors == [], watched.errors
    assert all(method == "GET" for method, url in requests if "/rq/0/" in url)
