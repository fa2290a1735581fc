"""Leadership on PostgreSQL: one holder at a time of a named lock, among every host of a store.

A recurring pass that must not run twice at once (the reconciler's) is led by whoever holds a
PostgreSQL advisory lock, not by a Redis key alone: a Redis failover that loses the key cannot
let a second leader in, since the lock lives in the store of record. The lock is taken with
``pg_try_advisory_xact_lock`` in a transaction that spans the pass, so it works behind pgbouncer
in transaction mode (a session lock could be taken on one server connection and released on
another), and it ends with the transaction: when the holder's connection is cut (its process
exits, its connection is killed), PostgreSQL frees it at once. A holder that hangs (a stopped
process, whose kernel still answers TCP keepalives) or is cut off by the network sends nothing
more, so the server bounds its silence itself: the transaction's
``idle_in_transaction_session_timeout`` ends the session after ``idle_timeout`` seconds without a
statement, and its TCP keepalives and user timeout, set for the session, notice a peer gone while
a statement runs. A live holder keeps its lock through a long step of its pass: a heartbeat thread
touches the connection every third of the timeout (a stopped process stops that thread too). The open transaction
has written nothing and, on READ COMMITTED, holds no snapshot between statements, so it keeps
nothing from vacuum.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

#: The advisory lock key of the reconciler's leadership ("jobsrecn").
RECONCILER_KEY = 0x6A6F6273_7265636E

#: Seconds a leader may go without a statement on its connection before the server ends it.
IDLE_TIMEOUT = 30.0

_TRY = text("SELECT pg_try_advisory_xact_lock(:key)")
_ALIVE = text("SELECT 1")
# set_config(..., true) is SET LOCAL with bind parameters: it lasts for this transaction only, so
# behind pgbouncer in transaction mode it never outlives the pass on a shared server connection.
_BOUND = text(
    "SELECT set_config('idle_in_transaction_session_timeout', :idle_ms, true),"
    " set_config('tcp_keepalives_idle', :probe_s, true),"
    " set_config('tcp_keepalives_interval', :probe_s, true),"
    " set_config('tcp_keepalives_count', '3', true),"
    " set_config('tcp_user_timeout', :idle_ms, true)"
)


def supported(engine: Engine) -> bool:
    """Whether ``engine``'s database keeps leadership itself (PostgreSQL); SQLite does not."""
    return engine.dialect.name == "postgresql"


class Leader:
    """The holder's side of a lock taken by ``lead``: ``holds`` says whether it still leads.

    A heartbeat thread touches the connection every ``beat`` seconds, so that a step of the pass
    longer than the idle timeout does not end a live leader's lock; ``holds`` and the heartbeat
    take turns on the connection, which is not safe to share between threads.
    """

    def __init__(self, connection: Connection, key: int, *, beat: float):
        self._connection = connection
        self.key = key
        self._lost = False
        self._turn = threading.Lock()
        self._stopped = threading.Event()
        self._beat = beat
        self._heart = threading.Thread(target=self._keep, name=f"leader-{key:#x}", daemon=True)
        self._heart.start()

    def holds(self) -> bool:
        """Whether the lock is still this holder's (one round trip on its connection).

        The lock ends only with its transaction, so the transaction still answering proves it
        held; a killed connection or an aborted transaction means another may lead by now.
        """
        with self._turn:
            return self._touch()

    def _touch(self) -> bool:
        if self._lost or self._stopped.is_set():
            return not self._lost
        try:
            self._connection.execute(_ALIVE)
        except DBAPIError as exc:
            log.warning("leadership %#x lost: its connection failed (%s)", self.key, exc.__class__.__name__)
            self._lost = True
        return not self._lost

    def _keep(self) -> None:
        while not self._stopped.wait(self._beat):
            with self._turn:
                if not self._touch():
                    return

    def stop(self) -> None:
        """End the heartbeat; the connection is the caller's again once this returns."""
        with self._turn:
            self._stopped.set()
        self._heart.join()


@contextmanager
def lead(engine: Engine, key: int, *, idle_timeout: float = IDLE_TIMEOUT) -> Iterator[Leader | None]:
    """Hold the advisory lock ``key`` for the block; yields None when another holder has it.

    Args:
        idle_timeout: seconds without a statement on the holder's connection after which the
            server ends its session, and the lock with it (the leader's heartbeat touches it
            three times as often); also about how long a peer gone mid-statement keeps it.

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    idle_ms = str(max(1, round(idle_timeout * 1000)))
    # Keepalive probes every third of the timeout, three unanswered ones end the session.
    probe_s = str(max(1, round(idle_timeout / 3)))
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(_BOUND, {"idle_ms": idle_ms, "probe_s": probe_s})
            if not connection.execute(_TRY, {"key": key}).scalar_one():
                yield None
                return
            leader = Leader(connection, key, beat=idle_timeout / 3)
            try:
                yield leader
            finally:
                leader.stop()
        finally:
            # Rolling back ends the transaction and with it the lock; a connection that died
            # has lost both already (the pool discards it).
            with suppress(DBAPIError):
                transaction.rollback()
