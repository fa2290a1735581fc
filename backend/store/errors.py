"""The store's errors, named so that the layers above catch them without importing SQLAlchemy."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

#: Raised when a write breaks a unique or foreign-key constraint: a second live job under one
#: idempotency key, a schedule's due time fired twice. It is SQLAlchemy's own class (an alias,
#: not a wrapper), so every statement keeps raising what it raised before.
ConstraintViolated = IntegrityError

__all__ = ["ConstraintViolated"]
