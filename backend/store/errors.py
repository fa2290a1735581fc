"""The store's errors, named so that the layers above catch them without importing SQLAlchemy."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

#: Raised when a write breaks a unique or foreign-key constraint: a second live job under one
#: idempotency key, a schedule's due time fired twice. It is SQLAlchemy's own class (an alias,
#: not a wrapper), so every statement keeps raising what it raised before.
ConstraintViolated = IntegrityError

#: Raised when a row read in this transaction was deleted by another before this one wrote it.
RowVanished = StaleDataError

#: Raised when the store cannot be reached or is locked: a pass that meets it tries again later.
StoreUnavailable = OperationalError

#: Raised by the database driver for any failed statement (the store down, busy or refusing).
StoreError = DBAPIError

__all__ = ["ConstraintViolated", "RowVanished", "StoreError", "StoreUnavailable"]
