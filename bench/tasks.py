"""The benchmark's tasks, registered with the service (``TASK_MODULES=...,bench.tasks``)."""

from __future__ import annotations

from backend.tasks import task
from bench import rawtasks

noop = task("bench_noop")(rawtasks.noop)
stamp = task("bench_stamp")(rawtasks.stamp)
