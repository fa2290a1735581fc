"""Schemathesis against the running API: every check it has, 50 examples per operation, with an
admin key and the internal token, and not one failure (no 500, no answer or header that
differs from /openapi.json, no valid request refused, no invalid one accepted).

It runs the schemathesis CLI as a user would, against the live server with a real worker (so
that /monitoring/health is 200). About 40-60 s on two cores. The same run by hand:

    SCHEMATHESIS_HOOKS=tests.schemathesis_hooks st --config-file tests/schemathesis.toml \\
        run http://127.0.0.1:5000/openapi.json --checks all --max-examples 50 \\
        -H "Authorization: Bearer <admin key>" -H "X-Internal-Token: <token>"
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TOKEN

ADMIN_KEY = "admin-key-for-schemathesis-0123456789"
EXAMPLES = 50
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(settings):
    settings["API_KEYS"] = f"admin:{ADMIN_KEY}:admin,tenant:tenant-key-0123456789abcdef"
    return settings


#: A stream stays open until its job ends: the stateful phase (which submits jobs and follows the
#: links to their paths) could open one on a job that never ends and wait for ever. The stream's
#: route is fuzzed in a run of its own without that phase (every job id is unknown: 404 or 400).
EVENTS = "/jobs/{job_id}/events"


def schemathesis(live_server: str, tmp_path: Path, *extra: str) -> str:
    """Run ``st run`` with every check against the live server; fail with its output unless it passed."""
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{live_server}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--no-color",
        "--wait-for-schema",
        "10",
        "-H",
        f"Authorization: Bearer {ADMIN_KEY}",
        "-H",
        f"X-Internal-Token: {TOKEN}",
        *extra,
    ]
    # The hooks teach schemathesis the ``cron`` format (tests/schemathesis_hooks.py).
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
    return output


# In one pass (make test's 15 minutes: ~6,000 requests, 70 s on an idle machine and over 190 s
# beside the other tests), the PostgreSQL one: the stricter store, which refuses what SQLite
# takes (a NUL character in text, a value over its column's type), so a 500 there is likelier.
@pytest.mark.one_pass(store="postgres", reason="fuzzing the API once, on the stricter store")
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failure_at_50_examples(live_server, start_worker, tmp_path):
    start_worker("--name", "schemathesis-worker", "--simple")
    output = schemathesis(live_server, tmp_path, "--exclude-path", EVENTS)
    assert "30 selected" in output or "selected / " in output
    # schemathesis 4.32 sends Last-Event-ID headers that do not match their documented pattern
    # (such as "0") as valid ones: their 400 is right, so that one check is left out here.
    streams = schemathesis(
        live_server, tmp_path, "--include-path", EVENTS, "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "20", "--exclude-checks", "positive_data_acceptance",
    )  # fmt: skip
    assert "1 selected" in streams, streams[-3000:]


def test_the_document_names_every_route(app):
    documented = set(app.test_client().get("/openapi.json").get_json()["paths"])
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # a converter (<path:key>) is no part of the name
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/rq", "/static", "/openapi.json", "/dashboard"))
    }
    assert routes == documented


def test_options_lists_the_methods_of_the_path_only(client):
    # /jobs/cancel also matches /jobs/<job_id>: Flask's own answer offered GET as well.
    assert client.options("/jobs/cancel").headers["Allow"] == "OPTIONS, POST"
    # Two views of one path (GET and POST /scheduled-jobs) are both listed.
    assert client.options("/scheduled-jobs").headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert client.options("/scheduled-jobs/sch_x").headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH"


def test_every_cursor_of_the_documented_form_is_taken(client):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    jobs = [client.post("/tasks/echo", json={"args": [i]}, headers=admin).get_json()["job_id"] for i in range(3)]
    first = client.get("/jobs?limit=2", headers=admin).get_json()
    assert [job["job_id"] for job in first["jobs"]] == jobs[:0:-1]
    second = client.get("/jobs", query_string={"limit": 2, "cursor": first["next_cursor"]}, headers=admin)
    assert [job["job_id"] for job in second.get_json()["jobs"]] == jobs[:1]
    # Any cursor of the documented pattern reads a page; anything else is 422.
    assert client.get("/jobs?cursor=0.job_x", headers=admin).get_json() == {"jobs": [], "next_cursor": None}
    assert client.get("/jobs?cursor=99999999999999999.zzz", headers=admin).status_code == 200
    assert client.get("/jobs?cursor=not-a-cursor", headers=admin).status_code == 422


def test_the_document_asks_for_a_key_only_when_keys_are_configured(app, settings):
    from backend.app import create_app

    assert app.test_client().get("/openapi.json").get_json()["security"] == [{"apiKey": []}]
    open_app = create_app({**settings, "API_KEYS": None})
    assert open_app.test_client().get("/openapi.json").get_json()["security"] == []
