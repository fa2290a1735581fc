"""A work-horse's Redis connection, connected by the forking parent just before the fork.

Why: after RQ forks a work-horse, redis-py's pool in the horse notices the new process id, drops
what it inherited and builds and connects a connection of its own. That code runs for the first
time in the horse, so every page it writes (its objects, its code's warm-up counters, the
interpreter's caches) is copied on write: ~500 page faults and ~2.5 ms of the ~10 ms a no-op
work-horse costs (profile in /work/coord/NOTES17.md, issue 17). The parent, whose pages are its
own and whose code is warm, builds and connects the same connection in a fraction of that.

The connection is a new one for every work-horse and the parent never sends a byte on it: after
the fork the parent closes its copy of the socket (never ``shutdown``, which would end the
horse's too), and the horse's pool holds it as the one connection it made itself. So the horse
owns it exactly as it would own one it had connected, and RQ's semantics are unchanged. Only
for a plain pool of plain TCP or Unix-socket connections (not Sentinel, SSL, or client-side
caching, whose pools do more per connection); otherwise, or when the connect fails, the horse
connects as RQ's does.
"""

from __future__ import annotations

import contextlib
import logging
import os

from redis import ConnectionPool, Redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_PLAIN = (Connection, UnixDomainSocketConnection)


def _plain(connection_class: type) -> bool:
    """A TCP or Unix-socket connection (this project's subclasses of them too), not TLS."""
    return issubclass(connection_class, _PLAIN) and not issubclass(connection_class, SSLConnection)


def read_driver_info_once(pool: ConnectionPool) -> None:
    """Give ``pool``'s connections redis-py's driver info (its CLIENT SETINFO) read once.

    Why: redis-py 7+ reads its own version from the installed package's metadata (parsing the
    METADATA file) for every new connection: ~0.6 ms of each connect (cProfile, NOTES17), in
    every work-horse. The same info, read once, is what each connection would have read.
    """
    if "driver_info" in pool.connection_kwargs or "lib_version" in pool.connection_kwargs:
        return
    try:
        from redis.driver_info import DriverInfo  # redis-py 7+: older ones read it once at import
    except ImportError:
        return
    pool.connection_kwargs["driver_info"] = DriverInfo()


def prepare(client: Redis):
    """A connected connection of ``client``'s pool for the next work-horse, or None (the horse
    then connects by itself). Called in the parent just before the fork."""
    pool = client.connection_pool
    read_driver_info_once(pool)
    if type(pool) is not ConnectionPool or not _plain(pool.connection_class):
        return None
    if getattr(pool, "cache", None) is not None:
        return None
    try:
        connection = pool.connection_class(**pool.connection_kwargs)
        connection.connect()
    except (RedisError, OSError) as exc:
        # The horse tries again by itself, and meets (and reports) whatever this was.
        log.debug("could not connect a work-horse's Redis connection ahead: %s", exc)
        return None
    return connection


def adopt(client: Redis, connection) -> None:
    """In the work-horse, at once after the fork: its pool starts afresh (as redis-py's own check
    of the process id would make it) with ``connection`` as the one connection it made. Never
    raises: on any surprise the pool is left to start afresh by itself."""
    if connection is None:
        return
    pool = client.connection_pool
    try:
        pool.reset()
        connection.pid = os.getpid()  # this process's now: the pool owns it, its disconnect shuts it down
        pool._available_connections.append(connection)
        pool._created_connections += 1
    except Exception as exc:  # a redis-py whose pool differs: fall back to connecting afresh
        log.warning("work-horse: could not adopt the connection made ahead (%s); connecting afresh", exc)
        pool.pid = -1  # redis-py's check of the process id resets the pool at its next use


def let_go(connection) -> None:
    """In the parent after the fork: close this process's copy of the horse's socket, without the
    ``shutdown`` redis-py sends from the process that connected (it would end the horse's too)."""
    if connection is None:
        return
    connection.pid = -1  # not this process's: disconnect() only closes the file descriptor
    with contextlib.suppress(OSError):
        connection.disconnect()


class ConnectAhead:
    """Mixed in before RQ's ``Worker``: each work-horse gets its Redis connection made ahead
    by the parent (``prepare`` before the fork, ``adopt`` in the horse, ``let_go`` in the parent)."""

    #: The next work-horse's Redis connection, connected ahead by this process, or None.
    _horse_connection = None

    def fork_work_horse(self, job, queue) -> None:
        self._horse_connection = prepare(self.connection)
        try:
            super().fork_work_horse(job, queue)  # the work-horse never returns from it (os._exit)
        finally:
            let_go(self._horse_connection)
            self._horse_connection = None

    def main_work_horse(self, job, queue) -> None:
        adopt(self.connection, self._horse_connection)
        super().main_work_horse(job, queue)
