"""The store's errors, named so that the layers above catch them without importing SQLAlchemy."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError

#: Raised when a write breaks a unique or foreign-key constraint: a second live job under one
#: idempotency key, a schedule's due time fired twice. It is SQLAlchemy's own class (an alias,
#: not a wrapper), so every statement keeps raising what it raised before.
ConstraintViolated = IntegrityError

#: Raised when a row read in this transaction was deleted by another before this one wrote it.
RowVanished = StaleDataError

#: Raised when the store cannot be reached, went away or is busy; a tuple, for ``except``. The
#: driver's OperationalError covers a refused or timed-out connection, a server shutting down or
#: restarting (PostgreSQL's 57P01 admin_shutdown, 57P03 cannot_connect_now), a connection lost
#: mid-statement, deadlocks and SQLite's "database is locked"; InterfaceError a connection the
#: driver already closed; PoolTimeout no pooled connection free within DB_POOL_TIMEOUT (every
#: one stuck connecting to a server that does not answer). A request meeting one answers 503,
#: a periodic pass tries again later.
StoreUnavailable: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)

#: Raised by the database driver for any failed statement (the store down, busy or refusing).
StoreError = DBAPIError

#: Raised when the database refuses a value the request carried: a NUL character (0x00) in a
#: PostgreSQL text column (SQLite keeps it), a number out of its column's range, a string longer
#: than its column. Bad input, not an outage: the API answers 400.
ValueRefused = DataError


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store is down or busy (try again later) rather than a bug: one of
    ``StoreUnavailable``, or any driver error SQLAlchemy recognised as a lost connection."""
    return isinstance(exc, StoreUnavailable) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


__all__ = ["ConstraintViolated", "RowVanished", "StoreError", "StoreUnavailable", "ValueRefused", "is_unavailable"]
