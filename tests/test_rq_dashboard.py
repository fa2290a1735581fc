"""RQ Dashboard at /rq: state changes only by POST, bad paths answer 404 (never 500), and a
busy worker does not break the workers list. The /dashboard page names no task by itself."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import wait_for_status

XHR = {"X-Requested-With": "XMLHttpRequest"}


@pytest.fixture
def failed_job(client, run_burst_worker, redis_conn):
    job = client.post("/tasks/fail", json={"max_retries": 0}).get_json()
    run_burst_worker()
    wait_for_status(client, job["job_id"], {"FAILED"})
    registry = Queue("default", connection=redis_conn).failed_job_registry
    assert registry.get_job_ids() == [job["rq_job_id"]]
    return job


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_requeue_all_is_refused_on_get_and_changes_nothing(client, failed_job, redis_conn, method):
    # Before: GET /rq/requeue/default answered 200 {"count": 1} and requeued every failed job,
    # so any page could do it with <img src=".../rq/requeue/default">.
    response = client.open("/rq/requeue/default", method=method)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"] and "GET" not in response.headers["Allow"]
    if method == "GET":
        assert response.get_json()["error"]["code"] == "method_not_allowed"
    queue = Queue("default", connection=redis_conn, serializer=JSONSerializer)
    assert queue.failed_job_registry.get_job_ids() == [failed_job["rq_job_id"]]
    assert queue.get_job_ids() == []


def test_requeue_all_works_on_post(client, failed_job, redis_conn):
    response = client.post("/rq/requeue/default", headers=XHR)
    assert response.status_code == 200 and response.get_json() == {"status": "OK", "count": 1}
    queue = Queue("default", connection=redis_conn, serializer=JSONSerializer)
    assert queue.failed_job_registry.get_job_ids() == []
    assert queue.get_job_ids() == [failed_job["rq_job_id"]]


def test_every_rq_action_answers_post_only(client, failed_job, redis_conn):
    rq_id = failed_job["rq_job_id"]
    for path in (
        f"/rq/job/{rq_id}/delete",
        f"/rq/job/{rq_id}/requeue",
        "/rq/requeue/default",
        "/rq/queue/default/failed/empty",
        "/rq/queue/default/compact",
    ):
        response = client.get(path)
        assert response.status_code == 405, path
        assert response.headers["Allow"].replace(" ", "").split(",") in (["POST", "OPTIONS"], ["OPTIONS", "POST"])
    assert Queue("default", connection=redis_conn).failed_job_registry.get_job_ids() == [rq_id]


@pytest.mark.parametrize(
    "path",
    [
        "/rq/9/view",  # before: 500 (LookupError: Index exceeds RQ list)
        "/rq/1/",
        "/rq/9/data/queues.json",
        "/rq/0/view/job/no-such-job",  # before: 500 (NoSuchJobError)
        "/rq/0/data/job/no-such-job.json",  # before: 500
        "/rq/0/view/jobs/default/bogus/8/asc/1",
        "/rq/0/data/jobs/default/bogus/8/asc/1.json",  # before: 500 (UnboundLocalError)
        "/rq/0/data/jobs/default/failed/0/asc/1.json",  # before: 500 (ZeroDivisionError)
        "/rq/0/data/jobs/default/failed/x/asc/1.json",  # before: 500 (ValueError)
        "/rq/0/data/jobs/default/failed/8/asc/-1.json",
        "/rq/0/data/jobs/default/failed/8/asc/\u0661.json",  # an Arabic-Indic one
        "/rq/0/data/jobs/default/failed/100000/asc/1.json",
        "/rq/0/data/jobs/default/failed/8/sideways/1.json",
        "/rq/0/view/jobs/default/failed/8/sideways/1",
    ],
)
def test_bad_rq_paths_answer_404_in_json(client, path):
    response = client.get(path)
    assert response.status_code == 404, response.data[:300]
    assert response.get_json()["error"]["code"] == "not_found"


def test_actions_on_unknown_or_unfit_jobs_answer_404_or_409(client, run_burst_worker):
    assert client.post("/rq/job/no-such-job/requeue", headers=XHR).status_code == 404
    done = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    run_burst_worker()
    wait_for_status(client, done["job_id"], {"COMPLETED"})
    # A finished job is in no failed registry: RQ refuses to requeue it (before: 500).
    response = client.post(f"/rq/job/{done['rq_job_id']}/requeue", headers=XHR)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "invalid_job_operation"


def test_workers_list_shows_a_busy_worker(client, start_worker):
    # Before: rq-dashboard read workers with the pickle serializer, so its workers.json answered
    # 500 while a worker ran one of our JSON jobs.
    start_worker("--name", "busy-one", "--simple")
    job = client.post("/tasks/sleep", json={"kwargs": {"seconds": 3, "steps": 1}}).get_json()
    wait_for_status(client, job["job_id"], {"PROCESSING"})
    response = client.get("/rq/0/data/workers.json")
    assert response.status_code == 200, response.data[:300]
    (worker,) = response.get_json()["workers"]
    assert worker["name"] == "busy-one"
    assert worker["current_job"]["job_id"] == job["rq_job_id"]
    assert "sleep" in worker["current_job"]["call_string"]


def test_dashboard_page_names_no_task_when_keys_are_configured(settings):
    # Before: /dashboard listed every task name while GET /tasks answered 401 without a key.
    from backend.app import create_app

    settings["API_KEYS"] = "alice:alice-key-0123456789abcdef,root:root-key-0123456789abcdef:admin"
    client = create_app(settings).test_client()
    assert client.get("/tasks").status_code == 401
    page = client.get("/dashboard")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for name in ("word_count", "reserved_names", "sleep", "echo", "crawl"):
        assert name not in html, name
    tasks = client.get("/tasks", headers={"Authorization": "Bearer alice-key-0123456789abcdef"}).get_json()
    assert "word_count" in {t["name"] for t in tasks["tasks"]}
