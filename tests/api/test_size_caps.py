"""Size caps: a job's arguments, a task's result, an error text and a progress message cannot
make the service store (or answer with) more than its settings allow, on either side of the
worker -> API reports, and a list of jobs stays small however large its jobs are."""

from __future__ import annotations

import time

import pytest

from backend.api.context import update_settings
from tests.helpers import AUTH, queued_count, wait_for_status

SIZE_TASKS = "backend.tasks.examples,tests.fixtures,tests.api.size_cap_tasks"


# -- submission -------------------------------------------------------------------------------


def test_arguments_over_the_cap_are_refused_413_naming_it_and_nothing_is_recorded(client, redis_conn):
    response = client.post("/tasks/echo", json={"args": ["x" * 40_000], "kwargs": {"more": "y" * 40_000}})

    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_large"
    assert "MAX_ARGS_BYTES of 64 KiB" in error["message"]
    assert "the arguments (args and kwargs) is 78.1 KiB" in error["message"]
    assert error["details"] == {"setting": "MAX_ARGS_BYTES", "limit": 64 * 1024}
    assert client.get("/jobs").get_json()["jobs"] == []
    assert queued_count(redis_conn) == 0


def test_arguments_within_the_cap_are_accepted(client):
    response = client.post("/tasks/echo", json={"args": ["x" * 60_000]})

    assert response.status_code == 202


def test_a_batch_with_one_job_over_the_cap_is_refused_whole(client, redis_conn):
    jobs = [{"args": ["small"]}, {"args": ["x" * 70_000]}]

    response = client.post("/tasks/echo/batch", json={"jobs": jobs})

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["message"].startswith("jobs[1]: the arguments")
    assert "MAX_ARGS_BYTES" in error["message"]
    assert client.get("/jobs").get_json()["jobs"] == []
    assert queued_count(redis_conn) == 0


def test_the_cap_is_a_setting(settings, client, app):
    update_settings(app, MAX_ARGS_BYTES=100)

    response = client.post("/tasks/echo", json={"args": ["x" * 120]})

    assert response.status_code == 413
    assert "over MAX_ARGS_BYTES of 100 bytes" in response.get_json()["error"]["message"]


# -- the API's side of worker reports ---------------------------------------------------------


def _started(client, **body) -> str:
    job = client.post("/tasks/echo", json=body).get_json()
    started = client.post(f"/internal/jobs/{job['job_id']}/started", json={"attempt": 1, "worker": "w"}, headers=AUTH)
    assert started.status_code == 200
    return job["job_id"]


def _batch(client, *reports):
    return client.post("/internal/reports", json={"sent_at": time.time(), "reports": list(reports)}, headers=AUTH)


def test_reports_over_the_caps_are_refused_422_each_and_store_nothing(client, app):
    update_settings(app, MAX_RESULT_BYTES=1000, MAX_ERROR_BYTES=500, MAX_PROGRESS_MESSAGE=20)
    job_id = _started(client)
    base = {"job_id": job_id, "attempt": 1}

    response = _batch(
        client,
        dict(base, event="progress", progress=10, message="m" * 21),
        dict(base, event="completed", result={"data": "x" * 1000}),
        dict(base, event="failed", error="e" * 501),
        dict(base, event="progress", progress=20, message="fits"),
    )

    assert response.status_code == 200
    answers = response.get_json()
    assert [a["status"] for a in answers["results"]] == [422, 422, 422, 200]
    assert "over MAX_PROGRESS_MESSAGE of 20 characters" in answers["results"][0]["error"]
    assert answers["results"][1]["error"] == (
        "ResultTooLarge: the result is 1,011 bytes, over MAX_RESULT_BYTES of 1,000 bytes"
    )
    assert answers["results"][2]["error"] == "the error is 501 bytes, over MAX_ERROR_BYTES of 500 bytes"
    # Workers learn the caps from every answer.
    assert answers["limits"] == {
        "MAX_ARGS_BYTES": 64 * 1024,
        "MAX_RESULT_BYTES": 1000,
        "MAX_ERROR_BYTES": 500,
        "MAX_PROGRESS_MESSAGE": 20,
    }
    job = client.get(f"/jobs/{job_id}").get_json()
    assert (job["status"], job["result"], job["error"], job["progress_message"]) == ("PROCESSING", None, None, "fits")


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("completed", {"result": "x" * 2000}),
        ("failed", {"error": "e" * 2000}),
        ("progress", {"progress": 5, "message": "m" * 2000}),
    ],
)
def test_the_one_report_routes_refuse_422_too(client, app, event, body):
    update_settings(app, MAX_RESULT_BYTES=1000, MAX_ERROR_BYTES=1000, MAX_PROGRESS_MESSAGE=1000)
    job_id = _started(client)

    response = client.post(f"/internal/jobs/{job_id}/{event}", json={"attempt": 1, **body}, headers=AUTH)

    assert response.status_code == 422
    assert "over MAX_" in response.get_json()["error"]["message"]
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "PROCESSING"


# -- real workers ---------------------------------------------------------------------------


@pytest.fixture
def size_settings(settings):
    settings["TASK_MODULES"] = SIZE_TASKS
    return settings


def _run_worker(start_worker, *, simple: bool):
    args = ["--burst", "--name", f"size-{time.monotonic_ns()}"] + (["--simple"] if simple else [])
    worker = start_worker(*args, env={"TASK_MODULES": SIZE_TASKS})
    assert worker.wait(timeout=60) == 0, worker.output()
    return worker


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_result_over_the_cap_fails_the_job_with_that_reason(size_settings, client, start_worker, simple):
    job = client.post("/tasks/big_result", json={"args": [300 * 1024], "max_retries": 0}).get_json()

    _run_worker(start_worker, simple=simple)

    after = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED"})
    assert after["status"] == "FAILED"
    assert after["error"] == "ResultTooLarge: the result is 300 KiB, over MAX_RESULT_BYTES of 256 KiB"
    assert after["result"] is None


def test_workers_check_results_by_the_apis_caps(size_settings, app, client, start_worker):
    # The worker's own settings say 256 KiB; the API says 1,000 bytes, and the worker follows it.
    update_settings(app, MAX_RESULT_BYTES=1000)
    too_big = client.post("/tasks/big_result", json={"args": [1001], "max_retries": 0}).get_json()
    fits = client.post("/tasks/big_result", json={"args": [1000], "max_retries": 0}).get_json()

    _run_worker(start_worker, simple=True)

    failed = wait_for_status(client, too_big["job_id"], {"COMPLETED", "FAILED"})
    assert (failed["status"], failed["error"]) == (
        "FAILED",
        "ResultTooLarge: the result is 1,001 bytes, over MAX_RESULT_BYTES of 1,000 bytes",
    )
    completed = wait_for_status(client, fits["job_id"], {"COMPLETED", "FAILED"})
    assert completed["status"] == "COMPLETED" and len(completed["result"]) == 998


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_long_error_keeps_its_tail_within_the_cap(size_settings, app, client, start_worker, simple):
    update_settings(app, MAX_ERROR_BYTES=2048)
    job = client.post("/tasks/long_failure", json={"args": [50_000], "max_retries": 0}).get_json()

    _run_worker(start_worker, simple=simple)

    after = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED"})
    assert after["status"] == "FAILED"
    assert len(after["error"].encode()) <= 2048
    assert after["error"].startswith("[error truncated: its first ")
    assert after["error"].rstrip().endswith("yyy THE END")
    attempts = client.get(f"/jobs/{job['job_id']}/attempts").get_json()["attempts"]
    assert attempts[0]["error"] == after["error"]


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "forking"])
def test_a_long_progress_message_is_shortened_by_the_worker(size_settings, app, client, start_worker, simple):
    update_settings(app, MAX_PROGRESS_MESSAGE=100)
    job = client.post("/tasks/long_progress", json={"args": [5000]}).get_json()

    _run_worker(start_worker, simple=simple)

    after = wait_for_status(client, job["job_id"], {"COMPLETED", "FAILED"})
    assert after["status"] == "COMPLETED"
    assert after["progress_message"] == "m" * 99 + "…"


def test_a_result_the_api_refuses_is_reported_as_the_attempts_failure(client, app, live_server):
    # A reporter that does not know the API's caps yet (they changed after it learned them)
    # sends a result over them: the API refuses it, and the attempt is reported failed
    # with the API's reason instead of the report being dropped.
    from backend.core.size_caps import SizeCaps
    from backend.runner.reporter import Reporter
    from tests.conftest import TOKEN

    job_id = _started(client, max_retries=0)
    other_id = _started(client, max_retries=0)
    update_settings(app, MAX_RESULT_BYTES=1000, MAX_ERROR_BYTES=300)
    reporter = Reporter(live_server, TOKEN, caps=SizeCaps())
    try:
        reporter.completed(job_id, 1, "x" * 2000)
        reporter.failed(other_id, 1, "e" * 5000 + " THE END")
        assert reporter.flush(timeout=30)
    finally:
        reporter.close()

    failed = client.get(f"/jobs/{job_id}").get_json()
    assert (failed["status"], failed["error"]) == (
        "FAILED",
        "ResultTooLarge: the result is 2.0 KiB (2,002 bytes), over MAX_RESULT_BYTES of 1,000 bytes",
    )
    other = client.get(f"/jobs/{other_id}").get_json()
    assert other["status"] == "FAILED" and len(other["error"].encode()) <= 300
    assert other["error"].endswith("e THE END")
    assert reporter.caps.result_bytes == 1000


# -- lists of jobs ----------------------------------------------------------------------------


def _big_jobs(client, count: int, size: int = 60_000) -> list[str]:
    ids = []
    for index in range(count):
        response = client.post("/tasks/echo", json={"args": [f"{index:02d}" * (size // 2)]})
        assert response.status_code == 202
        ids.append(response.get_json()["job_id"])
    return ids[::-1]  # newest first, as lists are


def test_a_list_leaves_arguments_and_results_out_unless_asked(client):
    ids = _big_jobs(client, 20)

    response = client.get("/jobs?limit=20")

    assert response.status_code == 200
    assert len(response.get_data()) < 20_000, len(response.get_data())
    page = response.get_json()
    assert [job["job_id"] for job in page["jobs"]] == ids
    assert not {"args", "kwargs", "result"} & set(page["jobs"][0])
    assert page["jobs"][0]["status"] == "QUEUED" and page["next_cursor"] is None
    # One job read alone is complete.
    assert len(client.get(f"/jobs/{ids[0]}").get_json()["args"][0]) == 60_000


def test_fields_asks_for_them_and_a_page_stops_at_its_byte_budget(client, app):
    update_settings(app, JOBS_PAGE_MAX_BYTES=200_000)
    ids = _big_jobs(client, 20)

    seen, cursor, pages = [], None, 0
    while True:
        query = "/jobs?limit=20&fields=args,kwargs,result" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(query)
        assert response.status_code == 200
        assert len(response.get_data()) <= 200_000 + 1000
        page = response.get_json()
        assert all(len(job["args"][0]) == 60_000 and job["kwargs"] == {} for job in page["jobs"])
        assert all(job["result"] is None for job in page["jobs"])
        seen += [job["job_id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Three 60 KB jobs fit in 200 KB: every job is listed once, in order, over seven pages.
    assert seen == ids
    assert pages == 7


def test_a_page_always_holds_one_job_however_large(client, app):
    update_settings(app, JOBS_PAGE_MAX_BYTES=1000)
    ids = _big_jobs(client, 2)

    first = client.get("/jobs?fields=args").get_json()
    second = client.get(f"/jobs?fields=args&cursor={first['next_cursor']}").get_json()

    assert [job["job_id"] for job in first["jobs"] + second["jobs"]] == ids
    assert second["next_cursor"] is None


@pytest.mark.parametrize("fields", ["secret", "args,password", "args,,status", "RESULT", "", " args"])
def test_fields_names_only_job_fields(client, fields):
    client.post("/tasks/echo", json={"args": [1]})

    response = client.get(f"/jobs?fields={fields}")

    # Exactly as /openapi.json gives it: names joined by commas, none empty ("args,,status" too).
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed" and "fields" in error["message"]
    assert "result" in error["details"]["allowed"]
