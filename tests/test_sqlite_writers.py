"""SQLite writers taking turns: many threads in several processes, no write lost or refused."""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from backend.store.engine import make_engine
from backend.store.sqlite_writers import WriterTurnConnection

ROOT = Path(__file__).resolve().parent.parent

# Each thread runs transactions that read, write, read and write again (pooled connections pass
# between threads), some reading through a second connection meanwhile, and failed writes
# rolled back.
WRITER = textwrap.dedent(
    """
    import sys, threading
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    from backend.store.engine import make_engine

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


def _plain_write_lands(path: Path, row: str) -> bool:
    """Whether a writer on another connection gets its turn and writes within 10 s."""
    done = threading.Event()

    def write():
        other = sqlite3.connect(path, factory=WriterTurnConnection, timeout=30, check_same_thread=False)
        other.execute("INSERT INTO rows (id) VALUES (?)", (row,))
        other.commit()
        other.close()
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(10)


def _commit(conn):
    conn.commit()


def _rollback(conn):
    conn.rollback()


def _failed_write_rolled_back(conn):
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO rows (id) VALUES ('seed')")
    conn.rollback()


def _with_block(conn):
    with conn:
        conn.execute("INSERT INTO rows (id) VALUES ('with')")


def _script(conn):
    conn.executescript("INSERT INTO rows (id) VALUES ('script');")


def _dropped_unclosed(conn):
    """Left to the garbage collector (a connection is in a cycle with its statement cache)."""


@pytest.mark.parametrize(
    "end", [_commit, _rollback, _failed_write_rolled_back, _with_block, _script, _dropped_unclosed]
)
def test_a_turn_ends_with_its_transaction(tmp_path, end):
    # Given a writer that took its turn, and ended its transaction in one of the ways there are
    path = tmp_path / "turns.db"
    conn = sqlite3.connect(path, factory=WriterTurnConnection, timeout=30, check_same_thread=False)
    conn.execute("CREATE TABLE rows (id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO rows (id) VALUES ('seed')")
    conn.commit()
    conn.execute("INSERT INTO rows (id) VALUES ('mine')")
    end(conn)
    del conn
    gc.collect()

    # Then a writer on another connection gets its turn at once
    assert _plain_write_lands(path, "next"), "the next writer is still waiting for its turn"


def test_concurrent_submissions_to_the_api_under_gunicorn_all_land(settings, client, tmp_path):
    # Given the API under gunicorn as deployed (2 processes x 4 threads) on one SQLite file
    import requests

    from backend.dev.redis_server import free_port

    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        **{name: str(settings[name]) for name in ("REDIS_URL", "DATABASE_URL", "INTERNAL_SERVICE_TOKEN")},
        "TASK_MODULES": settings["TASK_MODULES"],
        "RATE_LIMIT_ENABLED": "0",
        "RECONCILE_INTERVAL": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "api.log"
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/openapi.json", timeout=1)
                break
            except requests.RequestException:  # refused, or a worker still booting timed out
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
    assert answers == [202] * 400, log.read_text()[-3000:]
    stats = client.get("/monitoring/queue/stats").get_json()
    assert (stats["jobs"]["QUEUED"], stats["queues"]["default"]["queued"]) == (400, 400)
