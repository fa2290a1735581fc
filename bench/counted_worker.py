"""A worker (ours or raw ``rq worker``) that counts its Redis round trips and HTTP requests.

    BENCH_TRIPS=/tmp/trips.jsonl python bench/counted_worker.py ours --name w --burst --simple
    BENCH_TRIPS=/tmp/trips.jsonl python bench/counted_worker.py raw worker --burst -w rq.SimpleWorker ...

For ``python -m bench.profile_trips``: it wraps (never changes) redis-py's calls. A round trip is
one ``execute_command`` outside a pipeline (a script's EVALSHA included), one command a
pipeline runs at once (WATCH), or one pipeline's ``execute``; each is recorded with the names of
the commands it carried, by thread. Every process appends one JSON line at its exit (a forked
work-horse too, before its ``os._exit``).

The start path (an idle worker woken by a job): from the moment a blocking pop (BLPOP) returns a
job to the moment RQ calls the task's function (``Job._execute``), the main thread's CPU time,
wall time and round trips, one ``[cpu_s, wall_s, trips]`` per job in the record's ``starts``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atexit  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402
from redis.client import Pipeline, Redis  # noqa: E402
from rq.job import Job  # noqa: E402

_PARENT = os.getpid()
#: (thread name, command names of one round trip) -> how many times.
_trips: collections.Counter = collections.Counter()
#: (thread name, method, path shape) -> HTTP requests.
_http: collections.Counter = collections.Counter()
_lock = threading.Lock()


def _name(args) -> str:
    name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    return name.upper()


def _count(names: tuple[str, ...]) -> None:
    with _lock:
        _trips[(threading.current_thread().name, " ".join(names))] += 1
    if threading.current_thread() is threading.main_thread():
        _main_trips[0] += 1


#: The start path under way: (thread CPU, wall, round trips so far) when the BLPOP returned.
_woken: list = []
_starts: list[list] = []
_main_trips = [0]

_execute_command = Redis.execute_command
_immediate = Pipeline.immediate_execute_command
_pipeline_execute = Pipeline.execute
_request = requests.Session.request


def execute_command(self, *args, **options):
    if not isinstance(self, Pipeline):
        _count((_name(args),))
    answer = _execute_command(self, *args, **options)
    if args[0] in ("BLPOP", b"BLPOP") and answer and threading.current_thread() is threading.main_thread():
        _woken[:] = [time.thread_time(), time.perf_counter(), _main_trips[0]]
    return answer


def _execute(self):
    if _woken:
        cpu, wall, trips = _woken
        _starts.append([time.thread_time() - cpu, time.perf_counter() - wall, _main_trips[0] - trips])
        _woken.clear()
    return _job_execute(self)


def immediate_execute_command(self, *args, **options):
    _count((_name(args),))
    return _immediate(self, *args, **options)


def pipeline_execute(self, raise_on_error: bool = True):
    names = tuple(_name(command[0]) for command in self.command_stack)
    if names:
        _count(("MULTI", *names, "EXEC") if self.transaction else names)
    return _pipeline_execute(self, raise_on_error)


def request(self, method, url, *args, **kwargs):
    path = "/" + url.split("/", 3)[-1] if "://" in url else url
    shape = "/".join("<id>" if len(part) > 20 else part for part in path.split("/"))
    with _lock:
        _http[(threading.current_thread().name, method, shape)] += 1
    return _request(self, method, url, *args, **kwargs)


Redis.execute_command = execute_command
_job_execute = Job._execute
Job._execute = _execute
Pipeline.immediate_execute_command = immediate_execute_command
Pipeline.execute = pipeline_execute
requests.Session.request = request


def _dump() -> None:
    path = os.environ.get("BENCH_TRIPS")
    if not path:
        return
    with _lock:
        record = {
            "pid": os.getpid(),
            "role": "parent" if os.getpid() == _PARENT else "horse",
            "trips": [[thread, names, n] for (thread, names), n in _trips.items()],
            "http": [[thread, method, shape, n] for (thread, method, shape), n in _http.items()],
            "starts": list(_starts),
        }
        _trips.clear()
        _http.clear()
        _starts.clear()
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


_os_exit = os._exit


def _exit(code: int) -> None:
    _dump()
    _os_exit(code)


def _forked() -> None:
    # A work-horse counts its own trips only, not the ones its parent made before the fork.
    _trips.clear()
    _http.clear()
    _starts.clear()


os._exit = _exit
atexit.register(_dump)
os.register_at_fork(after_in_child=_forked)

if __name__ == "__main__":
    kind = sys.argv.pop(1)
    if kind == "ours":
        from backend.runner.worker import main

        sys.argv[0] = "backend/worker.py"
        code = main()
    else:
        from rq.cli import main

        sys.argv[0] = "rq"
        try:
            code = main()
        except SystemExit as exc:
            code = exc.code
    sys.exit(code)
