"""Small helpers for the processes that `make run` (and the tests) start and stop."""

from __future__ import annotations

import subprocess
import time

import requests


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``process``; SIGKILL it if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_http(url: str, *, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Block until ``url`` answers (any status).

    Raises:
        RuntimeError: ``process`` exited, or nothing answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with status {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered at {url} within {timeout:.0f} s") from None
            time.sleep(0.2)
