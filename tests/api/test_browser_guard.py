"""What a web page can make a browser do to the API: DNS rebinding (a foreign Host name that
resolves to loopback) and cross-site writes (forms, text/plain fetches). Sent over real HTTP
with http.client, so that the Host, Origin and Referer headers are exactly what a browser
would send."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from rq import Queue

from backend.api.context import update_settings
from tests.conftest import TOKEN
from tests.helpers import submit, submit_add

pytestmark = pytest.mark.one_pass(
    store="postgres", reason="the guard answers before any store is read or written (either store alike)"
)

EVIL = "http://evil.example"


def call(base_url: str, method: str, path: str, *, headers: dict | None = None, body: bytes | str | None = None):
    """One raw HTTP request; returns (status, body bytes). A Host in ``headers`` replaces the real one."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def error_code(raw: bytes) -> str:
    return json.loads(raw)["error"]["code"]


def port_of(base_url: str) -> int:
    return urlsplit(base_url).port


# --- Host: DNS rebinding ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/jobs", "/tasks", "/monitoring/queue/stats", "/metrics", "/dashboard", "/rq/", "/openapi.json"]
)
def test_foreign_host_is_refused_without_keys(client, live_server, path):
    job = submit_add(client)
    for host in ("evil.example", f"evil.example:{port_of(live_server)}"):
        status, raw = call(live_server, "GET", path, headers={"Host": host})
        assert status == 403, (host, raw[:300])
        assert error_code(raw) == "host_not_allowed"
        assert job["job_id"].encode() not in raw


def test_foreign_host_changes_nothing_even_on_internal_routes(client, live_server):
    job = submit_add(client)
    report = {"job_id": job["job_id"], "attempt": 1, "event": "started", "worker": "w"}
    status, raw = call(
        live_server,
        "POST",
        "/internal/reports",
        headers={"Host": "evil.example", "Content-Type": "application/json", "X-Internal-Token": TOKEN},
        body=json.dumps({"sent_at": 0, "reports": [report]}),
    )
    assert status == 403 and error_code(raw) == "host_not_allowed"
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"


def test_loopback_host_names_are_served_without_keys(client, live_server):
    port = port_of(live_server)
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
        status, raw = call(live_server, "GET", "/jobs", headers={"Host": host})
        assert status == 200, (host, raw[:300])
    for host in ("127.0.0.1@evil.example", "evil.example/x", "", "localhost.evil.example"):
        status, raw = call(live_server, "GET", "/jobs", headers={"Host": host})
        assert status in (400, 403), (host, raw[:300])


def test_allowed_hosts_adds_names_without_keys(settings, app, live_server):
    app.extensions["allowed_hosts"] = ("api.internal", ".example.com")
    for host in ("api.internal:8000", "example.com", "jobs.example.com", "localhost"):
        assert call(live_server, "GET", "/jobs", headers={"Host": host})[0] == 200, host
    for host in ("evil.example", "api.internal.evil", "notexample.com"):
        status, raw = call(live_server, "GET", "/jobs", headers={"Host": host})
        assert status == 403 and error_code(raw) == "host_not_allowed", host


@pytest.fixture
def keyed(settings):
    settings["API_KEYS"] = "alice:alice-key-0123456789abcdef,ops:ops-key-0123456789abcdef:admin"
    return {"Authorization": "Bearer ops-key-0123456789abcdef"}


def test_with_keys_any_host_is_served_unless_allowed_hosts_is_set(keyed, app, live_server):
    headers = {**keyed, "Host": "jobs.example.net"}
    assert call(live_server, "GET", "/jobs", headers=headers)[0] == 200
    app.extensions["allowed_hosts"] = ("jobs.example.com",)
    status, raw = call(live_server, "GET", "/jobs", headers=headers)
    assert status == 403 and error_code(raw) == "host_not_allowed"
    assert call(live_server, "GET", "/jobs", headers={**keyed, "Host": "jobs.example.com"})[0] == 200
    # Loopback names stay served, e.g. the container healthcheck on 127.0.0.1.
    assert call(live_server, "GET", "/jobs", headers={**keyed, "Host": "127.0.0.1:5000"})[0] == 200


def test_the_host_workers_use_is_served_without_being_listed(keyed, app, live_server):
    # docker-compose: API_BASE_URL=http://api:5000, ALLOWED_HOSTS names only the public name.
    app.extensions["allowed_hosts"] = ("jobs.example.com",)
    update_settings(app, API_BASE_URL="http://api:5000")
    headers = {"Host": "api:5000", "Content-Type": "application/json", "X-Internal-Token": TOKEN}
    status, raw = call(live_server, "POST", "/internal/reports", headers=headers, body='{"sent_at": 0, "reports": []}')
    assert status == 200, raw[:300]
    assert call(live_server, "GET", "/jobs", headers={**keyed, "Host": "api.evil:5000"})[0] == 403


def test_allowed_hosts_is_read_from_settings(settings, keyed):
    from backend.app import create_app

    app = create_app({**settings, "ALLOWED_HOSTS": "Jobs.Example.com, .corp", "TRUSTED_ORIGINS": "https://ui.corp"})
    assert app.extensions["allowed_hosts"] == ("jobs.example.com", ".corp")
    assert app.extensions["trusted_origins"] == {("https", "ui.corp", 443)}
    with pytest.raises(ValueError, match="TRUSTED_ORIGINS"):
        create_app({**settings, "TRUSTED_ORIGINS": "ui.corp"})


# --- Cross-site writes ------------------------------------------------------------------


def test_cross_site_text_plain_cancel_and_retry_change_nothing(client, live_server):
    job = submit_add(client)
    path = f"/jobs/{job['job_id']}/cancel"
    # What <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) sends: no preflight.
    plain = {"Content-Type": "text/plain", "Origin": EVIL}
    status, raw = call(live_server, "POST", path, headers=plain, body="{}")
    assert status == 403 and error_code(raw) == "cross_site_request"
    # A browser that sends no Origin (old ones, or a stripped one): still not JSON, so refused.
    status, raw = call(live_server, "POST", path, headers={"Content-Type": "text/plain"}, body="{}")
    assert status == 415 and error_code(raw) == "unsupported_media_type"
    assert b"X-Requested-With" in raw
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"

    assert client.post(path, json={}).get_json()["status"] == "CANCELLED"
    retry = f"/jobs/{job['job_id']}/retry"
    assert call(live_server, "POST", retry, headers=plain, body="{}")[0] == 403
    assert call(live_server, "POST", retry, headers={"Content-Type": "text/plain"})[0] == 415
    after = client.get(f"/jobs/{job['job_id']}").get_json()
    assert (after["status"], after["attempt"]) == ("CANCELLED", 1)


def test_cross_site_form_posts_to_rq_dashboard_change_nothing(client, live_server, redis_conn, run_burst_worker):
    failed = submit(client, "fail", kwargs={"message": "boom"}, max_retries=0)
    run_burst_worker()
    assert client.get(f"/jobs/{failed['job_id']}").get_json()["status"] == "FAILED"
    queued = [submit_add(client)["job_id"] for _ in range(3)]
    queue = Queue("default", connection=redis_conn)
    assert queue.count == 3 and queue.failed_job_registry.count == 1

    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL}
    for path in ("/rq/queue/default/queued/empty", "/rq/requeue/default", f"/rq/job/{failed['rq_job_id']}/requeue"):
        status, raw = call(live_server, "POST", path, headers=form, body="x=1")
        assert status == 403 and error_code(raw) == "cross_site_request", (path, raw[:300])
        status, raw = call(live_server, "POST", path, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415, (path, raw[:300])

    assert queue.count == 3 and queue.failed_job_registry.count == 1
    assert client.get(f"/jobs/{failed['job_id']}").get_json()["status"] == "FAILED"
    assert all(client.get(f"/jobs/{job_id}").get_json()["status"] == "QUEUED" for job_id in queued)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Origin", EVIL),
        ("Origin", "null"),  # sandboxed iframes, file:// pages, some redirects
        ("Origin", "http://127.0.0.1:1"),  # another port on this machine is another site
        ("Origin", "https://127.0.0.1:{port}"),  # another scheme too
        ("Origin", "not a url"),
        ("Referer", EVIL + "/attack.html"),
        ("Referer", "http://localhost:{port}/dashboard"),  # localhost is not 127.0.0.1
    ],
)
def test_foreign_origin_or_referer_is_refused_even_with_json(client, live_server, header, value):
    value = value.format(port=port_of(live_server))
    headers = {"Content-Type": "application/json", header: value}
    status, raw = call(live_server, "POST", "/tasks/add", headers=headers, body=json.dumps({"args": [1, 2]}))
    assert status == 403 and error_code(raw) == "cross_site_request"
    assert value.encode()[:100] in raw
    assert client.get("/jobs").get_json()["jobs"] == []


def test_sec_fetch_site_decides_when_the_browser_sends_it(client, live_server):
    body = json.dumps({"args": [1, 2]})
    for site in ("cross-site", "same-site"):  # same-site: another port or subdomain
        headers = {"Content-Type": "application/json", "Sec-Fetch-Site": site}
        status, raw = call(live_server, "POST", "/tasks/add", headers=headers, body=body)
        assert status == 403 and error_code(raw) == "cross_site_request", site
    assert client.get("/jobs").get_json()["jobs"] == []
    # Behind a TLS-terminating proxy the page's Origin is https while this process sees http:
    # the browser's own verdict lets the admin's dashboard through.
    host = f"127.0.0.1:{port_of(live_server)}"
    headers = {"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin", "Origin": f"https://{host}"}
    status, raw = call(live_server, "POST", "/tasks/add", headers=headers, body=body)
    assert status == 202, raw[:300]


def test_foreign_origin_is_refused_with_keys_too(keyed, client, live_server):
    job = client.post("/tasks/add", json={"args": [1, 2]}, headers=keyed).get_json()
    headers = {**keyed, "X-Requested-With": "XMLHttpRequest", "Origin": EVIL}
    status, raw = call(live_server, "POST", f"/jobs/{job['job_id']}/cancel", headers=headers)
    assert status == 403 and error_code(raw) == "cross_site_request"
    status, raw = call(live_server, "DELETE", "/scheduled-jobs/sch_x", headers=headers)
    assert status == 403
    assert client.get(f"/jobs/{job['job_id']}", headers=keyed).get_json()["status"] == "QUEUED"


def test_same_origin_pages_and_non_browser_clients_pass(client, live_server):
    port = port_of(live_server)
    own = f"http://127.0.0.1:{port}"
    submit = json.dumps({"args": [1, 2]})
    for headers in (
        {"Content-Type": "application/json", "Origin": own},
        {"Content-Type": "application/json; charset=utf-8", "Referer": own + "/dashboard?x=1"},
        {"Content-Type": "application/json", "Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
        {"Content-Type": "application/json"},  # curl, SDKs
    ):
        status, raw = call(live_server, "POST", "/tasks/add", headers=headers, body=submit)
        assert status == 202, (headers, raw[:300])
    job_id = json.loads(raw)["job_id"]
    # A body-less POST passes with either header, from the page itself or from a script.
    status, raw = call(live_server, "POST", f"/jobs/{job_id}/cancel", headers={"X-Requested-With": "x", "Origin": own})
    assert status == 200 and json.loads(raw)["status"] == "CANCELLED"
    status, raw = call(live_server, "POST", f"/jobs/{job_id}/retry", headers={"Content-Type": "application/json"})
    assert status == 202


def test_trusted_origins_may_write(app, client, live_server):
    app.extensions["trusted_origins"] = frozenset({("https", "ui.example.com", 443)})
    headers = {"Content-Type": "application/json", "Origin": "https://ui.example.com"}
    assert call(live_server, "POST", "/tasks/add", headers=headers, body=json.dumps({"args": [1, 2]}))[0] == 202
    headers["Origin"] = "https://ui.example.com:8443"
    assert call(live_server, "POST", "/tasks/add", headers=headers, body=json.dumps({"args": [1, 2]}))[0] == 403


def test_bodyless_post_without_json_or_header_is_415_and_changes_nothing(client):
    job = submit_add(client)
    response = client.post(f"/jobs/{job['job_id']}/cancel")
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"] and "X-Requested-With" in error["message"]
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "QUEUED"


def test_unknown_routes_and_methods_still_answer_404_and_405(client):
    assert client.post("/no/such/route", data="x", content_type="text/plain").status_code == 404
    assert client.put("/tasks", data="x", content_type="text/plain").status_code == 405
    # Reads need neither header.
    assert client.get("/jobs").status_code == 200
    assert client.options("/jobs").status_code == 200
