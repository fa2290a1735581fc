"""QUICK_REFERENCE.md runs as written against a live stack: its curl and `python -m backend`
lines cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests

from backend.dev.processes import wait_for_http
from backend.dev.redis_server import free_port
from tests.conftest import ROOT, TOKEN

pytestmark = pytest.mark.one_pass(
    reason="the guide's commands against a live stack; every route it calls is tested on both stores elsewhere"
)

GUIDE = ROOT / "QUICK_REFERENCE.md"


def blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)


def test_every_curl_and_backend_command_of_the_guide_is_in_a_runnable_block():

    outside = re.sub(r"```bash\n.*?```", "", GUIDE.read_text(), flags=re.S)
    for line in outside.splitlines():
        assert not line.strip().startswith(("curl ", ".venv/bin/python -m backend")), line


@pytest.fixture
def stack(settings, tmp_path):
    """The API, a worker and the scheduler as `make run` starts them, on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "INTERNAL_SERVICE_TOKEN": TOKEN,
        "API_BASE_URL": f"http://127.0.0.1:{port}",
        "WEBHOOK_ALLOW_LOOPBACK": "1",
        "RATE_LIMIT_SUBMIT": "100/minute",
        "LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "stack.log", "wb")  # noqa: SIM115 - closed below
    spawn = {"cwd": ROOT, "env": env, "stdout": log, "stderr": subprocess.STDOUT}
    processes = [subprocess.Popen([sys.executable, "backend/app.py"], **spawn)]
    wait_for_http(f"http://127.0.0.1:{port}/tasks", process=processes[0])
    deadline = time.monotonic() + 30
    processes.append(subprocess.Popen([sys.executable, "backend/worker.py", "--name", "worker-1"], **spawn))
    processes.append(subprocess.Popen([sys.executable, "backend/scheduler.py"], **spawn))
    while requests.get(f"http://127.0.0.1:{port}/monitoring/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline + 30, (tmp_path / "stack.log").read_text()
        time.sleep(0.2)
    yield port, env
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=20)
    log.close()


@pytest.mark.timeout(180)
def test_the_quick_reference_runs_against_a_live_stack(stack, redis_server):
    port, env = stack
    script = "set -euo pipefail\n" + "\n".join(blocks())
    script = script.replace("localhost:5000", f"localhost:{port}")
    script = script.replace("redis://127.0.0.1:6380/0", env["REDIS_URL"]).replace("-p 6380", f"-p {redis_server.port}")

    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)

    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert '"internal_error"' not in result.stdout
    assert '"too_many_requests"' not in result.stdout
    # every write sends JSON (or X-Requested-With), as the browser guard requires
    assert '"unsupported_media_type"' not in result.stdout
    # a few answers the guide promises
    assert '"status":"ok"' in result.stdout  # health with a live worker
    assert "webhook_url 'http://169.254.169.254/latest/meta-data' points to a link-local" in result.stdout
    assert "X-RateLimit-Limit: 100" in result.stdout
    assert "dry run:" in result.stdout
    # the service's history answers its hour of points; the prune's dry run says what would go
    assert "60 points," in result.stdout and "COMPLETED: 0 jobs would be pruned (older than 30d)" in result.stdout
    # the bulk retry by filter counts first, then acts
    assert '"dry_run":true' in result.stdout and '"retried":["job_' in result.stdout
    # streams end by themselves after end; a reconnect after end is 204
    assert "event: end" in result.stdout and "\n204\n" in result.stdout
    assert '"resumed_after":3' in result.stdout and '"outcome":"SNOOZED"' in result.stdout
    # the rate-limit line shows a snooze of its provider's Retry-After, then the answer
    assert '"error":"provider answered 429 (Retry-After: 2)"' in result.stdout
    assert '"answer":"(simulated) 3 words received"' in result.stdout
    assert '"truncated":false' in result.stdout
    # a job of a paused queue says why it waits; the command line pauses and resumes
    assert '"waiting_reason":"queue_paused"' in result.stdout and '"paused_by":"local"' in result.stdout
    assert "queue low paused (since " in result.stdout and "queue low resumed\n" in result.stdout
    # a job over its key's rate limit says so, and starts once the limit set for the key is cleared
    assert '"waiting_reason":"rate_limit"' in result.stdout and '"limit":"1/minute"' in result.stdout
    assert 'jobservice_rate_limited_total{key="quickref"} 1.0' in result.stdout
    assert '"provider":"quickref"' in result.stdout and "(simulated) 1 words received" in result.stdout
