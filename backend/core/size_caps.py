"""Size caps on what requests make the service store: a job's arguments, a task's result, an
attempt's error text and a progress message.

One module measures them for both sides of the worker -> API reports, so a value one side
accepts the other accepts too. The API refuses what is over a cap (413 at submission, 422 in a
report); a worker fails an attempt whose result is over its cap (it is retried like any
failure), keeps the tail of a long error and shortens a long progress message before
reporting. Workers start with the caps of their own settings and adopt the API's from every
answer to their reports, so a worker configured apart from the API still agrees with it.

Sizes are those of compact UTF-8 JSON (no spaces, non-ASCII characters as themselves): the
size of the value, not of how one client happened to encode it. This module imports no web
framework: workers use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from backend.core.errors import ValidationFailed
from backend.core.settings import Settings

_ERROR_NOTE = "[error truncated: its first {dropped} bytes were dropped; the end is kept]\n"
_MESSAGE_MARK = "…"
# The caps' settings in the order of SizeCaps' fields.
_CAP_SETTINGS = ("MAX_ARGS_BYTES", "MAX_RESULT_BYTES", "MAX_ERROR_BYTES", "MAX_PROGRESS_MESSAGE")


class TooLarge(ValidationFailed):
    """Raised when a submission's arguments are over their cap (413: nothing is recorded)."""

    status = 413
    code = "too_large"


@dataclass(frozen=True)
class SizeCaps:
    """The four caps, named in messages by their settings."""

    args_bytes: int = 64 * 1024
    result_bytes: int = 256 * 1024
    error_bytes: int = 16 * 1024
    progress_message: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> SizeCaps:
        return cls(
            args_bytes=settings.max_args_bytes,
            result_bytes=settings.max_result_bytes,
            error_bytes=settings.max_error_bytes,
            progress_message=settings.max_progress_message,
        )

    def as_settings(self) -> dict[str, int]:
        """The caps under their settings' names, as the API tells workers."""
        return {
            "MAX_ARGS_BYTES": self.args_bytes,
            "MAX_RESULT_BYTES": self.result_bytes,
            "MAX_ERROR_BYTES": self.error_bytes,
            "MAX_PROGRESS_MESSAGE": self.progress_message,
        }

    def adopt(self, announced: object) -> SizeCaps:
        """These caps updated with those an API announced; unreadable values are ignored
        (an older API announces none)."""
        if not isinstance(announced, dict):
            return self
        mine = self.as_settings()
        for name in mine:
            value = announced.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                mine[name] = value
        return SizeCaps(*(mine[name] for name in _CAP_SETTINGS))

    # -- checks -----------------------------------------------------------------------------

    def arguments_problem(self, args: object, kwargs: object) -> str | None:
        """What is wrong with a job's arguments' size, or None when they fit."""
        size = json_size(args) + json_size(kwargs)
        return _over("the arguments (args and kwargs)", size, "MAX_ARGS_BYTES", self.args_bytes)

    def result_problem(self, result: object) -> str | None:
        """Why ``result`` cannot be a task's result (not JSON, or over the cap), or None."""
        try:
            size = json_size(result)
        except (TypeError, ValueError, RecursionError) as exc:
            return f"ResultNotJSON: the task returned a value that is not JSON ({exc})"
        problem = _over("the result", size, "MAX_RESULT_BYTES", self.result_bytes)
        return f"ResultTooLarge: {problem}" if problem else None

    def error_problem(self, error: str) -> str | None:
        return _over("the error", text_size(error), "MAX_ERROR_BYTES", self.error_bytes)

    def message_problem(self, message: str) -> str | None:
        if len(message) <= self.progress_message:
            return None
        return (
            f"the progress message is {len(message):,} characters, "
            f"over MAX_PROGRESS_MESSAGE of {self.progress_message:,} characters"
        )

    # -- shortening (worker side) -------------------------------------------------------------

    def shorten_error(self, error: str) -> str:
        """``error`` within the cap: its tail (where a traceback names the fault), marked as cut."""
        size = text_size(error)
        if size <= self.error_bytes:
            return error
        raw = error.encode("utf-8", "surrogatepass")
        # The note's length depends on the number in it: reserve room for the largest.
        note_bytes = len(_ERROR_NOTE.format(dropped=size).encode())
        if self.error_bytes <= 2 * note_bytes:  # a cap too small to spend on the note
            return raw[-self.error_bytes :].decode("utf-8", "ignore")
        # A cut through a multi-byte character drops the rest of that character.
        kept = raw[-(self.error_bytes - note_bytes) :].decode("utf-8", "ignore")
        return _ERROR_NOTE.format(dropped=size - text_size(kept)) + kept

    def shorten_message(self, message: str) -> str:
        """``message`` within the cap: its beginning, with a mark that it was cut."""
        if len(message) <= self.progress_message:
            return message
        return message[: max(self.progress_message - len(_MESSAGE_MARK), 0)] + _MESSAGE_MARK


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON.

    Raises:
        TypeError, ValueError: ``value`` is not JSON (NaN and Infinity included).
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text_size(text)


def text_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counted as three, not an error)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def describe(size: int) -> str:
    """A size for people: bytes, and KiB from 1 KiB on."""
    if size < 1024:
        return f"{size:,} bytes"
    kib = size / 1024
    return f"{kib:,.0f} KiB" if kib == int(kib) else f"{kib:,.1f} KiB ({size:,} bytes)"


def _over(what: str, size: int, setting: str, cap: int) -> str | None:
    if size <= cap:
        return None
    return f"{what} is {describe(size)}, over {setting} of {describe(cap)}"
