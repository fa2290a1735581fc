"""SQLite writers taking turns: many threads in several processes, no write lost or refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from backend.store import make_engine

ROOT = Path(__file__).resolve().parent.parent

# Each thread runs transactions that read first and write after, some rolled back after a
# failed write, some written through a second connection while the first holds its turn.
WRITER = textwrap.dedent(
    """
    import sys, threading
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    from backend.store import make_engine

    engine = make_engine(sys.argv[1])
    name, errors = sys.argv[2], []

    def work(thread):
        try:
            for n in range(60):
                with engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM rows")).scalar()
                    conn.execute(text("INSERT INTO rows (id) VALUES (:id)"), {"id": f"{name}-{thread}-{n}"})
                    conn.execute(text("SELECT count(*) FROM rows")).scalar()
                    conn.execute(text("INSERT INTO rows (id) VALUES (:id)"), {"id": f"{name}-{thread}-{n}-b"})
                    if n % 10 == 0:
                        with engine.connect() as other:
                            other.execute(text("SELECT count(*) FROM rows")).scalar()
                    conn.commit()
                if n % 7 == 0:
                    with engine.connect() as conn:
                        try:
                            conn.execute(text("INSERT INTO rows (id) VALUES (:id)"), {"id": f"{name}-{thread}-0"})
                        except IntegrityError:
                            conn.rollback()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\\n".join(errors))
    sys.exit(1 if errors else 0)
    """
)


def test_writers_in_several_processes_all_land_without_a_locked_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE rows (id TEXT PRIMARY KEY)"))

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, f"p{p}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for p in range(3)
    ]
    # (a wait for a writer that waits for it would end in "database is locked" after 30 s)
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rows")).scalar() == 3 * 6 * 60 * 2


def test_a_turn_ends_with_its_transaction(tmp_path):
    # Given writers whose transactions ended in a rollback, in a failed write, and in a commit
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE rows (id TEXT PRIMARY KEY)"))
    with engine.connect() as first:
        first.execute(text("INSERT INTO rows (id) VALUES ('a')"))
        first.rollback()
        first.execute(text("INSERT INTO rows (id) VALUES ('b')"))
        first.commit()
        with pytest.raises(IntegrityError):
            first.execute(text("INSERT INTO rows (id) VALUES ('b')"))
        first.rollback()

        # Then a writer with its own engine, while the first connection stays open, writes at once
        done = threading.Event()

        def write():
            with make_engine(url).begin() as conn:
                conn.execute(text("INSERT INTO rows (id) VALUES ('c')"))
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert done.wait(10), "the second writer is still waiting for its turn"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM rows ORDER BY id")).scalars().all() == ["b", "c"]


def test_concurrent_submissions_to_the_api_under_gunicorn_all_land(settings, client):
    # Given the API under gunicorn as deployed (2 processes x 4 threads) on one SQLite file
    import requests

    from backend.redis_server import free_port

    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        **{name: str(settings[name]) for name in ("REDIS_URL", "DATABASE_URL", "INTERNAL_SERVICE_TOKEN")},
        "TASK_MODULES": settings["TASK_MODULES"],
        "RATE_LIMIT_ENABLED": "0",
        "RECONCILE_INTERVAL": "1",
        "LOG_LEVEL": "WARNING",
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/openapi.json", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and api.poll() is None, "the API did not start"
                time.sleep(0.2)

        # When 8 clients submit 50 jobs each, as fast as they can
        answers: list[int] = []

        def submit() -> None:
            with requests.Session() as http:
                for i in range(50):
                    answers.append(http.post(f"{url}/tasks/add", json={"args": [i, 1]}, timeout=60).status_code)

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        api.terminate()
        api.wait(timeout=30)

    # Then every submission was accepted and recorded
    assert answers == [202] * 400, api.stderr.read().decode()[-3000:]
    stats = client.get("/monitoring/queue/stats").get_json()
    assert (stats["jobs"]["QUEUED"], stats["queues"]["default"]["queued"]) == (400, 400)
