"""Webhook receivers for the tests: real servers on loopback ports, written once.

``Receiver`` is a well-behaved HTTP(S) server that records each POST and answers it as told
(scripted statuses, held until released, TLS); ``Receivers`` makes them for one test and
closes them all. ``start_raw_receiver`` runs a hostile one in its own process (a huge body,
an answer dripped a byte at a time), where a thread would share the test's memory and GIL;
``one_answer`` sends one request's answer byte for byte (odd or broken HTTP).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """A local HTTP(S) server that records every POST and answers the n-th ``statuses[n]``
    (``then`` past the list), each once ``gates[n]`` (else ``release``) is set.

    Args:
        statuses: the status of each answer, in the order the requests arrived.
        then: the status of every answer past ``statuses``.
        hold: keep each request waiting until its gate (or ``release``) is set; without it,
            ``release`` is set from the start.
        address: the loopback address to listen on (127.0.0.2... are other hosts).
        context: a server-side TLS context: the receiver speaks HTTPS and records the SNI.
    """

    #: Sent with every answer, so that a client following redirects would head to a private
    #: address (the dispatcher must not follow them).
    LOCATION = "http://10.0.0.1/elsewhere"

    def __init__(
        self,
        statuses=(),
        *,
        then: int = 200,
        hold: bool = False,
        address: str = "127.0.0.1",
        context: ssl.SSLContext | None = None,
    ):
        self.statuses = list(statuses)
        self.then = then
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.gates: dict[int, threading.Event] = {}
        #: Each request as {"headers": {lower-case name: value}, "body": bytes}, on arrival.
        self.requests: list[dict] = []
        self.sni: list[str | None] = []
        self.answered = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    index = len(receiver.requests)
                    receiver.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                receiver.gates.get(index, receiver.release).wait(60)
                self.send_response(receiver.statuses[index] if index < len(receiver.statuses) else receiver.then)
                self.send_header("Location", Receiver.LOCATION)
                self.end_headers()
                with receiver._lock:
                    receiver.answered += 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        if context is not None:
            context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.url = f"http://{address}:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def hosts(self) -> list[str]:
        """The Host header of each request."""
        return [request["headers"]["host"] for request in self.requests]

    @property
    def received(self) -> list[str]:
        """The webhook-id header of each request (held ones included)."""
        return [request["headers"].get("webhook-id") for request in self.requests]

    def close(self) -> None:
        """Answer whatever is held, then stop serving."""
        self.release.set()
        for gate in self.gates.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receivers(**defaults) -> Iterator:
    """``make(statuses=(), **options)`` -> a new Receiver (``defaults`` under ``options``);
    every one made is closed on exit."""
    made: list[Receiver] = []

    def make(statuses=(), **options) -> Receiver:
        made.append(Receiver(statuses, **{**defaults, **options}))
        return made[-1]

    try:
        yield make
    finally:
        for receiver in made:
            receiver.close()


# A receiver process: answers every POST as told by its first argument and prints what it
# did, one line per request. "huge": a 200 OK with a 256 MB body (prints how many bytes it
# managed to hand to the kernel before the client went away); "drip": the status line and
# headers one byte every 1.5 s.
RAW_RECEIVER = r"""
import re, socket, sys, time
mode = sys.argv[1]
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    sent = 0
    try:
        if mode == "huge":
            size = 256 * 1024 * 1024
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"x" * (1024 * 1024)
            while sent < size:
                conn.sendall(chunk)
                sent += len(chunk)
        else:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                conn.send(bytes([byte]))
                sent += 1
                time.sleep(1.5)
    except OSError:
        pass
    print(f"sent {sent}", flush=True)
    conn.close()
"""


@contextmanager
def raw_receivers() -> Iterator:
    """``start(mode)`` -> (the receiver process, its port), mode "huge" or "drip"; each read
    its lines with ``process.stdout.readline()``; every one started is killed on exit."""
    started: list[subprocess.Popen] = []

    def start(mode: str) -> tuple[subprocess.Popen, int]:
        process = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, mode], stdout=subprocess.PIPE, text=True)
        started.append(process)
        return process, int(process.stdout.readline())

    try:
        yield start
    finally:
        for process in started:
            process.kill()
            process.wait()


@contextmanager
def one_answer(answer: bytes) -> Iterator[int]:
    """A raw socket on a loopback port (yielded) that answers the first request with exactly
    ``answer``, whatever it is (not HTTP, cut short), then holds the connection 0.5 s."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(answer)
        time.sleep(0.5)
        conn.close()

    threading.Thread(target=answer_once, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
