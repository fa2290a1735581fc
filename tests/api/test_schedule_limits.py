"""Schedules take exactly the limits of job submissions, refuse crons that are never due and
zones that do not exist (422 naming the fault, nothing stored), and a PATCH racing a DELETE of
one schedule is answered 404, never 500."""

from __future__ import annotations

import threading

import pytest
import requests

# State-changing requests without a JSON body name themselves as scripted (the browser guard).
AJAX = {"X-Requested-With": "test"}
BODY = {"name": "nightly", "task": "add", "cron": "*/5 * * * *", "args": [1, 2]}


def _no_schedules(client) -> bool:
    return client.get("/scheduled-jobs").get_json()["scheduled_jobs"] == []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"cron": "0 0 31 2 *"}, "never due"),
        ({"cron": "0 0 31 4,6,9,11 *"}, "never due"),
        ({"cron": "0 0 * * * " + "1" * 200}, "at most 100 characters"),
        ({"timezone": "America"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": "A" * 10_000}, "timezone may have at most 64 characters"),
        ({"timeout": 10**30}, "timeout must be an integer from 1 to"),
        ({"timeout": 0}, "timeout must be an integer from 1 to"),
        ({"max_retries": 10**9}, "max_retries must be an integer from 0 to"),
        ({"priority": 0}, "priority"),
        ({"priority": ""}, "priority"),
        ({"priority": False}, "priority"),
        ({"enabled": "yes"}, "enabled"),
        ({"name": "x" * 201}, "name"),
    ],
)
def test_a_schedule_gets_the_limits_of_a_submission(client, overrides, fragment):
    response = client.post("/scheduled-jobs", json={**BODY, **overrides})
    assert response.status_code == 422, response.get_json()
    assert fragment in response.get_json()["error"]["message"]
    assert _no_schedules(client)


@pytest.mark.parametrize(
    "overrides",
    [
        {"timeout": 10**30},
        {"max_retries": 10**9},
        {"priority": 0},
    ],
)
def test_the_same_values_are_refused_by_a_job_submission(client, overrides):
    # The same limits on both doors: what a schedule may not hold, a job may not either.
    response = client.post("/tasks/add", json={"args": [1, 2], **overrides})
    assert response.status_code == 422
    assert client.get("/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"cron": "0 0 30 2 *"}, "never due"),
        ({"timezone": "Europe"}, "timezone"),
        ({"timeout": 10**30}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_a_patch_gets_the_same_limits_and_changes_nothing(client, patch, fragment):
    created = client.post("/scheduled-jobs", json=BODY).get_json()
    response = client.patch(f"/scheduled-jobs/{created['id']}", json=patch)
    assert response.status_code == 422
    assert fragment in response.get_json()["error"]["message"]
    assert client.get(f"/scheduled-jobs/{created['id']}").get_json() == created


def test_rare_but_real_schedules_are_accepted(client):
    leap_day = client.post("/scheduled-jobs", json={**BODY, "name": "leap", "cron": "0 0 29 2 *"})
    assert leap_day.status_code == 201
    assert "-02-29T00:00:00" in leap_day.get_json()["next_run_at"]
    zone = client.post("/scheduled-jobs", json={**BODY, "name": "zone", "timezone": "America/Argentina/Buenos_Aires"})
    assert zone.status_code == 201


def test_a_patch_racing_a_delete_is_404_never_500(live_server):
    """40 rounds of a PATCH and a DELETE of one schedule sent at once over real HTTP."""
    session = requests.Session()
    statuses: list[tuple[int, int]] = []
    for round_ in range(40):
        created = session.post(f"{live_server}/scheduled-jobs", json={**BODY, "name": f"race-{round_}"})
        assert created.status_code == 201
        url = f"{live_server}/scheduled-jobs/{created.json()['id']}"
        answers: dict[str, requests.Response] = {}
        start = threading.Barrier(2)

        def send(method: str, url: str = url, answers: dict = answers, start: threading.Barrier = start) -> None:
            start.wait()
            body = {"cron": "0 * * * *", "max_retries": 1} if method == "PATCH" else None
            answers[method] = requests.request(method, url, json=body, headers=AJAX, timeout=30)

        threads = [threading.Thread(target=send, args=(method,)) for method in ("PATCH", "DELETE")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses.append((answers["PATCH"].status_code, answers["DELETE"].status_code))
        assert answers["PATCH"].status_code in (200, 404, 409), answers["PATCH"].text
        assert answers["DELETE"].status_code in (204, 404, 409), answers["DELETE"].text
        assert session.get(url).status_code == 404
    assert all(delete == 204 for _, delete in statuses)


def test_a_name_the_owner_already_uses_is_409(client):
    first = client.post("/scheduled-jobs", json=BODY).get_json()
    again = client.post("/scheduled-jobs", json={**BODY, "cron": "0 * * * *"})
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "conflict"
    other = client.post("/scheduled-jobs", json={**BODY, "name": "other"}).get_json()
    renamed = client.patch(f"/scheduled-jobs/{other['id']}", json={"name": BODY["name"]})
    assert renamed.status_code == 409
    assert [s["id"] for s in client.get("/scheduled-jobs").get_json()["scheduled_jobs"]] == [first["id"], other["id"]]
    assert client.get(f"/scheduled-jobs/{other['id']}").get_json()["name"] == "other"
