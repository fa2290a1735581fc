"""Small helpers for the processes that `make run` (and the tests) start and stop."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import requests


class ProcessExited(RuntimeError):
    """Raised when the process being waited for exited first."""

    def __init__(self, returncode: int):
        super().__init__(f"exited with status {returncode}")
        self.returncode = returncode


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``process``; SIGKILL it if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(
    probe: Callable[[], bool], *, timeout: float, interval: float, process: subprocess.Popen | None = None
) -> bool:
    """Call ``probe`` every ``interval`` seconds until it returns true (True) or ``timeout``
    seconds pass (False): the one wait-until-ready loop of the servers `make run` starts.

    Raises:
        ProcessExited: ``process`` (the server being waited for) exited first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ProcessExited(process.returncode)
        if probe():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_for_http(url: str, *, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Block until ``url`` answers (any status).

    Raises:
        RuntimeError: ``process`` exited, or nothing answered within ``timeout`` seconds.
    """

    def answers() -> bool:
        try:
            requests.get(url, timeout=1)
        except requests.RequestException:
            return False
        return True

    try:
        answered = wait_until(answers, timeout=timeout, interval=0.2, process=process)
    except ProcessExited as exc:
        raise RuntimeError(f"the process serving {url} exited with status {exc.returncode}") from None
    if not answered:
        raise RuntimeError(f"nothing answered at {url} within {timeout:.0f} s")
