"""Checkpoints: a task saves state (``current_job().checkpoint(state)``) that its job's next attempt reads.

First the internal routes as a worker calls them, then real workers.
"""

from __future__ import annotations

import time

from backend.core.long_tasks import MAX_CHECKPOINT_BYTES
from tests.helpers import AUTH, get_job, submit_add


def _put(client, job_id, body, headers=AUTH):
    return client.put(f"/internal/jobs/{job_id}/checkpoint", json=body, headers=headers)


def _get(client, job_id, query=""):
    return client.get(f"/internal/jobs/{job_id}/checkpoint{query}", headers=AUTH)


def _report(client, *reports):
    response = client.post("/internal/reports", json={"sent_at": time.time(), "reports": list(reports)}, headers=AUTH)
    assert response.status_code == 200, response.get_json()


def test_a_saved_checkpoint_is_what_the_next_attempt_reads(client):
    # Given a running job that saves a checkpoint
    job_id = submit_add(client)["job_id"]
    assert _get(client, job_id).get_json() == {"state": None, "attempt": None, "checkpoint_at": None}
    saved = _put(client, job_id, {"attempt": 1, "state": {"step": 60, "done": ["a", "é"]}})
    assert saved.status_code == 200, saved.get_json()

    # Then the job shows when, and attempt 1 itself reads nothing of its own
    assert get_job(client, job_id)["checkpoint_at"] == saved.get_json()["checkpoint_at"]
    assert _get(client, job_id, "?attempt=1").get_json()["state"] is None

    # When the attempt fails and a retry starts
    _report(client, {"job_id": job_id, "attempt": 1, "event": "failed", "error": "boom"})
    assert get_job(client, job_id)["attempt"] == 2

    # Then attempt 2 reads attempt 1's state
    assert _get(client, job_id, "?attempt=2").get_json() == {
        "state": {"step": 60, "done": ["a", "é"]},
        "attempt": 1,
        "checkpoint_at": saved.get_json()["checkpoint_at"],
    }


def test_a_stale_attempt_or_an_ended_job_cannot_save_and_an_unknown_job_is_404(client):
    job_id = submit_add(client)["job_id"]
    assert _put(client, job_id, {"attempt": 1, "state": 1}).status_code == 200

    stale = _put(client, job_id, {"attempt": 2, "state": 2})
    assert (stale.status_code, stale.get_json()["error"]["code"]) == (409, "stale_attempt")

    _report(client, {"job_id": job_id, "attempt": 1, "event": "completed", "result": 3})
    ended = _put(client, job_id, {"attempt": 1, "state": 3})
    assert (ended.status_code, ended.get_json()["error"]["code"]) == (409, "invalid_transition")
    assert _get(client, job_id).get_json()["state"] == 1

    assert _put(client, "job_nosuch", {"attempt": 1, "state": 1}).status_code == 404
    assert _get(client, "job_nosuch").status_code == 404


def test_a_checkpoint_over_the_cap_is_413_and_nothing_is_saved(client):
    job_id = submit_add(client)["job_id"]
    # Compact UTF-8 JSON: the quotes count, so this string is 2 bytes over.
    response = _put(client, job_id, {"attempt": 1, "state": "x" * MAX_CHECKPOINT_BYTES})
    assert response.status_code == 413
    assert response.get_json()["error"]["details"]["limit"] == MAX_CHECKPOINT_BYTES
    assert _put(client, job_id, {"attempt": 1, "state": "x" * (MAX_CHECKPOINT_BYTES - 2)}).status_code == 200
    assert get_job(client, job_id)["checkpoint_at"] is not None


def test_a_malformed_checkpoint_is_a_json_400(client):
    job_id = submit_add(client)["job_id"]
    for body in [
        {"attempt": 1},
        {"state": 1},
        {"attempt": "1", "state": 1},
        {"attempt": True, "state": 1},
        {"attempt": 0, "state": 1},
        {"attempt": 1, "state": 1, "extra": 2},
    ]:
        response = _put(client, job_id, body)
        assert (response.status_code, response.is_json) == (400, True), body
    assert _get(client, job_id, "?attempt=x").status_code == 400
    assert get_job(client, job_id)["checkpoint_at"] is None


def test_the_checkpoint_routes_need_the_token(client):
    job_id = submit_add(client)["job_id"]
    assert _put(client, job_id, {"attempt": 1, "state": 1}, headers={}).status_code == 401
    assert client.get(f"/internal/jobs/{job_id}/checkpoint").status_code == 401
