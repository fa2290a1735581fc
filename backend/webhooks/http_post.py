"""One webhook POST: to a checked address, within a total deadline, reading a few KiB back.

Written on a plain socket rather than ``requests`` because each of these needs control of the
socket that ``requests`` does not give:

- the connection goes to an address that ``backend.webhooks.ssrf`` checked (no second DNS lookup),
  while the Host header, TLS SNI and certificate check use the URL's host name;
- every blocking step (connect, TLS handshake, each send, each read) waits only for what is
  left of one deadline for the whole delivery, so a receiver that drips a byte at a time
  cannot hold a delivery past it (a per-read timeout restarts with every byte);
- only the status line is needed: at most ``RESPONSE_READ_LIMIT`` bytes of the answer are
  read, then the connection is closed, whatever the receiver still sends.
"""

from __future__ import annotations

import re
import socket
import ssl
import time

from backend.webhooks.ssrf import WebhookTarget

#: Most bytes of a receiver's answer ever read (the status line must fit in them).
RESPONSE_READ_LIMIT = 4096
_SEND_CHUNK = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")


class DeliveryError(Exception):
    """The POST did not get a status code; the message says why (recorded with the attempt)."""


class DeadlineExceeded(DeliveryError):
    pass


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self, step: str) -> float:
        """Seconds left for ``step``; raises once none are."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{step} deadline exceeded after {self.seconds:g} s")
        return left


def post(
    target: WebhookTarget,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    started: float | None = None,
) -> int:
    """POST ``body`` to ``target`` and return the response's status code.

    ``timeout`` bounds the whole exchange, counted from ``started`` (a ``time.monotonic()``
    value; now when not given), so time spent resolving the name counts too.

    Raises:
        DeliveryError: no status code within the deadline, in the first
            ``RESPONSE_READ_LIMIT`` bytes, or the connection failed (``DeadlineExceeded``
            when the deadline ran out).
    """
    deadline = _Deadline(timeout)
    if started is not None:
        deadline.ends = started + timeout
    sock = _connect(target, deadline, ssl_context)
    step = "send"
    try:
        _send(sock, _request(target, body, headers), deadline)
        step = "response"
        return _read_status(sock, deadline)
    except TimeoutError:
        raise DeadlineExceeded(f"{step} deadline exceeded after {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS error: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"connection to {target.host_header} failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        sock.close()


def _connect(target: WebhookTarget, deadline: _Deadline, ssl_context: ssl.SSLContext | None) -> socket.socket:
    failures = []
    for address in target.addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.left("connect"))
            sock.connect((address, target.port))
            if target.scheme == "https":
                context = ssl_context or _default_context()
                # The certificate is checked against the URL's host name, not the address.
                sock = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
                sock.settimeout(deadline.left("TLS handshake"))
                sock.do_handshake()
            return sock
        except TimeoutError:
            sock.close()
            raise DeadlineExceeded(f"connect deadline exceeded after {deadline.seconds:g} s") from None
        except ssl.SSLError as exc:
            sock.close()
            raise DeliveryError(f"TLS error: {exc}") from None
        except DeliveryError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            failures.append(f"{address}: {exc.strerror or exc}")
    raise DeliveryError(f"connection to {target.host_header} failed ({'; '.join(failures)})")


_DEFAULT_CONTEXT: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    """The system's trust store, loaded once (wrapping sockets with it is thread-safe)."""
    global _DEFAULT_CONTEXT
    if _DEFAULT_CONTEXT is None:
        _DEFAULT_CONTEXT = ssl.create_default_context()
    return _DEFAULT_CONTEXT


def _request(target: WebhookTarget, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {target.request_target} HTTP/1.1",
        f"Host: {target.host_header}",
        "User-Agent: jobservice-webhooks",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            raise DeliveryError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _send(sock: socket.socket, data: bytes, deadline: _Deadline) -> None:
    # One send() at a time, each waiting only for what is left of the deadline (sendall would
    # give each TLS record the whole timeout again).
    view = memoryview(data)
    while view:
        sock.settimeout(deadline.left("send"))
        view = view[sock.send(view[:_SEND_CHUNK]) :]


def _read_status(sock: socket.socket, deadline: _Deadline) -> int:
    """The status code of the (final) response, from at most RESPONSE_READ_LIMIT bytes."""
    buffer = b""
    read = 0
    while True:
        match = _STATUS_LINE.match(buffer)
        if match:
            status = int(match.group(1))
            if status >= 200:
                return status
            # An interim answer (100 Continue, 103 Early Hints): skip it and its headers.
            end = buffer.find(b"\r\n\r\n")
            if end != -1:
                buffer = buffer[end + 4 :]
                continue
        elif b"\n" in buffer or (len(buffer) >= 7 and not buffer.startswith(b"HTTP/1.")):
            first_line = buffer.split(b"\n", 1)[0][:60]
            raise DeliveryError(f"the answer is not an HTTP/1 status line: {first_line!r}")
        if read >= RESPONSE_READ_LIMIT:
            raise DeliveryError(f"no final status line in the first {RESPONSE_READ_LIMIT} bytes of the answer")
        sock.settimeout(deadline.left("response"))
        chunk = sock.recv(RESPONSE_READ_LIMIT - read)
        if not chunk:
            raise DeliveryError("the receiver closed the connection before answering")
        read += len(chunk)
        buffer += chunk
