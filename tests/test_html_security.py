"""Every page carries the security headers, and needs nothing that its policy forbids: no
inline script, no inline event handler, no inline style; every file it loads is served."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.helpers import wait_for_status


class PageParts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inline_scripts: list[str] = []
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self.resources: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.handlers += [f"{tag} {name}" for name in attributes if name.startswith("on")]
        if "style" in attributes:
            self.styles.append(tag)
        if tag == "style":
            self.styles.append("<style>")
        if tag == "script":
            if attributes.get("src"):
                self.resources.append(attributes["src"])
            else:
                self._in_script = True
                self.inline_scripts.append("")
        if tag == "link" and attributes.get("href"):
            self.resources.append(attributes["href"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.inline_scripts[-1] += data


def assert_security_headers(response, path: str) -> None:
    headers = response.headers
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("X-Frame-Options") == "DENY", path
    assert headers.get("Referrer-Policy") == "same-origin", path
    csp = {d.split()[0]: d.split()[1:] for d in headers.get("Content-Security-Policy", "").split(";") if d.strip()}
    assert csp.get("script-src") == ["'self'"], (path, csp)
    assert csp.get("object-src") == ["'none'"], path
    assert csp.get("base-uri") == ["'none'"], path
    assert csp.get("frame-ancestors") == ["'none'"], path
    assert not any("unsafe" in source for sources in csp.values() for source in sources), (path, csp)


@pytest.fixture
def job_ids(client, run_burst_worker):
    job = client.post("/tasks/fail", json={"max_retries": 0}).get_json()
    run_burst_worker()
    wait_for_status(client, job["job_id"], {"FAILED"})
    return job


def test_every_html_page_sends_the_headers_and_needs_no_inline_script_or_style(client, job_ids):
    pages = [
        "/dashboard",
        "/rq/",
        "/rq/0/view/queues",
        "/rq/0/view/workers",
        "/rq/0/view/jobs",
        "/rq/0/view/jobs/default/failed/8/asc/1",
        f"/rq/0/view/job/{job_ids['rq_job_id']}",
    ]
    loaded = set()
    for path in pages:
        # /rq/0/view/queues redirects to /rq/, the same page
        response = client.get(path, follow_redirects=True)
        assert response.status_code == 200 and response.mimetype == "text/html", path
        assert_security_headers(response, path)
        parts = PageParts()
        parts.feed(response.get_data(as_text=True))
        # Before: rq-dashboard's pages and /dashboard carried inline <script> and style="".
        assert parts.inline_scripts == [], (path, [s[:80] for s in parts.inline_scripts])
        assert parts.handlers == [], (path, parts.handlers)
        assert parts.styles == [], (path, parts.styles)
        loaded.update(parts.resources)
    for resource in sorted(loaded):
        response = client.get(resource)
        assert response.status_code == 200, resource
        assert response.mimetype in ("text/css", "text/javascript", "application/javascript"), resource
        assert_security_headers(response, resource)


@pytest.mark.parametrize(
    "path", ["/jobs", "/no/such/route", "/rq/9/view", "/openapi.json", "/rq/0/data/queues.json", "/metrics"]
)
def test_other_answers_send_the_headers_too(client, path):
    # JSON, errors and text: a browser tricked into rendering one gets the same policy, and
    # nosniff keeps it from reading JSON as HTML or script.
    assert_security_headers(client.get(path), path)
