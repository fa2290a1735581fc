"""A gate a test opens for a task it started: the task runs until a file exists. Plain code (no
task registered here), shared by the task modules of the suite and of the chaos scenarios."""

from __future__ import annotations

import os
import time


def wait_for_gate(path: str, timeout: float) -> None:
    """Return once ``path`` exists; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
