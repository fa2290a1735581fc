"""A work-horse's Redis connection, connected by the forking parent just before the fork.

Why: after RQ forks a work-horse, redis-py's pool in the horse notices the new process id, drops
what it inherited and builds and connects a connection of its own. That code runs for the first
time in the horse, so every page it writes (its objects, its code's warm-up counters, the
interpreter's caches) is copied on write: ~500 page faults and ~2.5 ms of the ~10 ms a no-op
work-horse costs (issue 17's profile, measured per stage of the horse). The parent, whose pages are its
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
import time

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
    METADATA file) for every new connection: ~0.6 ms of each connect (cProfile, issue 17), in
    every work-horse. The same info, read once, is what each connection would have read.
    """
    if {"driver_info", "lib_name", "lib_version"} & pool.connection_kwargs.keys():
        return  # set by whoever made the pool: theirs stands
    try:
        from redis.driver_info import DriverInfo  # redis-py 7+: older ones read it once at import
    except ImportError:
        return
    pool.connection_kwargs["driver_info"] = DriverInfo()


def prepare(client: Redis):
    """A connected connection of ``client``'s pool for the next work-horse, or None (the horse
    then connects by itself). Called in the parent just before the fork."""
    pool = client.connection_pool
    if type(pool) is not ConnectionPool or not _plain(pool.connection_class):
        return None
    if getattr(pool, "cache", None) is not None:
        return None
    read_driver_info_once(pool)
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
    by the parent (``prepare`` before the fork, ``adopt`` in the horse, ``let_go`` in the parent).

    While jobs keep coming, the parent makes several at once (up to ``AHEAD``): every write the
    parent makes after a fork faults too, and the connect code's pages are faulted in once for
    the batch instead of once per job (0.57 ms and 334 faults for one connection, 0.23 ms and 45
    each for eight; issue 17). A spare older than ``FRESH_SECONDS`` is closed unused: a work-horse
    never gets a connection much older than one it would have made itself. This process's copies
    of the connections it handed to work-horses are closed with the next batch (or at RQ's
    teardown), for the same reason: at most ``AHEAD`` of them stay open meanwhile, and this
    process never sends on them.
    """

    #: The most connections made ahead at once.
    AHEAD = 8
    #: Spares made longer ago than this are closed, not handed to a work-horse.
    FRESH_SECONDS = 2.0
    #: The next work-horse's Redis connection, connected ahead by this process, or None.
    _horse_connection = None
    _spares: list | None = None
    #: This process's copies of the connections handed to work-horses, closed with the next batch.
    _handed: list | None = None
    _spares_made_at = 0.0
    _batch = 1

    def fork_work_horse(self, job, queue) -> None:
        connection = self._horse_connection = self._connection_ahead()
        try:
            super().fork_work_horse(job, queue)  # the work-horse never returns from it (os._exit)
        finally:
            self._horse_connection = None
            if connection is not None:
                self._handed.append(connection)

    def main_work_horse(self, job, queue) -> None:
        # The parent's spares stay untouched here: dropping them would run their close code in
        # this process (its pages copied on write); os._exit closes their descriptors.
        adopt(self.connection, self._horse_connection)
        super().main_work_horse(job, queue)

    def _connection_ahead(self):
        if self._spares is None:
            self._spares, self._handed = [], []
        if self._spares and time.monotonic() - self._spares_made_at > self.FRESH_SECONDS:
            self._close_spares()
            self._batch = 1  # jobs come slowly: one at a time
        if not self._spares:
            self._let_go_handed()
            self._spares_made_at = time.monotonic()
            for _ in range(self._batch):
                connection = prepare(self.connection)
                if connection is None:
                    break
                self._spares.append(connection)
            self._batch = min(self.AHEAD, 2 * self._batch)  # all used while fresh: more next time
        return self._spares.pop() if self._spares else None

    def _close_spares(self) -> None:
        for connection in self._spares or ():
            with contextlib.suppress(OSError):
                connection.disconnect()  # never handed to a work-horse: this process's own
        self._spares = []

    def _let_go_handed(self) -> None:
        for connection in self._handed or ():
            let_go(connection)
        self._handed = []

    def teardown(self) -> None:
        if not self.is_horse:
            self._close_spares()
            self._let_go_handed()
        super().teardown()
