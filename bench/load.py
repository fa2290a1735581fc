"""Load generators for the polling benchmark and the profiles: wrk (when installed) or a threaded
Python keep-alive client, and the CPU time the loaded processes used."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time

import psutil

from bench.common import pct, session


def concurrent_get(url: str, connections: int, duration: float) -> tuple[float, list[float]]:
    """Python fallback for wrk: keep-alive clients in threads. Returns (req/s, latencies)."""
    stop = time.monotonic() + duration
    latencies: list[list[float]] = [[] for _ in range(connections)]

    def run(i: int) -> None:
        with session() as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                http.get(url, timeout=30)
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    flat = [x for lst in latencies for x in lst]
    return len(flat) / elapsed, flat


def wrk(url: str, connections: int, duration: float) -> dict:
    """Load ``url`` for ``duration`` s over ``connections`` keep-alive connections: wrk when
    installed, else the Python client. Returns rate (req/s), p50, p99 (s), requests, tool."""
    binary = shutil.which("wrk")
    if binary is None:
        rate, lat = concurrent_get(url, connections, duration)
        return {"rate": rate, "p50": pct(lat, 50), "p99": pct(lat, 99), "requests": len(lat), "tool": "python"}
    out = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = {"rate": float("nan"), "p50": float("nan"), "p99": float("nan"), "requests": 0, "tool": "wrk"}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            got["rate"] = float(parts[1])
        elif len(parts) == 2 and parts[0] == "50%":
            got["p50"] = _wrk_seconds(parts[1])
        elif len(parts) == 2 and parts[0] == "99%":
            got["p99"] = _wrk_seconds(parts[1])
        elif " requests in " in line:
            got["requests"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            raise RuntimeError(f"wrk saw {parts[-1]} non-2xx answers from {url}")
    return got


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by the processes ``pids``."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _wrk_seconds(text: str) -> float:
    for unit, factor in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)
