"""Page cursors of the list answers (``GET /jobs``, ``GET /scheduled-jobs``): the last row's
``created_at`` in microseconds since the epoch, a dot, and its id.

Every string of this form is a valid cursor, so ``/openapi.json`` can state it exactly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from backend.core.errors import ValidationFailed

CURSOR_PATTERN = r"^[0-9]{1,17}\.[A-Za-z0-9_-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(row) -> str:
    """The cursor of the page after ``row`` (anything with ``created_at`` and ``id``)."""
    created_at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return f"{(created_at - _EPOCH) // timedelta(microseconds=1)}.{row.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``created_at`` and id a cursor names.

    Raises:
        ValidationFailed: not a cursor of this form.
    """
    # re.match and $ as a JSON Schema validator reads the pattern (a final newline passes).
    match = _CURSOR.match(cursor)
    if match is None:
        raise ValidationFailed(f"cursor is not one this API gave out, got {cursor[:100]!r}")
    micros, _, row_id = match.group(0).partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), row_id
