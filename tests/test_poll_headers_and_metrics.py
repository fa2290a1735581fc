"""What a poll's answer carries besides its body: the security headers and its latency sample.

Why: both moved out of Flask's after_request hooks into WSGI wrappers (issue 17, T3: a poll paid a
hook dispatch and four ``Headers.add`` for the headers, and three request-proxy reads for the
metric). Every answer must still carry the headers, errors included, and count once under its
route, method and status.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from backend.api.html_security import HEADERS
from tests.helpers import submit_add

SAMPLES = "jobservice_http_request_duration_seconds_count"


def _count(endpoint: str, method: str, status: str) -> float:
    labels = {"endpoint": endpoint, "method": method, "status": status}
    return REGISTRY.get_sample_value(SAMPLES, labels) or 0.0


def _assert_headers(response, what: str) -> None:
    for name, value in HEADERS.items():
        assert response.headers.getlist(name) == [value], (what, name, response.headers.getlist(name))


def test_every_answer_carries_the_headers_once_and_a_view_keeps_its_own(app, client):
    @app.get("/test-own-frame-options")
    def own_frame_options():
        return "", 200, {"X-Frame-Options": "SAMEORIGIN"}

    @app.get("/test-crash")
    def crash():
        raise RuntimeError("boom")

    job_id = submit_add(client)["job_id"]
    answers = {
        "a poll": client.get(f"/jobs/{job_id}"),
        "an unknown job": client.get("/jobs/job_nope"),
        "an unknown route": client.get("/no/such/route"),
        "a method the route refuses": client.open(f"/jobs/{job_id}", method="PUT"),
        "a view that raised": client.get("/test-crash"),
        "OPTIONS": client.options(f"/jobs/{job_id}"),
    }
    assert [answer.status_code for answer in answers.values()] == [200, 404, 404, 405, 500, 200]
    for what, answer in answers.items():
        _assert_headers(answer, what)
    own = client.get("/test-own-frame-options")
    assert own.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert own.headers.getlist("Content-Security-Policy") == [HEADERS["Content-Security-Policy"]]


def test_each_answer_is_one_latency_sample_under_its_route_method_and_status(client):
    job_id = submit_add(client)["job_id"]
    before = {
        "poll": _count("/jobs/<job_id>", "GET", "200"),
        "missing": _count("/jobs/<job_id>", "GET", "404"),
        "unmatched": _count("unmatched", "GET", "404"),
        "other": _count("unmatched", "other", "404") + _count("unmatched", "other", "405"),
    }
    for _ in range(3):
        assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get("/jobs/job_nope").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    assert client.open("/no/such/route", method="BREW").status_code in (404, 405)
    assert _count("/jobs/<job_id>", "GET", "200") - before["poll"] == 3
    assert _count("/jobs/<job_id>", "GET", "404") - before["missing"] == 1
    assert _count("unmatched", "GET", "404") - before["unmatched"] >= 1
    # A method no route knows is counted as "other", never under its own name.
    brewed = _count("unmatched", "other", "404") + _count("unmatched", "other", "405")
    assert brewed - before["other"] == 1
    assert REGISTRY.get_sample_value(SAMPLES, {"endpoint": "unmatched", "method": "BREW", "status": "404"}) is None


def test_once_the_threads_run_a_request_no_longer_runs_the_hook_that_starts_them(settings):
    from backend.app import create_app, start_background, stop_background

    # Given an app whose server process started its threads (gunicorn's post_worker_init)
    settings.update({"RECONCILE_INTERVAL": 5, "WEBHOOK_INTERVAL": 1, "HOUSEKEEPING_INTERVAL": 10})
    app = create_app(settings)
    hooks = list(app.before_request_funcs[None])
    try:
        start_background(app)
        # Then the first-request hook is out of the app's hooks, the others in their order
        names = [hook.__name__ for hook in app.before_request_funcs[None]]
        assert "start_background_once" in [hook.__name__ for hook in hooks]
        assert names == [hook.__name__ for hook in hooks if hook.__name__ != "start_background_once"]
        # And requests are served as before
        assert app.test_client().get("/monitoring/health").status_code in (200, 503)
    finally:
        stop_background(app)
