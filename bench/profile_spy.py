"""``python -m bench.profile spy drain|poll|submit``: py-spy on the API or a worker under load,
its folded stacks summarised as each frame's inclusive share."""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.common import Stack, Workdir, emit, ms, pct, session, start_hello, submit_batches
from bench.load import wrk


def _spy(py_spy: str, pid: int, out: Path, *flags: str) -> subprocess.Popen:
    command = [py_spy, "record", "--format", "raw", "--rate", "200", "--subprocesses", "-o", str(out)]
    return subprocess.Popen([*command, *flags, "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)


def summarize(path: Path, *, only: str | None = None, top: int = 30) -> None:
    """Inclusive share of the frames in py-spy's folded stacks (line numbers dropped)."""
    total = 0
    inclusive: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if only and only not in stack:
            continue
        n = int(count)
        total += n
        frames = {re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")}
        inclusive.update({frame: n for frame in frames})
    emit(f"{path.name}: {total} samples" + (f" in stacks through {only!r}" if only else ""))
    shown = 0
    for frame, n in inclusive.most_common():
        if frame.startswith("process ") or "threading.py" in frame or "runpy" in frame:
            continue
        emit(f"  {100 * n / total:5.1f}%  {frame}")
        shown += 1
        if shown >= top:
            break


def spy(args) -> None:
    py_spy = args.py_spy or shutil.which("py-spy") or "/tmp/benchvenv/bin/py-spy"
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install py-spy")
    workdir = Workdir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with Stack(workdir, "spy") as stack:
            if args.scenario == "drain":
                submit_batches(stack.url, "bench_noop", args.n)
                api = _spy(py_spy, stack.api.process.pid, out / "drain-api.txt", "--gil")
                worker = stack.worker("ours", True)
                wspy = _spy(py_spy, worker.process.pid, out / "drain-worker.txt", "--idle", "--nonblocking")
                worker.wait(timeout=600)
                _stop(api)
                wspy.wait(timeout=60)
                summarize(out / "drain-api.txt", only="ThreadWorker.handle")
                summarize(out / "drain-api.txt", only="PeriodicThread", top=8)
                summarize(out / "drain-worker.txt", only="BaseWorker.work", top=20)
            elif args.scenario == "poll":
                job_id = session().post(f"{stack.url}/tasks/bench_noop", json={}).json()["job_id"]
                stack.worker("ours", True).wait(timeout=120)
                hello = start_hello(stack.env, workdir)
                try:
                    for name, server, url in (
                        ("poll-ours", stack.api, f"{stack.url}/jobs/{job_id}"),
                        ("poll-hello", hello, f"{hello.url}/hello"),
                    ):
                        wrk(url, 8, 2)
                        recorder = _spy(py_spy, server.process.pid, out / f"{name}.txt", "--gil")
                        time.sleep(1)
                        got = wrk(url, 8, 8)
                        _stop(recorder)
                        emit(f"{name}: {got['rate']:.0f} req/s, p50 {ms(got['p50'])} ms (while profiled)")
                        summarize(out / f"{name}.txt", only="ThreadWorker.handle", top=25)
                finally:
                    hello.stop()
            elif args.scenario == "submit":
                from bench.submission import _threads

                url = f"{stack.url}/tasks/bench_noop"

                def post(http) -> None:
                    http.post(url, json={}, timeout=60)

                _threads(64, 8, session, post)
                recorder = _spy(py_spy, stack.api.process.pid, out / "submit-api.txt", "--idle")
                time.sleep(1)
                elapsed, latencies = _threads(args.n, 8, session, post)
                _stop(recorder)
                p50, p99 = ms(pct(latencies, 50)), ms(pct(latencies, 99))
                emit(f"submit: {args.n / elapsed:.0f}/s, p50 {p50} ms, p99 {p99} ms")
                summarize(out / "submit-api.txt", only="ThreadWorker.handle", top=25)
    finally:
        workdir.cleanup()
    emit(f"folded stacks in {out}")
