"""k. Against Celery + Flower (issue 17): polling a finished task and end to end, ours on each
store against the peer of ``bench/peer.py``, in alternating rounds of one invocation.

Each side has one worker draining throughout: ours one ``backend/worker.py --simple`` per store
(as the other benchmarks start them), the peer one Celery worker with the solo pool.

- Polling: ``GET /jobs/<id>`` of a COMPLETED job against Flower's ``GET /api/task/result/<id>``
  of a SUCCESS task, with the hello-world route (``bench/hello_app.py``) beside them, wrk (as
  ``bench/polling.py``), the servers in rotating rounds; each side's best round is compared.
- End to end (T2): N no-op jobs submitted over HTTP by C clients (``POST /tasks/bench_noop`` /
  ``POST /api/task/async-apply/bench_noop``), each client submitting its share, then polling each
  of its jobs over HTTP (``GET /jobs/<id>`` / ``GET /api/task/result/<id>``, a pause of
  ``POLL_PAUSE`` between polls of a job not yet done) until it is done; elapsed from the first
  submission to the moment the last client saw its last job done. The same client code for both.

T1's Flower half (submission) is measured by ``bench/submission.py`` with the peer in its rounds
(``peer.celery_flower`` / ``peer.check_submission``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from bench.common import Results, Stack, Workdir, WorkerProc, emit, ms, session, start_hello, table
from bench.load import cpu_seconds, wrk
from bench.peer import FLOWER, CeleryFlower, celery_flower
from bench.stores import POSTGRESQL, SQLITE, Postgres, store_stacks

HELLO = "hello"
ROLES = ("API", "worker", "Redis")
#: T2: our end-to-end rate against Celery + Flower's (issue 17).
END_TO_END_TARGET = 1.5
#: Between two polls of a job not done yet, as a client polls for a result. In a tight loop (5 ms
#: tried) 8 clients sent ~10 polls per job and the run measured mostly how much the polls slowed
#: the server down (ours more, as our worker reports through the API, where Celery's writes Redis
#: directly). 50 ms: the end is seen at most ~50 ms late on both sides (~1-2% of a run).
POLL_PAUSE = 0.05


class _Ours:
    """Our API as one side: submit over HTTP, ask whether a job is done over HTTP."""

    def __init__(self, stack: Stack, worker: WorkerProc):
        self.url = stack.url
        self._stack, self._worker = stack, worker

    def roles(self) -> dict[str, list[int]]:
        """Our processes by role, for CPU per job: the API (gunicorn), the worker, Redis."""
        api = [self._stack.api.process.pid, *self._stack.api.worker_pids()]
        return {"API": api, "worker": [self._worker.process.pid], "Redis": [self._stack.redis.process.pid]}

    def submit(self, http: requests.Session) -> str:
        r = http.post(f"{self.url}/tasks/bench_noop", json={"args": [], "kwargs": {}}, timeout=60)
        if r.status_code != 202:
            raise RuntimeError(f"POST /tasks/bench_noop answered {r.status_code}: {r.text[:200]}")
        return r.json()["job_id"]

    def result_url(self, job_id: str) -> str:
        return f"{self.url}/jobs/{job_id}"

    def done(self, http: requests.Session, job_id: str) -> bool:
        r = http.get(self.result_url(job_id), timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"GET /jobs/{job_id} answered {r.status_code}: {r.text[:200]}")
        status = r.json()["status"]
        if status in ("FAILED", "CANCELLED"):
            raise RuntimeError(f"our job {job_id} ended {status}")
        return status == "COMPLETED"


Side = _Ours | CeleryFlower


def _finished(side: Side) -> str:
    """The id of a job run to completion on ``side`` by its draining worker."""
    with session() as http:
        job_id = side.submit(http)
        deadline = time.monotonic() + 60
        while not side.done(http, job_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{job_id} not done after 60 s")
            time.sleep(0.05)
    return job_id


def _end_to_end(side: Side, count: int, clients: int) -> tuple[float, dict[str, float]]:
    """Seconds from the first submission until every client has seen all its jobs done; the CPU
    seconds each of the side's roles (API, worker, Redis) used meanwhile, the polls sent, and when
    the last submission was answered (seconds from the start)."""
    per = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    polls = [0] * clients
    submitted = [0.0] * clients

    def client(i: int) -> None:
        with session() as http:
            try:
                barrier.wait()
                ids = [side.submit(http) for _ in range(per[i])]
                submitted[i] = time.perf_counter()
                for job_id in ids:
                    polls[i] += 1
                    while not side.done(http, job_id):
                        time.sleep(POLL_PAUSE)
                        polls[i] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    roles = side.roles()
    cpu = {role: cpu_seconds(pids) for role, pids in roles.items()}
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    used = {role: cpu_seconds(pids) - cpu[role] for role, pids in roles.items()}
    return elapsed, {**used, "polls": sum(polls), "submitted": max(submitted) - t0}


def _rotating(sides: list[str], rounds: int, measure: Callable[[str], object]) -> dict[str, list]:
    """``rounds`` rounds over ``sides``, the first side rotating; each side's results in order."""
    runs: dict[str, list] = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            runs[side].append(measure(side))
    return runs


def _polling(servers: dict[str, tuple[str, Callable[[], list[int]]]], results: Results, *, connections: int,
             duration: float, rounds: int) -> None:  # fmt: skip
    def measure(side: str) -> dict:
        url, pids_of = servers[side]
        pids = pids_of()
        before = cpu_seconds(pids)
        got = wrk(url, connections, duration)
        got["cpu"] = (cpu_seconds(pids) - before) / max(got["requests"], 1)
        return got

    for url, _pids in servers.values():
        wrk(url, connections, 1)  # warm-up
    runs = _rotating(list(servers), rounds, measure)
    best = {side: max(got, key=lambda r: r["rate"]) for side, got in runs.items()}
    cpu = {side: min(r["cpu"] for r in got) for side, got in runs.items()}
    names = {HELLO: "GET /hello (hello-world)", FLOWER: "GET /api/task/result/<id> (Flower)"}
    rows = [
        [names.get(side, f"GET /jobs/<id> (ours, {side})"), f"{b['rate']:.0f}", ms(b["p50"]), ms(b["p99"]),
         f"{cpu[side] * 1e6:.0f}", " ".join(f"{r['rate']:.0f}" for r in runs[side]),
         f"{b['rate'] / best[FLOWER]['rate']:.2f}", f"{b['rate'] / best[HELLO]['rate']:.2f}"]
        for side, b in best.items()
    ]  # fmt: skip
    emit(
        table(
            f"k. Polling a finished task: {connections} connections, {duration:.0f} s per run, best of {rounds} "
            f"rotating rounds ({best[HELLO]['tool']})",
            ["route", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "each round's req/s", "/Flower", "/hello"],
            rows,
        )
    )
    for side in servers:
        if side in (HELLO, FLOWER):
            continue
        where = "" if side == SQLITE else f" on {side}"
        ratio = best[side]["rate"] / best[FLOWER]["rate"]
        results.ratio(f"polling a finished job{where} (ours/{FLOWER} req/s, best round of each)", ratio)
        results.check(f"polling a finished job{where}: ours/{FLOWER} req/s", f"{ratio:.2f}", "(no target)", None)
    results.ratio(f"polling a finished task ({FLOWER}/hello-world req/s)", best[FLOWER]["rate"] / best[HELLO]["rate"])


def _end_to_end_rounds(sides: dict[str, Side], results: Results, *, count: int, clients: int, rounds: int) -> None:
    for side in sides.values():
        _end_to_end(side, clients * 5, clients)  # warm-up: connections, each server's first requests
    measured = _rotating(list(sides), rounds, lambda name: _end_to_end(sides[name], count, clients))
    runs = {side: [elapsed for elapsed, _cpu in got] for side, got in measured.items()}
    best = {side: min(got) for side, got in runs.items()}
    rows = []
    for side, elapsed in best.items():
        name = f"{FLOWER} (solo worker)" if side == FLOWER else f"ours, {side} (one SimpleWorker)"
        ratio = "" if side == FLOWER else f"{best[FLOWER] / elapsed:.2f}"
        each = " ".join(f"{count / e:.0f}" for e in runs[side])
        # CPU per job of each role over all rounds: a count that the machine's load moves far less than time.
        per_job = {key: sum(c[key] for _e, c in measured[side]) / (count * rounds) for key in ROLES + ("polls",)}
        cpu = [per_job[role] for role in ROLES]
        submitted = next(c["submitted"] for e, c in measured[side] if e == elapsed)
        rows.append(
            [name, f"{elapsed:.2f}", f"{submitted:.2f}", f"{count / elapsed:.0f}", each, ratio,
             f"{per_job['polls']:.1f}", *(f"{x * 1e6:.0f}" for x in cpu), f"{sum(cpu) * 1e6:.0f}"]
        )  # fmt: skip
    emit(
        table(
            f"k. End to end: {count} no-op jobs submitted over HTTP by {clients} clients, until each client saw all "
            f"its jobs done over HTTP; best of {rounds} rotating rounds",
            ["side", "seconds", "all submitted at s", "jobs/s", "each round's jobs/s", f"ours/{FLOWER}", "polls/job",
             "API CPU µs/job", "worker CPU µs/job", "Redis CPU µs/job", "all µs/job"],
            rows,
        )
    )  # fmt: skip
    emit(
        "all submitted at: when the last submission of the best round was answered (the rest is the drain's tail).\n"
        "CPU per job: each process's user + system time over all rounds (the clients' own and PostgreSQL's server "
        "processes not counted)."
    )
    for side in sides:
        if side == FLOWER:
            continue
        where = "" if side == SQLITE else f" on {side}"
        ratio = best[FLOWER] / best[side]
        each = sorted(f / o for o, f in zip(runs[side], runs[FLOWER], strict=True))
        results.ratio(f"end to end {count} jobs{where} (ours/{FLOWER} jobs/s, best round of each)", ratio)
        results.ratio(
            f"end to end {count} jobs{where} (ours/{FLOWER}, median of the rounds' ratios)", each[len(each) // 2]
        )
        results.check(
            f"T2 end to end {count} jobs{where}: ours/{FLOWER} jobs/s",
            f"{ratio:.2f}",
            f">= {END_TO_END_TARGET:.2f}",
            ratio >= END_TO_END_TARGET,
        )
    if POSTGRESQL in best:
        results.stores_compared(
            f"end to end {count} jobs jobs/s",
            f"{count / best[SQLITE]:.0f}",
            f"{count / best[POSTGRESQL]:.0f}",
            best[SQLITE] / best[POSTGRESQL],
        )


def run(
    workdir: Workdir,
    results: Results,
    *,
    count: int,
    clients: int,
    e2e_rounds: int,
    connections: int,
    poll_seconds: float,
    poll_rounds: int,
    pg: Postgres | None = None,
) -> None:
    with store_stacks(workdir, "peer", pg) as stacks, celery_flower(workdir, log=emit) as flower:
        sides: dict[str, Side] = {
            store: _Ours(stack, stack.worker("ours", True, burst=False)) for store, stack in stacks.items()
        }
        sides[FLOWER] = flower
        hello = start_hello(stacks[SQLITE].env, workdir)
        try:
            servers: dict[str, tuple[str, Callable[[], list[int]]]] = {
                store: (sides[store].result_url(_finished(sides[store])), stack.api.worker_pids)
                for store, stack in stacks.items()
            }
            servers[FLOWER] = (flower.result_url(_finished(flower)), flower.pids)
            servers[HELLO] = (f"{hello.url}/hello", hello.worker_pids)
            _polling(servers, results, connections=connections, duration=poll_seconds, rounds=poll_rounds)
        finally:
            hello.stop()
        _end_to_end_rounds(sides, results, count=count, clients=clients, rounds=e2e_rounds)
