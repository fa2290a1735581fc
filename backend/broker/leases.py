"""Worker leases (how the service knows, within seconds, that a worker is dead) and the
reconciler's lock.

RQ's own worker heartbeat lives for ``job_monitoring_interval + 60`` s (and a SimpleWorker's
for the whole job timeout), so a SIGKILLed worker looks alive for minutes. Each of our
workers instead keeps a short lease key alive from a thread in its main process; when the
process dies, the key expires after ``WORKER_LEASE_SECONDS`` and the reconciler acts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

log = logging.getLogger(__name__)

LEASE_PREFIX = "jobservice:lease:"
#: Seconds between a keeper's tries while Redis does not answer (at most a renewal interval).
RETRY_SECONDS = 0.5


def lease_key(worker_name: str) -> str:
    return f"{LEASE_PREFIX}{worker_name}"


def alive(connection: Redis, names: Iterable[str]) -> set[str]:
    """The workers among ``names`` that hold a lease (one round trip)."""
    names = sorted({name for name in names if name})
    if not names:
        return set()
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(lease_key(name))
        found = pipe.execute()
    return {name for name, exists in zip(names, found, strict=True) if exists}


def all_alive(connection: Redis) -> set[str]:
    """Every worker that holds a lease now."""
    return {
        key.decode().removeprefix(LEASE_PREFIX) for key in connection.scan_iter(match=f"{LEASE_PREFIX}*", count=500)
    }


class HeldLock:
    """A lock taken by ``exclusive``, renewed from a daemon thread until the block ends.

    ``holds`` renews it now and says whether it is still this holder's: a holder stops acting
    once it is not (a Redis failover that lost the key, or a stall longer than its TTL).
    """

    def __init__(self, lock: Lock, seconds: float):
        self._lock = lock
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._keeper = threading.Thread(target=self._keep, args=(seconds / 3,), name=f"lock-{lock.name}", daemon=True)

    def holds(self) -> bool:
        """Renew the lock's TTL if it is still this holder's; False (for good) once it is not."""
        if not self._lost.is_set():
            try:
                self._lock.reacquire()
            except LockError:
                log.warning("lock %s lost: another holder has it, or it expired", self._lock.name)
                self._lost.set()
            except RedisError as exc:
                log.warning("lock %s not renewed: %s", self._lock.name, exc)
                self._lost.set()
        return not self._lost.is_set()

    def _keep(self, interval: float) -> None:
        while not self._stopped.wait(interval) and self.holds():
            pass

    def start(self) -> None:
        """Start renewing (``exclusive`` does, once the lock is taken)."""
        self._keeper.start()

    def stop(self) -> None:
        """Stop renewing; the lock itself is released by ``exclusive``."""
        self._stopped.set()
        self._keeper.join(timeout=5)


@contextlib.contextmanager
def exclusive(connection: Redis, key: str, *, token: str, seconds: float) -> Iterator[HeldLock | None]:
    """Hold ``key`` as a lock shared by every process for the block; yields None when another
    holder has it.

    The lock is renewed every third of ``seconds`` while the block runs (``HeldLock``), so a
    block longer than ``seconds`` keeps it; a holder killed mid-block keeps the others out for
    at most ``seconds``. A lock that this ``token`` left behind (Redis died mid-block and came
    back from its AOF) is still its own and is taken back. Releasing is best-effort.
    """
    # Not thread-local: the keeper thread renews the token that this thread took.
    lock = connection.lock(key, timeout=seconds, blocking=False, thread_local=False)
    if not lock.acquire(token=token):
        if connection.get(key) != token.encode():
            yield None
            return
        lock.local.token = token.encode()
        lock.reacquire()
    held = HeldLock(lock, seconds)
    held.start()
    try:
        yield held
    finally:
        held.stop()
        with contextlib.suppress(LockError, RedisError):
            lock.release()


class LeaseKeeper:
    """Keeps ``worker_name``'s lease alive from a daemon thread until ``stop``."""

    def __init__(self, connection: Redis, worker_name: str, ttl: float):
        self.connection = connection
        self.worker_name = worker_name
        self.ttl_ms = max(1000, int(ttl * 1000))
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{worker_name}", daemon=True)

    def claim(self) -> bool:
        """Take the lease; False when another live process holds this name."""
        return bool(self.connection.set(lease_key(self.worker_name), "1", px=self.ttl_ms, nx=True))

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        interval = self.ttl_ms / 1000 / 3
        wait, failing = interval, False
        while not self._stopped.wait(wait):
            try:
                # SET, not EXPIRE: it also puts back a lease that a failover or a restart lost.
                self.connection.set(lease_key(self.worker_name), "1", px=self.ttl_ms)
                wait, failing = interval, False
            except RedisError as exc:
                if not failing:
                    log.warning("worker %s: lease not renewed: %s", self.worker_name, exc)
                # Redis is down or failing over: try again soon, so that the lease is back within
                # moments of Redis answering, well before the reconciler counts a lease missing
                # for half its period as a dead worker (a whole interval could be too late).
                wait, failing = min(interval, RETRY_SECONDS), True

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(RedisError):
            self.connection.delete(lease_key(self.worker_name))
