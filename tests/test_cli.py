"""``python -m backend`` maintenance commands, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys

from rq import Queue
from rq.job import Job as RQJob

from backend.dev.redis_server import free_port
from tests.conftest import ROOT, TASK_MODULES
from tests.helpers import AUTH, wait_for_status


def run_cli(settings: dict, *args: str, stdin: str = "", redis_url: str | None = None):
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_url or settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
    }
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(client, redis_conn) -> tuple:
    jobs = client.get("/jobs?limit=500").get_json()["jobs"]
    keys = sorted(redis_conn.keys("rq:*"))
    return [(j["job_id"], j["status"], j["attempt"]) for j in jobs], keys


def make_zombie(client, redis_conn) -> dict:
    """A job a worker started, whose worker then vanished without a trace (no lease)."""
    job = client.post("/tasks/add", json={"args": [1, 1], "max_retries": 0}).get_json()
    client.post(f"/internal/jobs/{job['job_id']}/started", json={"attempt": 1, "worker": "ghost"}, headers=AUTH)
    rq_id = job["rq_job_id"]
    redis_conn.lrem("rq:queue:default", 0, rq_id)
    redis_conn.hset(RQJob.key_for(rq_id), mapping={"status": "started", "worker_name": "ghost"})
    redis_conn.zadd("rq:wip:default", {f"{rq_id}:exec1": 9999999999})
    return job


def test_cleanup_ends_zombies_leaves_live_jobs_and_dry_run_changes_nothing(
    client, settings, redis_conn, start_worker, tmp_path
):
    # Given a live job on a real worker, two zombies, and a corrupt hash on a queue. The live job
    # runs until the test opens its gate: it outlasts both cleanup commands however slow the
    # machine (each a process that loads the app; a fixed 10 s job once ended before them).
    gate = tmp_path / "gate"
    live = client.post("/tasks/wait_for_file", json={"kwargs": {"path": str(gate)}}).get_json()
    start_worker("--name", "alive", "--simple")
    wait_for_status(client, live["job_id"], {"PROCESSING"})
    zombies = [make_zombie(client, redis_conn) for _ in range(2)]
    redis_conn.rpush("rq:queue:low", "corrupt-1")
    redis_conn.hset(RQJob.key_for("corrupt-1"), mapping={"data": b"\x00not zlib", "status": "queued"})
    before = snapshot(client, redis_conn)

    # When cleanup runs dry
    dry = run_cli(settings, "cleanup", "--dry-run", "--older-than", "0")

    # Then it reports the zombies and the bad entries, and changes nothing
    assert dry.returncode == 0, dry.stderr
    for zombie in zombies:
        assert f"would end {zombie['job_id']}" in dry.stdout
    assert "corrupt-1" in dry.stdout
    assert live["job_id"] not in dry.stdout
    assert snapshot(client, redis_conn)[0] == before[0]
    assert redis_conn.llen("rq:queue:low") == 1

    # When it runs for real
    real = run_cli(settings, "cleanup", "--older-than", "0")

    # Then the zombies are FAILED, Redis is clean, and the live job goes on to complete
    assert real.returncode == 0, real.stderr
    for zombie in zombies:
        ended = client.get(f"/jobs/{zombie['job_id']}").get_json()
        assert ended["status"] == "FAILED" and ended["error"].startswith("Cleanup")
    assert redis_conn.zcard("rq:wip:default") == 1  # only the live job's execution
    assert Queue("low", connection=redis_conn).job_ids == []
    assert client.get(f"/jobs/{live['job_id']}").get_json()["status"] == "PROCESSING"
    gate.touch()
    assert wait_for_status(client, live["job_id"], {"COMPLETED"}, timeout=60)


def test_cleanup_force_ends_every_old_live_job(client, settings):
    job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()
    assert run_cli(settings, "cleanup", "--older-than", "0").stdout.count("ended") == 0
    forced = run_cli(settings, "cleanup", "--older-than", "0", "--force")
    assert f"ended {job['job_id']}" in forced.stdout
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "FAILED"


def test_clear_queues_asks_first(client, settings, redis_conn):
    job = client.post("/tasks/add", json={"args": [1, 1]}).get_json()

    refused = run_cli(settings, "clear-queues", stdin="n\n")
    assert refused.returncode == 1
    assert Queue("default", connection=redis_conn).count == 1

    done = run_cli(settings, "clear-queues", "--yes")
    assert done.returncode == 0, done.stderr
    assert Queue("default", connection=redis_conn).count == 0
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "CANCELLED"


def test_clear_queues_flush_db(client, settings, redis_conn):
    redis_conn.set("unrelated", "x")
    done = run_cli(settings, "clear-queues", "--flush-db", "--yes")
    assert done.returncode == 0, done.stderr
    assert redis_conn.dbsize() == 0


def test_commands_say_clearly_when_redis_is_down(settings):
    down = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["cleanup"], ["clear-queues", "--yes"], ["recover"]):
        result = run_cli(settings, *args, redis_url=down)
        assert result.returncode == 1
        assert "Redis is unreachable" in result.stderr
        assert "Traceback" not in result.stderr


def test_recover_runs_one_pass(client, settings, redis_conn):
    result = run_cli(settings, "recover")
    assert result.returncode == 0, result.stderr
    assert '"requeued": []' in result.stdout


def test_commands_build_no_api_and_start_no_thread(settings):
    # Given a process that runs a command the way `python -m backend` does, then reports
    probe = (
        "import sys, threading\n"
        "from backend.cli import main\n"
        "try:\n"
        "    main(['cleanup', '--dry-run'], prog_name='python -m backend')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(code, 'backend.app' in sys.modules, sorted(t.name for t in threading.enumerate()))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": settings["REDIS_URL"],
        "DATABASE_URL": settings["DATABASE_URL"],
        "TASK_MODULES": TASK_MODULES,
        "RECONCILE_INTERVAL": "5",
        "WEBHOOK_INTERVAL": "1",
    }
    # When the command has run (with the server's thread intervals set)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    # Then it succeeded without building the API, and no reconciler or webhook thread ran
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 False ['MainThread']"
