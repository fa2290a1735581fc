"""The browser guard against a real headless Chromium: a page of another site that forges
writes (a text/plain form, a no-cors fetch, an urlencoded form to /rq), and a DNS-rebinding
name that resolves to the API's loopback address. What the browser really sends (Origin,
Sec-Fetch-Site, Host) is what the guard has to catch."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Queue

from tests.browser import launch, playwright, requires_chromium

pytestmark = [
    requires_chromium,
    pytest.mark.one_pass(reason="a page in Chromium: the store behind the API plays no part in what it shows"),
]

ATTACK = """<!doctype html><html><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="plain" method="POST" action="{api}/jobs/{cancel_id}/cancel" enctype="text/plain" target="sink1">
  <input name='{{"x":"' value='"}}'></form>
<form id="urlenc" method="POST" action="{api}/rq/queue/default/queued/empty" target="sink2">
  <input name="x" value="1"></form>
<script>
  let loaded = 0;
  for (const name of ["sink1", "sink2"]) {{
    document.querySelector(`iframe[name=${{name}}]`).addEventListener("load", () => {{ loaded += 1; }});
  }}
  document.getElementById("plain").submit();
  document.getElementById("urlenc").submit();
  const text = {{method: "POST", mode: "no-cors", body: "{{}}", headers: {{"Content-Type": "text/plain"}}}};
  const json = {{method: "POST", body: "{{}}", headers: {{"Content-Type": "application/json"}}}};
  window.attack = Promise.allSettled([
    fetch("{api}/jobs/{retry_id}/retry", text),
    fetch("{api}/tasks/add", {{...json, body: JSON.stringify({{args: [1, 2]}})}}),  // CORS preflight
  ]).then(() => new Promise(done => {{
    const wait = () => loaded >= 2 ? done(true) : setTimeout(wait, 50);
    wait();
  }}));
</script></body></html>"""


class AttackerSite:
    """Serves one page from another origin (another port on this machine)."""

    def __init__(self, html: str):
        page = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(120)
def test_another_sites_page_changes_nothing(client, live_server, redis_conn):
    to_cancel = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    to_retry = client.post("/tasks/add", json={"args": [3, 4]}).get_json()["job_id"]
    assert client.post(f"/jobs/{to_retry}/cancel", json={}).get_json()["status"] == "CANCELLED"
    queue = Queue("default", connection=redis_conn)
    assert queue.count == 1

    site = AttackerSite(ATTACK.format(api=live_server, cancel_id=to_cancel, retry_id=to_retry))
    try:
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page()
                page.goto(site.url)
                assert page.evaluate("window.attack") is True
            finally:
                browser.close()
    finally:
        site.close()

    assert client.get(f"/jobs/{to_cancel}").get_json()["status"] == "QUEUED"
    retried = client.get(f"/jobs/{to_retry}").get_json()
    assert (retried["status"], retried["attempt"]) == ("CANCELLED", 1)
    assert queue.count == 1
    assert [job["job_id"] for job in client.get("/jobs").get_json()["jobs"]] == [to_retry, to_cancel]


@pytest.mark.timeout(120)
def test_a_dns_rebinding_name_is_refused(client, live_server):
    job_id = client.post("/tasks/add", json={"args": [1, 2]}).get_json()["job_id"]
    port = live_server.rsplit(":", 1)[1]
    with playwright.sync_playwright() as p:
        # evil.example resolves to the API's loopback address, as a rebinding DNS server does.
        browser = launch(p, "--host-resolver-rules=MAP evil.example 127.0.0.1")
        try:
            page = browser.new_page()
            response = page.goto(f"http://evil.example:{port}/jobs")
            assert response.status == 403
            assert "host_not_allowed" in page.content() and job_id not in page.content()
            # Same-origin for the browser, so no CORS stands in the way: the Host check does.
            status = page.evaluate(
                "id => fetch(`/jobs/${id}/cancel`, {method: 'POST', headers: {'Content-Type': 'application/json'}})"
                ".then(r => r.status)",
                job_id,
            )
            assert status == 403
        finally:
            browser.close()
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "QUEUED"
