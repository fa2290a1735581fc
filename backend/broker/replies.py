"""Redis's replies as text: the broker's connections may or may not decode (``decode_responses``),
and a script may answer a number, so every reader of a reply goes through ``text``."""

from __future__ import annotations


def text(value: bytes | str | int) -> str:
    """A reply as ``str`` (bytes decoded as UTF-8, undecodable bytes replaced; a number in decimal)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else str(value)
