"""The chaos harness, the one import of the scenarios: a real Redis, the API and workers as
subprocesses, the faults, the recorder, the checks and the figures.

Each part lives in its own module (settings, client, processes, faults, stack, recorder,
checks, figures); this one re-exports them so a scenario imports from one place.
"""

from __future__ import annotations

from tests.chaos.checks import (
    check_invariants,
    check_no_server_errors,
    store_rq_mismatches,
    wait_all_terminal,
    wait_until,
)
from tests.chaos.client import Api
from tests.chaos.figures import (
    executions_per_job,
    histogram,
    kill_recovery_seconds,
    report_figures,
    unexplained_reruns,
)
from tests.chaos.processes import Execution, Kill, WorkerProc, children_of, cmdline, marked_pids, pid_alive
from tests.chaos.recorder import Recorder
from tests.chaos.settings import (
    LEASE_SECONDS,
    MARKER_ENV,
    RECONCILE_GRACE,
    RECONCILE_INTERVAL,
    RECOVERY_BOUND,
    ROOT,
    RQ_AGREES,
    SOAK,
    TASK_MODULES,
    TERMINAL,
    TOKEN,
    scaled,
)
from tests.chaos.stack import Cluster

__all__ = [
    "LEASE_SECONDS",
    "MARKER_ENV",
    "RECONCILE_GRACE",
    "RECONCILE_INTERVAL",
    "RECOVERY_BOUND",
    "ROOT",
    "RQ_AGREES",
    "SOAK",
    "TASK_MODULES",
    "TERMINAL",
    "TOKEN",
    "Api",
    "Cluster",
    "Execution",
    "Kill",
    "Recorder",
    "WorkerProc",
    "check_invariants",
    "check_no_server_errors",
    "children_of",
    "cmdline",
    "executions_per_job",
    "histogram",
    "kill_recovery_seconds",
    "marked_pids",
    "pid_alive",
    "report_figures",
    "scaled",
    "store_rq_mismatches",
    "unexplained_reruns",
    "wait_all_terminal",
    "wait_until",
]
