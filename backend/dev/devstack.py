"""``make run``: the whole stack in the foreground, for one laptop.

Starts Redis (embedded, when REDIS_URL is unset), the API on 127.0.0.1:5000 with RQ
Dashboard at /rq, one worker and the scheduler; generates an internal token for the session; prints where
everything is; Ctrl+C stops every process it started. Redis keeps its data under
backend/data/.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.core import logs
from backend.dev import processes
from backend.dev.redis_server import DEV_DATA_DIR, DEV_PORT, EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM them all at once (workers finish their job), then wait; SIGKILL after 15 s."""
    for process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in children:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    # Ctrl+C, `kill` and a closed terminal all stop the stack in order. Set explicitly:
    # a shell that starts us in the background would otherwise leave SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    env = dict(os.environ)
    env.setdefault("INTERNAL_SERVICE_TOKEN", secrets.token_urlsafe(32))
    port = int(env.get("PORT", "5000"))
    api_url = f"http://127.0.0.1:{port}"
    env.setdefault("API_BASE_URL", api_url)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One laptop: the start-up check of secrets (backend/core/secrets_check.py) does not apply.
    env.setdefault("JOBSERVICE_ENV", "development")

    embedded = None
    if not env.get("REDIS_URL"):
        embedded = EmbeddedRedis.start(data_dir=DEV_DATA_DIR, port=int(env.get("REDIS_PORT", DEV_PORT)))
        env["REDIS_URL"] = embedded.url

    started: list[subprocess.Popen] = []
    # Children ignore the terminal's Ctrl+C (they get their own process group); this
    # process stops them in order instead, so none is left behind.
    spawn = {"cwd": ROOT, "env": env, "start_new_session": True}
    try:
        api = subprocess.Popen([sys.executable, "backend/app.py"], **spawn)
        started.append(api)
        try:
            processes.wait_for_http(f"{api_url}/tasks", process=api)
        except RuntimeError as exc:
            raise SystemExit(f"{exc}; see the API's log above") from None
        worker = subprocess.Popen([sys.executable, "backend/worker.py", "--name", "worker-1"], **spawn)
        started.append(worker)
        scheduler = subprocess.Popen([sys.executable, "backend/scheduler.py"], **spawn)
        started.append(scheduler)
        print(
            "\n".join(
                [
                    "",
                    "job service is up:",
                    f"  API            {api_url}  (try: curl {api_url}/tasks)",
                    f"  RQ Dashboard   {api_url}/rq",
                    f"  Redis          {logs.redact(env['REDIS_URL'])}"
                    + ("  (embedded, data in backend/data/redis)" if embedded else ""),
                    f"  job store      {logs.redact(env.get('DATABASE_URL', 'sqlite:///backend/data/jobs.db'))}",
                    "  worker         worker-1 on high,default,low",
                    "  scheduler      fires the cron schedules of /scheduled-jobs",
                    "Ctrl+C stops everything.",
                    "",
                ]
            ),
            flush=True,
        )
        while all(process.poll() is None for process in started):
            time.sleep(0.5)
        failed = next(process for process in started if process.poll() is not None)
        print(f"a process exited (status {failed.returncode}); stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        _stop(list(reversed(started)))
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
