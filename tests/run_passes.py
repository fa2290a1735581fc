"""``make test``'s two passes: the suite on SQLite, and again on a PostgreSQL the session starts
itself (``TEST_STORE=postgres``), side by side, failing if either fails.

Why side by side: one after the other they take longer than the 15 minutes ``make test`` may
take on a 2-core machine, and most of a pass is spent waiting on worker processes, Redis and
sleeps, not on the CPU. The PostgreSQL pass writes to a file, shown after the SQLite pass, so
the two outputs do not interleave. Without PostgreSQL's binaries the second pass is skipped,
saying why. Arguments are passed to both pytest runs (``python -m tests.run_passes -x``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.dev.postgres_server import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
#: Set in both passes when the PostgreSQL pass runs beside the SQLite one (see tests/conftest.py).
POSTGRES_PASS_RUNS = "TEST_POSTGRES_PASS_RUNS"


def _verdict(code: int) -> str:
    return "passed" if code == 0 else f"FAILED (pytest exit status {code})"


def main(args: list[str]) -> int:
    # --durations: each pass lists its slowest tests, to see where the 15-minute budget goes.
    # -n 2 --dist loadfile: each pass runs its files in two processes (pytest-xdist), a file's
    # tests together in one; a pass waits on workers, Redis and sleeps far more than it computes.
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "--durations=25", *args]
    reason = unavailable_reason()
    if reason:
        print(f"PostgreSQL pass skipped: {reason}", flush=True)
        return subprocess.call(command, cwd=ROOT)

    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w+", prefix="pytest-postgres-", suffix=".log") as log:
        # -rfE: the PostgreSQL pass skips a few hundred tests by design (see its summary line
        # per reason); listing each would bury its failures.
        postgres = subprocess.Popen(
            [*command, "-rfE"],
            cwd=ROOT,
            env={**os.environ, "TEST_STORE": "postgres", POSTGRES_PASS_RUNS: "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            print("==== pass 1: SQLite (the PostgreSQL pass runs alongside; its output follows) ====", flush=True)
            sqlite_code = subprocess.call(command, cwd=ROOT, env={**os.environ, POSTGRES_PASS_RUNS: "1"})
            sqlite_done = time.monotonic() - started
            postgres_code = postgres.wait()
        finally:
            if postgres.poll() is None:  # interrupted: do not leave the second pass running
                postgres.terminate()
                postgres.wait()
        print("\n==== pass 2: PostgreSQL (TEST_STORE=postgres) ====", flush=True)
        log.seek(0)
        sys.stdout.write(log.read())
    total = time.monotonic() - started
    print(
        f"\nSQLite pass {_verdict(sqlite_code)} in {sqlite_done:.0f} s; "
        f"PostgreSQL pass {_verdict(postgres_code)}; both done in {total:.0f} s"
    )
    return 0 if sqlite_code == postgres_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
