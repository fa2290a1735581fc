"""RQ Dashboard at /rq: state changes only by POST, bad paths answer 404 (never 500), and a
busy worker does not break the workers list. The /dashboard page names no task by itself.
The fuzzing of every /rq route is in test_rq_dashboard_fuzz.py."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests.helpers import XHR, wait_for_status

pytestmark = pytest.mark.one_pass(store="postgres", reason="RQ Dashboard reads Redis only")


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


def test_requeue_all_skips_a_failed_entry_whose_job_expired(client, failed_job, redis_conn):
    # Before: 404 (NoSuchJobError) at the expired entry, and the jobs after it stayed failed.
    registry = Queue("default", connection=redis_conn).failed_job_registry
    redis_conn.zadd(registry.key, {"expired-job": 1})  # sorts first
    response = client.post("/rq/requeue/default", headers=XHR)
    assert response.status_code == 200, response.data[:300]
    assert response.get_json() == {"status": "OK", "count": 1}
    assert registry.get_job_ids() == []
    assert Queue("default", connection=redis_conn).get_job_ids() == [failed_job["rq_job_id"]]


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
        "/rq/0/data/jobs/default/failed/8/asc/99999999999999999999.json",  # before: 500 (Redis: out of range)
        "/rq/0/data/jobs/default/queued/8/dsc/10000001.json",
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


def test_job_pages_hold_per_page_jobs_each_in_order(client, redis_conn):
    # Before: page n held up to n x per_page jobs (here page 2 listed 6: jobs 4 to 9, and 'dsc'
    # page 2 jobs 2 to 7), and a 'dsc' page past the last one listed nearly every job (9 of 10).
    ids = [client.post("/tasks/add", json={"args": [i, 1]}).get_json()["rq_job_id"] for i in range(10)]
    assert Queue("default", connection=redis_conn).get_job_ids() == ids

    def page(order: str, number: int) -> list[str]:
        response = client.get(f"/rq/0/data/jobs/default/queued/4/{order}/{number}.json")
        assert response.status_code == 200, response.data[:300]
        assert response.get_json()["pagination"]["num_pages"] == 3
        return [job["id"] for job in response.get_json()["jobs"]]

    assert [page("asc", n) for n in (1, 2, 3, 4)] == [ids[0:4], ids[4:8], ids[8:10], []]
    newest_first = ids[::-1]
    assert [page("dsc", n) for n in (1, 2, 3, 4)] == [newest_first[0:4], newest_first[4:8], newest_first[8:10], []]
    # The same in a registry (a sorted set, where RQ takes an end index).
    registry = Queue("default", connection=redis_conn).canceled_job_registry
    for i, rq_id in enumerate(ids):
        redis_conn.zadd(registry.key, {rq_id: 1000 + i})
    response = client.get("/rq/0/data/jobs/default/canceled/4/asc/2.json")
    assert [job["id"] for job in response.get_json()["jobs"]] == ids[4:8]


def test_job_with_dependencies_is_shown_with_their_state(client, redis_conn):
    # Before: 500 (rq-dashboard decoded RQ 3's dependency ids, already text, as bytes).
    parent = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
    child = client.post("/tasks/add", json={"args": [3, 4], "depends_on": [parent["job_id"]]}).get_json()
    child_rq_id = client.get(f"/jobs/{child['job_id']}").get_json()["rq_job_id"]
    response = client.get(f"/rq/0/data/job/{child_rq_id}.json")
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert body["status"] == "deferred"
    assert body["depends_on"] == [parent["rq_job_id"]] and body["depends_on_status"] == ["active"]
    redis_conn.delete(f"rq:job:{parent['rq_job_id']}")
    assert client.get(f"/rq/0/data/job/{child_rq_id}.json").get_json()["depends_on_status"] == ["expired"]


def test_a_job_another_rq_client_wrote_with_pickle_is_shown(client, redis_conn):
    # Before: 500 (UnicodeDecodeError: RQ read its pickled meta with our JSON serializer).
    foreign = Queue("low", connection=redis_conn).enqueue("tests.fixtures.add", 5, 6, meta={"who": "other"})
    response = client.get(f"/rq/0/data/job/{foreign.id}.json")
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert body["id"] == foreign.id and body["status"] == "queued"
    assert body["metadata"].startswith("(unreadable")
    listed = client.get("/rq/0/data/jobs/low/queued/8/asc/1.json").get_json()["jobs"]
    assert [job["id"] for job in listed] == [foreign.id]


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


# Job ids RQ cannot hold (it raised ValueError from validate_job_id: a 500), and queue names
# the service does not have, on every route that takes one.
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/rq/0/data/job/%00.json"),  # before: 500 (ValueError: Job ID must only contain ...)
        ("GET", "/rq/0/view/job/%00"),  # before: 500
        ("GET", "/rq/0/data/job/%C3%A9.json"),  # before: 500
        ("GET", "/rq/0/view/job/no-such-job:x"),
        ("POST", "/rq/job/%00/delete"),  # before: 500
        ("POST", "/rq/job/%00/requeue"),  # before: 500
        ("POST", "/rq/job/%C3%A9/requeue"),  # before: 500
        ("POST", "/rq/job/a%20b/delete"),  # before: 500
        ("POST", "/rq/queue/no-such-queue/compact"),  # before: 500 (ResponseError: no such key)
        ("POST", "/rq/queue/no-such-queue/failed/empty"),  # before: 200, as if it had emptied one
        ("POST", "/rq/queue/%00/queued/empty"),  # before: 200
        ("POST", "/rq/requeue/no-such-queue"),  # before: 200 {"count": 0}
        ("GET", "/rq/0/data/jobs/no-such-queue/failed/8/asc/1.json"),  # before: 200, an empty list
        ("GET", "/rq/0/view/jobs/no-such-queue/failed/8/asc/1"),  # before: 200, a page of it
    ],
)
def test_unholdable_job_ids_and_unknown_queues_answer_404_in_json(client, method, path, redis_conn):
    keys_before = sorted(redis_conn.keys("*"))
    response = client.open(path, method=method, headers=XHR)
    assert response.status_code == 404, response.data[:300]
    assert response.get_json()["error"]["code"] == "not_found"
    assert sorted(redis_conn.keys("*")) == keys_before


def test_compact_of_an_empty_queue_answers_200_and_changes_nothing(client, redis_conn):
    # The jobs page's Compact button on an empty queue. Before: 500 (RQ renames the queue's
    # list, which Redis refuses with "no such key" when the list is empty, so absent).
    keys_before = sorted(redis_conn.keys("*"))
    response = client.post("/rq/queue/default/compact", headers=XHR)
    assert response.status_code == 200, response.data[:300]
    assert response.get_json() == {"status": "OK"}
    assert sorted(redis_conn.keys("*")) == keys_before


def test_compact_keeps_the_queued_jobs_and_drops_dead_ids(client, redis_conn):
    queued = [client.post("/tasks/add", json={"args": [i, 1]}).get_json()["rq_job_id"] for i in range(3)]
    queue = Queue("default", connection=redis_conn, serializer=JSONSerializer)
    redis_conn.rpush(queue.key, "gone-1")  # an id whose job hash is gone
    response = client.post("/rq/queue/default/compact", headers=XHR)
    assert response.status_code == 200 and response.get_json() == {"status": "OK"}
    assert queue.get_job_ids() == queued


def test_redis_down_answers_503_in_json_on_every_rq_route(settings):
    # Before: 500 (redis.exceptions.ConnectionError escaped the dashboard's views).
    import socket

    from backend.app import create_app

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings["REDIS_URL"] = f"redis://:secret-password@127.0.0.1:{port}/0"
    client = create_app(settings).test_client()
    for method, path in (
        ("GET", "/rq/0/data/queues.json"),
        ("GET", "/rq/0/data/workers.json"),
        ("GET", "/rq/0/data/jobs/default/failed/8/asc/1.json"),
        ("GET", "/rq/0/data/job/some-job.json"),
        ("GET", "/rq/0/view/job/some-job"),
        ("POST", "/rq/requeue/default"),
        ("POST", "/rq/queue/default/compact"),
        ("POST", "/rq/job/some-job/delete"),
    ):
        response = client.open(path, method=method, headers=XHR)
        assert response.status_code == 503, (path, response.data[:300])
        assert response.get_json()["error"]["code"] == "service_unavailable", path
        assert "secret-password" not in response.get_data(as_text=True)


def test_a_key_redis_refuses_to_read_answers_409_in_json(client, redis_conn):
    # The net: any Redis error left (here WRONGTYPE, a queue's key that something else wrote as
    # a string) is a JSON 409 naming it. Before: 500.
    redis_conn.set("rq:queue:default", "not a list")
    response = client.get("/rq/0/data/jobs/default/queued/8/asc/1.json")
    assert response.status_code == 409, response.data[:300]
    error = response.get_json()["error"]
    assert error["code"] == "redis_refused" and "WRONGTYPE" in error["message"]
