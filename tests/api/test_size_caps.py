"""Size caps: a job's arguments, a task's result, an error text and a progress message cannot
make the service store (or answer with) more than its settings allow, on either side of the
worker -> API reports, and a list of jobs stays small however large its jobs are."""

from __future__ import annotations

import json
import time

import pytest
from rq import Queue

from backend.config import QUEUE_NAMES
from tests.api.test_internal import AUTH
from tests.conftest import wait_for_status

SIZE_TASKS = "backend.tasks.examples,tests.fixtures,tests.api.size_cap_tasks"


def queued_count(redis_conn) -> int:
    return sum(Queue(name, connection=redis_conn).count for name in QUEUE_NAMES)


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
    app.config["MAX_ARGS_BYTES"] = 100

    response = client.post("/tasks/echo", json={"args": ["x" * 120]})

    assert response.status_code == 413
    assert "over MAX_ARGS_BYTES of 100 bytes" in response.get_json()["error"]["message"]
