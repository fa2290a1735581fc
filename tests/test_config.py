from __future__ import annotations

import pytest

from backend.core.settings import load, parse_api_keys


def test_api_keys_parse_names_keys_and_admins():
    assert parse_api_keys("alice:k1, ops:k2:admin") == {"k1": ("alice", False), "k2": ("ops", True)}
    assert parse_api_keys(None) == {}


@pytest.mark.parametrize("spec", ["alice", "alice:k1:root", ":k1"])
def test_bad_api_keys_are_refused(spec):
    with pytest.raises(ValueError):
        parse_api_keys(spec)


def test_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("RQ_RESULT_TTL", "60")
    assert load().rq_result_ttl == 60
    assert load({"RQ_RESULT_TTL": 5}).rq_result_ttl == 5


def test_json_log_lines_carry_the_job_id_attempt_and_worker(client, capfd):
    import json
    import logging

    from backend.core.logs import JsonFormatter
    from tests.helpers import AUTH

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("backend.service.attempts")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
        client.post(
            f"/internal/jobs/{job['job_id']}/started",
            json={"attempt": 1, "worker": "w-7"},
            headers=AUTH,
        )
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    started = next(line for line in lines if "started" in line["message"])
    assert (started["job_id"], started["attempt"], started["worker"]) == (job["job_id"], 1, "w-7")
    assert started["level"] == "INFO" and started["logger"] == "backend.service.attempts"


def test_create_app_starts_no_thread_start_background_does(settings):
    from backend.app import create_app, start_background, stop_background

    # Given the settings of a server: the reconciler and the webhook dispatcher on
    settings.update({"RECONCILE_INTERVAL": 5, "WEBHOOK_INTERVAL": 1, "HOUSEKEEPING_INTERVAL": 10})
    # When the app is built, Then nothing runs in the background yet
    app = create_app(settings)
    assert "reconciler_thread" not in app.extensions and "webhooks_thread" not in app.extensions
    # When a server process starts its threads, Then both run, once however often it is asked
    start_background(app)
    threads = app.extensions["reconciler_thread"], app.extensions["webhooks_thread"]
    start_background(app)
    assert (app.extensions["reconciler_thread"], app.extensions["webhooks_thread"]) == threads
    assert all(thread.is_alive() for thread in threads)
    # When they are stopped, Then they end
    stop_background(app)
    assert not any(thread.is_alive() for thread in threads)


def test_an_app_served_without_gunicorn_conf_starts_its_threads_on_its_first_request(settings):
    from backend.app import create_app, stop_background

    # Given an app built as any WSGI server builds it, with the server's thread intervals
    settings.update({"RECONCILE_INTERVAL": 5, "WEBHOOK_INTERVAL": 1})
    app = create_app(settings)
    try:
        # When one of its commands runs (`flask --app ... recover`), Then no thread starts
        result = app.test_cli_runner().invoke(args=["recover"])
        assert result.exit_code == 0, result.output
        assert "reconciler_thread" not in app.extensions and "webhooks_thread" not in app.extensions
        # When it serves its first request, Then the reconciler and webhook threads run
        client = app.test_client()
        assert client.get("/monitoring/health").status_code in (200, 503)
        threads = app.extensions["reconciler_thread"], app.extensions["webhooks_thread"]
        assert all(thread.is_alive() for thread in threads)
        # When it serves more, Then they are the same threads (started once)
        client.get("/monitoring/health")
        assert (app.extensions["reconciler_thread"], app.extensions["webhooks_thread"]) == threads
    finally:
        stop_background(app)


def test_a_thread_that_cannot_start_fails_no_request_and_is_tried_again(settings, monkeypatch, caplog):
    from backend.app import create_app, stop_background
    from backend.core.background import PeriodicThread

    # Given an app served without gunicorn_conf, on a host that refuses the first new thread
    # (a container's process limit: "can't start new thread")
    settings.update({"RECONCILE_INTERVAL": 5, "WEBHOOK_INTERVAL": 1, "HOUSEKEEPING_INTERVAL": 10})
    app = create_app(settings)
    real_start, refusals, started = PeriodicThread.start, [], []

    def start(thread):
        if not refusals:
            refusals.append(thread.name)
            raise RuntimeError("can't start new thread")
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(PeriodicThread, "start", start)
    try:
        client = app.test_client()
        # When it serves its first request, Then the request is answered as usual and the
        # failure is logged
        assert client.get("/monitoring/health").status_code in (200, 503)
        assert refusals and "could not start the reconciler, housekeeping and webhook threads" in caplog.text
        # When it serves the next one, Then every thread runs, one of each
        assert client.get("/monitoring/health").status_code in (200, 503)
        names = ("reconciler_thread", "housekeeping_thread", "webhooks_thread")
        assert all(app.extensions[name].is_alive() for name in names)
        assert refusals == ["reconciler"] and started == ["reconciler", "housekeeping", "webhooks"]
    finally:
        stop_background(app)
