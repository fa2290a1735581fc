"""List answers bounded in bytes: ``GET /jobs``, ``GET /scheduled-jobs`` and a job's attempts.

A page holds at most ``limit`` rows and stops before the row that would take it past
``max_bytes``; the first row always goes in, so that the cursor moves on however large it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TypeVar

Row = TypeVar("Row")


def encode(value: object) -> bytes:
    """``value`` as compact JSON, as a page holds it."""
    return json.dumps(value, separators=(",", ":")).encode()


def page_parts(
    rows: Iterable[Row],
    encode_row: Callable[[Row], bytes],
    cursor_of: Callable[[Row], str],
    *,
    limit: int,
    max_bytes: int,
) -> tuple[list[bytes], str | None]:
    """The encoded rows of one page, and the cursor of the next (None when none is left).

    ``rows`` may hold one row more than ``limit``: that is how the next page is known to exist.
    """
    parts: list[bytes] = []
    size, last = 0, None
    for row in rows:
        if len(parts) == limit:
            return parts, cursor_of(last)
        part = encode_row(row)
        if parts and size + len(part) > max_bytes:
            return parts, cursor_of(last)
        parts.append(part)
        size += len(part) + 1
        last = row
    return parts, None
