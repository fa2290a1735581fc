"""The faults a scenario injects: SIGKILL a worker (and its work-horse), only a work-horse,
Redis or the API; SIGTERM a worker. Each kill is recorded with the jobs it interrupted."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time

import requests
from redis.exceptions import RedisError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from tests.chaos.processes import Kill, WorkerProc, children_of


class Faults:
    """Mixed into ``Cluster`` (it uses the cluster's ``redis``, ``api_process``, ``rconn``,
    ``api``, ``kills`` and ``executions()``): kept apart so the stack's start and stop read
    on their own."""

    def kill_redis(self) -> None:
        """SIGKILL Redis (its AOF keeps what was fsynced)."""
        assert self.redis is not None
        os.kill(self.redis.process.pid, signal.SIGKILL)
        self.redis.process.wait(timeout=10)

    def replace_redis_with_empty(self) -> float:
        """SIGKILL Redis, delete its data (the AOF too) and start an empty one on the same port:
        a managed Redis that came back without its data. Returns the time of the kill."""
        assert self.redis is not None
        at = time.time()
        self.kill_redis()
        shutil.rmtree(self.redis.data_dir)
        self.start_redis()
        return at

    def kill_api(self) -> None:
        """SIGKILL the API process."""
        assert self.api_process is not None
        os.kill(self.api_process.pid, signal.SIGKILL)
        self.api_process.wait(timeout=10)

    def kill_worker(self, worker: WorkerProc, *, horse: bool = True) -> Kill:
        """SIGKILL a worker's main process (and, with ``horse``, its work-horse child)."""
        horses = children_of(worker.pid)
        inflight_before = self.inflight_on(worker)
        at = time.time()
        os.kill(worker.pid, signal.SIGKILL)
        if horse:
            for pid in horses:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        worker.killed_at = at
        worker.process.wait(timeout=10)
        inflight = {**self.held_by(worker.name), **inflight_before, **self.inflight_on(worker, before=at)}
        kill = Kill(at=at, worker=worker.name, pid=worker.pid, horses=horses if horse else [], inflight=inflight)
        self.kills.append(kill)
        return kill

    def kill_horse(self, worker: WorkerProc, job_id: str) -> Kill:
        """SIGKILL only the work-horse (the forked child) running ``job_id`` on ``worker``."""
        runs = [r for r in self.executions() if r.job_id == job_id and r.ppid == worker.pid and r.ended is None]
        assert runs, f"no running execution of {job_id} under worker {worker.name} (pid {worker.pid})"
        run = runs[-1]
        at = time.time()
        os.kill(run.pid, signal.SIGKILL)
        kill = Kill(at=at, worker=worker.name, pid=run.pid, horses=[run.pid], inflight={job_id: run.attempt})
        self.kills.append(kill)
        return kill

    def held_by(self, worker_name: str) -> dict[str, int]:
        """Jobs that RQ's started registries or the store say ``worker_name`` holds (best effort)."""
        held: dict[str, int] = {}
        with contextlib.suppress(RedisError, ValueError):
            for queue in ("high", "default", "low"):
                ids = [entry.decode().split(":", 1)[0] for entry in self.rconn.zrange(f"rq:wip:{queue}", 0, -1)]
                for rq_job in RQJob.fetch_many(ids, connection=self.rconn, serializer=JSONSerializer):
                    if rq_job is not None and rq_job.worker_name == worker_name and "job_id" in (rq_job.meta or {}):
                        held[rq_job.meta["job_id"]] = int(rq_job.meta["attempt"])
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            response = self.api.get("/jobs?status=PROCESSING&limit=500", timeout=5)
            for job in response.json()["jobs"]:
                if job.get("worker") == worker_name:
                    held.setdefault(job["job_id"], job["attempt"])
        return held

    def inflight_on(self, worker: WorkerProc, *, before: float | None = None) -> dict[str, int]:
        """Executions of ``worker``'s process (or its horses) started and not ended (by ``before``)."""
        running: dict[str, int] = {}
        for run in self.executions():
            if worker.pid not in (run.pid, run.ppid):
                continue
            if before is not None and run.started > before:
                continue
            if run.ended is None or (before is not None and run.ended > before):
                running[run.job_id] = run.attempt
        return running

    def stop_worker(self, worker: WorkerProc, timeout: float = 30) -> int:
        """SIGTERM (warm shutdown) and wait."""
        if worker.alive():
            worker.process.send_signal(signal.SIGTERM)
        return worker.process.wait(timeout=timeout)
