"""Rate limits set at run time per key (issue 15 item 2): ``PUT``/``DELETE /rate-limits/<key>``
and ``GET /rate-limits``, with the real store and Redis: the override is recorded in the store and
mirrored into the hash the limiter reads; a Redis that lost it gets it back from the reconciler's
pass; bad input is a clear JSON error; without Redis the store records it and the answer is 503;
admin only. With a real worker: an override releases held jobs at its pace, GET /rate-limits
shows them, the metric counts them; a rate key's value that cannot be a key is refused at
submission and nothing is stored."""

from __future__ import annotations

import pytest

from backend.api.context import services
from backend.app import create_app
from backend.broker.limit_overrides import OVERRIDES_KEY
from backend.dev.redis_server import free_port
from backend.tasks import task
from tests.conftest import TASK_MODULES
from tests.helpers import bearer, get_job, queued_count, stored_jobs, submit, wait_for_status

THIS_MODULE = __name__


@task("once_a_minute", rate_limit="1/minute")
def once_a_minute(n: int) -> int:
    """At most one start a minute (no rate_key: the task's name is the key)."""
    return n


@pytest.fixture
def limited_tasks(settings) -> None:
    """The API knows ``once_a_minute`` (workers import it by its path)."""
    settings["TASK_MODULES"] = f"{TASK_MODULES},{THIS_MODULE}"


ADMIN, TENANT = "admin-key-0123456789abcdef", "tenant-key-0123456789abcdef"


def put(client, key: str, body, headers: dict | None = None):
    return client.put(f"/rate-limits/{key}", json=body, headers=headers)


def delete(client, key: str, headers: dict | None = None):
    """A DELETE without a body says it comes from a script (the browser guard)."""
    return client.delete(f"/rate-limits/{key}", headers={"X-Requested-With": "test", **(headers or {})})


def mirrored(redis_conn) -> dict[str, str]:
    return {key.decode(): limit.decode() for key, limit in redis_conn.hgetall(OVERRIDES_KEY).items()}


def test_an_override_is_set_shown_replaced_and_cleared(client, redis_conn):
    answer = put(client, "openai", {"limit": "100/minute"})
    assert answer.status_code == 200, answer.get_json()
    first = answer.get_json()
    assert first["key"] == "openai" and first["limit"] == "100/minute" and first["previous"] is None
    assert first["changed"] and first["set_by"] == "local" and first["set_at"].endswith("Z")
    assert mirrored(redis_conn) == {"openai": "100/minute"}

    again = put(client, "openai", {"limit": "100/minute"}).get_json()
    assert again["previous"] == "100/minute" and not again["changed"]
    # A key may hold a slash (a provider's host and path) and any printable character.
    slashed = put(client, "api.example.com/v1 ü", {"limit": "10/5s"}).get_json()
    assert put(client, "per-minute", {"limit": "10/60s"}).get_json()["limit"] == "10/minute"  # canonical
    assert delete(client, "per-minute").get_json()["previous"] == "10/minute"
    assert slashed["key"] == "api.example.com/v1 ü" and slashed["limit"] == "10/5s"
    replaced = put(client, "openai", {"limit": "1/second"}).get_json()
    assert replaced["previous"] == "100/minute" and replaced["limit"] == "1/second" and replaced["changed"]

    listed = client.get("/rate-limits").get_json()
    assert [(o["key"], o["limit"], o["set_by"]) for o in listed["overrides"]] == [
        ("api.example.com/v1 ü", "10/5s", "local"),
        ("openai", "1/second", "local"),
    ]
    assert listed["held"] == []
    assert all(entry["rate_limit"] and "rate_key" in entry for entry in listed["tasks"])
    assert mirrored(redis_conn) == {"openai": "1/second", "api.example.com/v1 ü": "10/5s"}

    cleared = delete(client, "openai").get_json()
    assert cleared == {**cleared, "limit": None, "previous": "1/second", "changed": True}
    assert delete(client, "openai").get_json()["changed"] is False  # idempotent
    assert mirrored(redis_conn) == {"api.example.com/v1 ü": "10/5s"}
    assert [o["key"] for o in client.get("/rate-limits").get_json()["overrides"]] == ["api.example.com/v1 ü"]


@pytest.mark.parametrize(
    ("key", "body", "words"),
    [
        ("openai", {"limit": "100 per minute"}, "N/second, N/minute"),
        ("openai", {"limit": "0/minute"}, "count must be 1.."),
        ("openai", {"limit": " 100/MINUTE"}, "write it as '100/minute'"),
        ("openai", {"limit": "1/second\n"}, "write it as '1/second'"),
        ("openai", {"limit": "5/90000s"}, "window must be"),
        ("openai", {"limit": 100}, '"limit" is a string'),
        ("openai", {}, '"limit" is required'),
        ("openai", {"limit": "1/second", "burst": 3}, "unknown fields ['burst']"),
        ("k" * 201, {"limit": "1/second"}, "1 to 200 characters"),
        ("tab%09key", {"limit": "1/second"}, "no control characters"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(client, redis_conn, key, body, words):
    answer = put(client, key, body)
    assert answer.status_code == 422, answer.get_json()
    assert words in answer.get_json()["error"]["message"]
    assert client.get("/rate-limits").get_json()["overrides"] == [] and mirrored(redis_conn) == {}


def test_a_body_that_is_not_json_is_refused(client):
    answer = client.put("/rate-limits/openai", data="limit=1/second", content_type="text/plain")
    assert answer.status_code == 415 and answer.get_json()["error"]["code"] == "unsupported_media_type"


def test_a_redis_that_lost_the_overrides_gets_them_back_from_the_store(app, client, redis_conn):
    assert put(client, "openai", {"limit": "60/minute"}).status_code == 200
    redis_conn.delete(OVERRIDES_KEY)  # a Redis restarted empty
    redis_conn.hset(OVERRIDES_KEY, "stale", "1/second")  # and one the store does not record
    services(app).reconciler.run_once()
    assert mirrored(redis_conn) == {"openai": "60/minute"}
    assert services(app).rate_limits.sync() is False  # in step: nothing to write


def test_without_redis_an_override_is_recorded_and_answers_503(settings, redis_conn):
    client = create_app({**settings, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    answer = put(client, "openai", {"limit": "60/minute"})
    assert answer.status_code == 503 and answer.headers["Retry-After"], answer.get_json()
    assert "set to 60/minute in the store" in answer.get_json()["error"]["message"]
    assert client.get("/rate-limits").status_code == 503
    # Once Redis answers, the reconciler's pass (here: a process on the real Redis) mirrors it.
    assert services(create_app(settings)).rate_limits.sync() is True
    assert mirrored(redis_conn) == {"openai": "60/minute"}


class TestAdminOnly:
    @pytest.fixture
    def settings(self, settings):
        settings["API_KEYS"] = f"admin:{ADMIN}:admin,tenant:{TENANT}"
        return settings

    def test_only_admins_read_or_change_rate_limits(self, client, redis_conn):
        tenant, admin = bearer(TENANT), bearer(ADMIN)
        assert client.get("/rate-limits", headers=tenant).status_code == 403
        assert put(client, "openai", {"limit": "1/second"}, headers=tenant).status_code == 403
        assert delete(client, "openai", headers=tenant).status_code == 403
        assert client.get("/rate-limits").status_code == 401
        assert mirrored(redis_conn) == {}
        assert put(client, "openai", {"limit": "1/second"}, headers=admin).get_json()["set_by"] == "admin"


def test_an_override_releases_held_jobs_at_its_pace_and_is_shown_and_counted(limited_tasks, client, run_burst_worker):
    jobs = [submit(client, "once_a_minute", args=[n])["job_id"] for n in range(3)]
    run_burst_worker()  # the first starts; the other two are held (in no queue list): it ends
    assert wait_for_status(client, jobs[0], {"COMPLETED"})["result"] == 0
    assert [get_job(client, job_id)["waiting_reason"] for job_id in jobs[1:]] == ["rate_limit", "rate_limit"]
    overview = client.get("/rate-limits").get_json()
    assert {"task": "once_a_minute", "rate_limit": "1/minute", "rate_key": None} in overview["tasks"]
    assert [(h["key"], h["held"], h["limit"]) for h in overview["held"]] == [("once_a_minute", 2, "1/minute")]
    assert overview["held"][0]["next_slot_at"].endswith("Z")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'jobservice_rate_limited_total{key="once_a_minute"} 2.0' in metrics

    # Two a minute: one start is in the window, so one more slot is free now; the older held job takes it.
    assert put(client, "once_a_minute", {"limit": "2/minute"}).get_json()["changed"]
    run_burst_worker()
    assert wait_for_status(client, jobs[1], {"COMPLETED"})["result"] == 1
    job = get_job(client, jobs[2])
    assert job["waiting_reason"] == "rate_limit" and "once_a_minute: 2/minute; next slot at" in job["waiting_detail"]
    held = client.get("/rate-limits").get_json()["held"]
    assert [(h["key"], h["held"], h["limit"]) for h in held] == [("once_a_minute", 1, "2/minute")]

    assert put(client, "once_a_minute", {"limit": "100/minute"}).status_code == 200
    run_burst_worker()
    assert wait_for_status(client, jobs[2], {"COMPLETED"})["result"] == 2
    assert client.get("/rate-limits").get_json()["held"] == []


def test_a_rate_key_value_that_cannot_be_a_key_is_refused_and_nothing_is_stored(client, redis_conn):
    for bad in (["openai"], {"name": "openai"}, "", "k" * 201):
        answer = client.post("/tasks/call_limited_provider", json={"kwargs": {"prompt": "hi", "provider": bad}})
        assert answer.status_code == 422, answer.get_json()
        assert "is its rate key" in answer.get_json()["error"]["message"]
    good, bad = {"kwargs": {"prompt": "a", "provider": "openai"}}, {"kwargs": {"prompt": "b", "provider": ["x"]}}
    batch = client.post("/tasks/call_limited_provider/batch", json={"jobs": [good, bad]})
    assert batch.status_code == 422 and batch.get_json()["error"]["message"].startswith("jobs[1]: ")
    assert stored_jobs(client) == [] and queued_count(redis_conn) == 0
    # A number is a key as its text; an absent key argument leaves its default, a key like any other.
    assert submit(client, "call_limited_provider", kwargs={"prompt": "c", "provider": 7})["status"] == "QUEUED"


def test_a_put_whose_redis_write_lands_late_does_not_undo_a_later_put(app, redis_conn, monkeypatch):
    """PUT 1000/minute commits, then stalls before its Redis write; PUT 10/minute commits and
    writes meanwhile; the stalled write lands last. Redis must still hold what the store records."""
    import threading
    import time

    from backend.store import rate_limit_overrides as store_overrides

    original = store_overrides.set_limit
    committed = threading.Event()

    def slow_after_commit(sessions, key, limit, by):
        answer = original(sessions, key, limit, by)  # committed
        if limit == "1000/minute":
            committed.set()
            time.sleep(0.3)  # a GC pause, a busy pool: before its Redis write
        return answer

    monkeypatch.setattr(store_overrides, "set_limit", slow_after_commit)
    limits = services(app).rate_limits
    first = threading.Thread(target=lambda: limits.set("openai", "1000/minute", by="one"))
    first.start()
    # The second PUT goes once the first has committed (not after a fixed pause: on a loaded
    # machine the first PUT's commit took longer than 100 ms and landed after the second's).
    assert committed.wait(30)
    assert limits.set("openai", "10/minute", by="other").limit == "10/minute"
    first.join()
    assert limits.overrides()["openai"].limit == "10/minute"
    assert mirrored(redis_conn) == {"openai": "10/minute"}


def test_two_admins_setting_one_key_at_once_leave_redis_as_the_store_records(app, redis_conn):
    """Barrier-started PUT/PUT and PUT/DELETE pairs of one key: after each, Redis's hash (what
    workers obey) holds what the store records."""
    import threading

    limits = services(app).rate_limits
    differed = []
    commands = [
        lambda: limits.set("openai", "10/minute", by="a"),
        lambda: limits.set("openai", "1000/minute", by="b"),
        lambda: limits.clear("openai"),
    ]
    for round_ in range(40):
        barrier = threading.Barrier(2)
        pair = (commands[0], commands[1 + round_ % 2])
        threads = [threading.Thread(target=lambda c=c, b=barrier: (b.wait(), c())) for c in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        recorded = {key: row.limit for key, row in limits.overrides().items()}
        if mirrored(redis_conn) != recorded:
            differed.append((round_, recorded, mirrored(redis_conn)))
    assert not differed, f"Redis differed from the store after {len(differed)} of 40 races: {differed[:5]}"


@pytest.mark.parametrize("path", ["%2Fv1%2Fchat", "/v1/chat", "v1%2F%2Fchat", "a%09b"])
def test_a_key_no_route_can_carry_is_refused_before_any_redirect(client, redis_conn, path):
    """A key beginning with "/" (or holding "//") made a path Werkzeug answered with a 308 to the
    merged path: a client following it set ANOTHER key ("v1/chat") and got 200. Such keys (and
    control characters) are refused with a 422 JSON error; submission refuses them too."""
    for answer in (put(client, path, {"limit": "1/minute"}), delete(client, path)):
        assert answer.status_code == 422, (answer.status_code, answer.headers.get("Location"))
        assert answer.get_json()["error"]["code"] == "validation_failed", answer.get_json()
    assert client.get("/rate-limits").get_json()["overrides"] == [] and mirrored(redis_conn) == {}
    # A slash inside a key is fine.
    assert put(client, "v1/chat", {"limit": "1/minute"}).get_json()["key"] == "v1/chat"


def hold_by_hand(redis_conn, count: int) -> None:
    """A worker's steps, by hand: pop each queued job of ``default`` and let the limiter admit it."""
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    from backend.broker import key_limits

    for _ in range(count):
        rq_id = redis_conn.lpop("rq:queue:default").decode()
        key_limits.admit(redis_conn, RQJob.fetch(rq_id, connection=redis_conn, serializer=JSONSerializer))


def epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_held_job_never_resumes_before_now_after_an_override(limited_tasks, client, redis_conn):
    """PUT wakes the key (its due time 0) for the workers' next release; with no worker running, a
    held job said it resumes at 1970-01-01 and GET /rate-limits its next slot 56 years ago."""
    import time

    jobs = [submit(client, "once_a_minute", args=[n])["job_id"] for n in range(2)]
    hold_by_hand(redis_conn, 2)  # the first admitted (logged), the second held
    assert put(client, "once_a_minute", {"limit": "1/hour"}).status_code == 200
    job = get_job(client, jobs[1])
    assert job["waiting_reason"] == "rate_limit", job
    assert epoch(job["resumes_at"]) > time.time() - 5 and "1970" not in job["waiting_detail"], job
    listed = client.get("/rate-limits").get_json()["held"]
    assert epoch(listed[0]["next_slot_at"]) > time.time() - 5, listed
    assert delete(client, "once_a_minute").status_code == 200
    assert epoch(get_job(client, jobs[1])["resumes_at"]) > time.time() - 5


def test_each_held_job_of_a_key_says_when_its_own_turn_comes(app, client, redis_conn):
    """At 1/minute with 5 jobs, the 4th held one starts about 4 minutes after the first, not at
    the key's next slot (every held job said the same resumes_at); a list says the same as GET."""
    import time

    ids = [
        submit(client, "call_limited_provider", kwargs={"prompt": "p", "provider": "solo"})["job_id"] for _ in range(5)
    ]
    assert put(client, "solo", {"limit": "1/minute"}).status_code == 200
    hold_by_hand(redis_conn, 5)
    shown = [get_job(client, job_id) for job_id in ids[1:]]
    assert all(job["waiting_reason"] == "rate_limit" for job in shown), shown
    waits = [epoch(job["resumes_at"]) - time.time() for job in shown]
    assert 0 < waits[0] <= 61 and all(180 < wait <= 241 for wait in waits[3:]), waits
    assert waits == sorted(waits) and waits[1] - waits[0] > 50, waits
    assert "3 jobs of the key ahead" in shown[3]["waiting_detail"], shown[3]
    page = {job["job_id"]: job for job in client.get("/jobs?limit=10").get_json()["jobs"]}
    assert [page[job["job_id"]]["resumes_at"] for job in shown] == [job["resumes_at"] for job in shown]
