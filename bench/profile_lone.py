"""``python -m bench.profile lone [-n N] [--py-spy PATH]``: one request at a time on an idle API,
where T5's send->accepted goes (issue 17).

In alternating rounds, each request sent alone after a 20 ms pause (as bench e sends its
submissions): the hello-world route, ``GET /jobs/<id>`` of a finished job, ``POST /tasks/<name>``
with an idle simple worker listening (it starts the job as the API answers), and the same with no
worker (the job waits). The first two give the HTTP floor; the last two whether the worker's wake-up
costs the answer time. With ``--py-spy``, a further run records the API's processes (``--idle``:
wall time, waits included) during lone submissions and summarises the request threads' frames.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.common import Stack, Workdir, emit, ms, pct, session, start_hello
from bench.profile_spy import _spy, _stop, summarize

GAP = 0.02


def _lone(http, method: str, url: str, n: int, **kwargs) -> list[float]:
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = http.request(method, url, timeout=30, **kwargs)
        took.append(time.perf_counter() - t0)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text[:200]}")
        time.sleep(GAP)
    return took


def lone(args) -> None:
    workdir = Workdir()
    rounds = 4
    got: dict[str, list[float]] = {"hello": [], "poll": [], "submit, worker idle": [], "submit, no worker": []}
    body = {"json": {"kwargs": {"key": "bench:lone"}}}
    try:
        with Stack(workdir, "lone") as stack:
            hello = start_hello(stack.env, workdir)
            try:
                with session() as http, session() as other:
                    submit = f"{stack.url}/tasks/bench_stamp"
                    worker = stack.worker("ours", True, burst=False)
                    job_id = http.post(submit, **body).json()["job_id"]
                    _lone(http, "POST", submit, 20, **body)  # warm: the API's processes and the worker
                    for _ in range(rounds):
                        got["hello"] += _lone(other, "GET", f"{hello.url}/hello", args.n)
                        got["poll"] += _lone(http, "GET", f"{stack.url}/jobs/{job_id}", args.n)
                        got["submit, worker idle"] += _lone(http, "POST", submit, args.n, **body)
                        worker.stop()
                        got["submit, no worker"] += _lone(http, "POST", submit, args.n, **body)
                        worker = stack.worker("ours", True, burst=False)
                        time.sleep(2)  # registered and listening
                    emit(f"one request at a time, {GAP * 1000:.0f} ms apart, {rounds} alternating rounds of {args.n}:")
                    for name, took in got.items():
                        emit(f"  {name:22s} p50 {ms(pct(took, 50))} ms  p90 {ms(pct(took, 90))} ms")
                    if args.py_spy:
                        _spy_lone(args, stack, http, submit, body)
            finally:
                hello.stop()
    finally:
        workdir.cleanup()


def _spy_lone(args, stack: Stack, http, submit: str, body: dict) -> None:
    py_spy = args.py_spy if Path(args.py_spy).exists() else shutil.which(args.py_spy)
    if not py_spy:
        raise SystemExit(f"py-spy not found at {args.py_spy}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lone-api.txt"
    spy = _spy(py_spy, stack.api.process.pid, path, "--idle")
    time.sleep(1)
    _lone(http, "POST", submit, args.n * 2, **body)
    _stop(spy)
    emit("py-spy --idle on the API during lone submissions (wall time; py-spy slows what it samples):")
    summarize(path, only="ThreadWorker.handle_request", top=30)
