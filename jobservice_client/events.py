"""A reader of Server-Sent Events (``text/event-stream``), as ``GET /jobs/<id>/events`` sends them.

Written here rather than taken from a package so the client needs nothing beyond ``requests``.
It follows the WHATWG parsing rules the server's frames rely on (``id``/``event``/``data`` fields,
comment lines, CR, LF or CRLF line ends, a blank line ends an event) and holds at most
``max_event_bytes`` of one event: a stream that never ends its event cannot grow memory.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: One event's cap: the server's largest is an `end` frame (a job with a result up to its size
#: cap, 1 MiB by default, as JSON); well past that something is wrong with the stream.
MAX_EVENT_BYTES = 8 * 1024 * 1024
#: How much to ask the socket for at once; read1 returns whatever has arrived, up to this.
READ_SIZE = 16 * 1024


class StreamError(Exception):
    """The stream is not one this reader can follow (an event over the cap)."""


@dataclass(frozen=True)
class Event:
    """One event: ``id`` (the last id the stream set, for Last-Event-ID), ``kind``, ``data`` (text)."""

    id: str | None
    kind: str
    data: str

    def json(self):
        """``data`` decoded as JSON (the server's events all carry JSON)."""
        return json.loads(self.data)


class Parser:
    """Turns the stream's bytes, fed as they arrive, into events."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_event_bytes
        self._text = ""
        self._scanned = 0  # characters of _text known to hold no line end (a long line, arriving)
        self._held = 0  # characters of the event in progress (data lines and the partial line)
        self._data: list[str] = []
        self._kind = ""
        self.last_id: str | None = None
        #: The reconnection delay the server asked for (``retry:``), in milliseconds.
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes, in order.

        Raises:
            StreamError: one event (or one line) grew past ``max_event_bytes``.
        """
        self._text += self._decoder.decode(chunk)
        events = []
        while True:
            end = _line_end(self._text, self._scanned)
            if end is None:
                self._scanned = max(0, len(self._text) - 1)  # a CR last may yet be a CRLF
                break
            start, after = end
            line, self._text, self._scanned = self._text[:start], self._text[after:], 0
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._held + len(self._text) > self._max:
            raise StreamError(f"an event of the stream is over {self._max} characters")
        return events

    def close(self) -> list[Event]:
        """The events a CR at the very end of the stream completes (it could not be told from
        the start of a CRLF until the stream ended); an event cut off by the end is dropped."""
        return self.feed(b"\n") if self._text.endswith("\r") else []

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._held += len(value) + 1
        elif name == "event":
            self._kind = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind = self._data, self._kind or "message"
        self._data, self._kind, self._held = [], "", 0
        if not data:
            return None  # a frame without data (a lone `retry:`) is no event
        return Event(self.last_id, kind, "\n".join(data))


def _line_end(text: str, start: int) -> tuple[int, int] | None:
    """Where the first line of ``text`` ends (its end, the next line's start), looking from
    ``start`` on; None if it has not ended yet."""
    lf, cr = text.find("\n", start), text.find("\r", start)
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, lf + 1
    if cr + 1 == len(text):
        return None  # a CR last: wait for the next chunk, it may be a CRLF
    return cr, cr + 2 if text[cr + 1] == "\n" else cr + 1


def read_events(
    response, parser: Parser | None = None, *, read_timeout: Callable[[], float] | None = None
) -> Iterator[Event]:
    """The events of a streamed ``requests`` response, each as soon as its frame has arrived.

    ``read1`` hands over whatever bytes are there (``iter_content`` with a size would wait for
    that many, holding back a short event); urllib3 1.x has no ``read1``: its chunk stream then.
    ``read_timeout()``, asked before every read, bounds that read (0: stop reading). Why: the
    server's keep-alive comments make no event, so a caller's deadline checked between events
    would wait as long as the stream stays up; checked per read, it ends the wait on time.

    Raises:
        StreamError: an event over the cap.
        requests.RequestException, OSError, urllib3's errors: the connection failed or timed out.
    """
    parser = parser or Parser()
    raw = response.raw
    if hasattr(raw, "read1"):
        sock = _socket(raw) if read_timeout is not None else None
        while True:
            if read_timeout is not None:
                seconds = read_timeout()
                if seconds <= 0:
                    return
                if sock is not None:
                    sock.settimeout(seconds)
            chunk = raw.read1(READ_SIZE)
            if not chunk:
                break
            yield from parser.feed(chunk)
    else:  # pragma: no cover - urllib3 1.x
        for chunk in response.iter_content(chunk_size=None):
            yield from parser.feed(chunk)
    yield from parser.close()


def _socket(raw):
    """The socket a urllib3 2.x response reads from, or None (then the connection's read timeout,
    set when it opened, bounds each read). The response's file holds it even once the connection
    handed it over (``Connection: close``); urllib3 names neither publicly."""
    sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    sock = sock or getattr(getattr(raw, "connection", None), "sock", None)
    return sock if hasattr(sock, "settimeout") else None
