"""The chaos suite's settings: where the repository is, the recovery bounds every process of
a scenario runs under, the statuses the checks compare, and the soak switch."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("CHAOS_SOAK", "") == "1"
TOKEN = "chaos-internal-token"
TASK_MODULES = "backend.tasks.examples,tests.chaos.tasks"
MARKER_ENV = "CHAOS_RUN_MARKER"

#: Recovery settings of every API and worker the harness starts.
LEASE_SECONDS = 3.0
RECONCILE_INTERVAL = 1.0
RECONCILE_GRACE = 1.0
#: The recovery bound under those settings: a dead worker's lease lapses (within 3 s), the
#: reconciler, passing every second over rows older than the grace (1 s), counts it dead once
#: the lease was missing for half a lease and confirms it 0.5 s later: ~6-7 s in all. 15 s
#: leaves room for a loaded 2-core machine; the product's default bound is 60 s.
RECOVERY_BOUND = 15.0
#: The slowest a working stack drains a backlog of the scenarios' jobs (up to 1.5 s each, on 3
#: workers sharing 2 cores), in jobs per second: the soak measured 2.65 (F3, jobs of 0.6-1.5 s)
#: and 8.7 (F7, 0.05-0.4 s). A wait's safety net allows this much per job still to run, so
#: that it grows with the job count (``checks.drain_timeout``).
SLOWEST_DRAIN_RATE = 1.0

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
_RANK = {"PENDING": 0, "QUEUED": 1, "PROCESSING": 2, "COMPLETED": 3, "FAILED": 3, "CANCELLED": 3}
#: The store's terminal status -> the RQ statuses of the current attempt that agree with it
#: (None: the RQ job is gone).
RQ_AGREES = {
    "COMPLETED": {"finished"},
    "FAILED": {"failed"},
    "CANCELLED": {"canceled", "stopped", None},
}


def scaled(normal: int, soak: int) -> int:
    """``soak`` under CHAOS_SOAK=1, else ``normal``."""
    return soak if SOAK else normal
