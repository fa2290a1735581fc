"""Slow clients cannot starve the API: a real slowloris of raw sockets against the shipped
serving stack (gunicorn with backend/gunicorn_conf.py behind nginx with
deploy/nginx/jobservice.conf), and, as the control, against gunicorn alone."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from backend.dev import processes
from backend.dev.redis_server import free_port
from tests.conftest import ROOT
from tests.gunicorn_api import served_api

pytestmark = pytest.mark.one_pass(store="postgres", reason="gunicorn and nginx against slow clients")

NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx)")

MAX_CONTENT_LENGTH = 1048576
# How long a real request may take while the slowloris runs: a functional deadline (a starved
# server never answers), far above what an answer takes.
ANSWER_WITHIN = 5.0


@pytest.fixture
def gunicorn(settings, tmp_path) -> Iterator[str]:
    """The API under gunicorn with the shipped configuration (2 processes x 4 threads)."""
    with served_api(settings, tmp_path / "gunicorn.log") as url:
        yield url


def render_nginx_conf(upstream: str, listen: str, streams_upstream: str | None = None) -> str:
    """deploy/nginx/jobservice.conf with its four values filled in, as envsubst would."""
    text = (ROOT / "deploy/nginx/jobservice.conf").read_text()
    for name, value in (
        ("JOBSERVICE_UPSTREAM", upstream),
        ("JOBSERVICE_STREAMS_UPSTREAM", streams_upstream or upstream),
        ("JOBSERVICE_LISTEN", listen),
        ("MAX_CONTENT_LENGTH", str(MAX_CONTENT_LENGTH)),
    ):
        text = text.replace("${" + name + "}", value)
    assert "${" not in text
    return text


def start_nginx(upstream: str, prefix, worker_connections: int = 4096, streams: str | None = None) -> subprocess.Popen:
    """nginx with the shipped server block in front of ``upstream``, its files under ``prefix``;
    waits until it answers."""
    port = free_port()
    for sub in ("temp", "conf.d"):
        (prefix / sub).mkdir(parents=True)
    (prefix / "conf.d/jobservice.conf").write_text(
        render_nginx_conf(
            upstream.removeprefix("http://"), f"127.0.0.1:{port}", streams and streams.removeprefix("http://")
        )
    )
    # The main file is the distribution's part (nginx.conf of the image or the host); only its
    # paths and worker_connections are this test's. The server block under test is included
    # unchanged.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""
        {user}
        daemon off;
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections {worker_connections}; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/temp/body;
            proxy_temp_path {prefix}/temp/proxy;
            fastcgi_temp_path {prefix}/temp/fastcgi;
            uwsgi_temp_path {prefix}/temp/uwsgi;
            scgi_temp_path {prefix}/temp/scgi;
            include {prefix}/conf.d/*.conf;
        }}
        """
    )
    command = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        processes.wait_for_http(f"{process.url}/openapi.json", process=process)  # type: ignore[attr-defined]
    except BaseException:
        processes.stop(process)
        raise
    return process


@pytest.fixture
def nginx(gunicorn, tmp_path) -> Iterator[str]:
    """nginx with the shipped server block in front of ``gunicorn``, on a free port."""
    process = start_nginx(gunicorn, tmp_path / "nginx")
    try:
        yield process.url  # type: ignore[attr-defined]
    finally:
        processes.stop(process)


class Slowloris:
    """Hundreds of raw sockets that never finish a request: some send part of a request line,
    some part of the headers, some whole headers and then a body a byte at a time, some
    nothing at all; every second each one that talks sends one more byte."""

    def __init__(self, url: str, *, partial_lines: int = 100, partial_headers: int = 200, slow_bodies: int = 30,
                 idle: int = 50, source: str | None = None):  # fmt: skip
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        # The client's own address (another loopback address stands for another client)
        self.source = (source, 0) if source else None
        self.talking: list[socket.socket] = []
        self.idle: list[socket.socket] = []
        self.stopped = threading.Event()
        openings = (
            [b"GET /ta"] * partial_lines
            + [b"GET /tasks HTTP/1.1\r\nHost: localhost\r\nX-Slow: "] * partial_headers
            + [
                b"POST /tasks/add HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            ]
            * slow_bodies
        )
        for number, opening in enumerate(openings):
            sock = socket.create_connection(self.address, timeout=5, source_address=self.source)
            # The server may refuse this one (and close it) at once: that is its right.
            with contextlib.suppress(OSError):
                sock.sendall(opening)
            self.talking.append(sock)
            if number % 10 == 9:
                # Spread over about a second: gunicorn's processes race to accept, and one
                # that the scheduler keeps off the CPU for a burst would get none of them.
                time.sleep(0.03)
        for _ in range(idle):
            self.idle.append(socket.create_connection(self.address, timeout=5, source_address=self.source))
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stopped.wait(1.0):
            for sock in self.talking:
                # The server may have given up on this one: that is its right.
                with contextlib.suppress(OSError):
                    sock.send(b"a")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for sock in self.talking + self.idle:
            sock.close()


@needs_nginx
def test_hundreds_of_slow_connections_do_not_starve_the_api_behind_nginx(nginx):
    # Given 380 connections to the shipped nginx that never finish (slow request lines,
    # slow headers, slow bodies, silence)
    attack = Slowloris(nginx)
    try:
        time.sleep(2)  # several drips: every one of them is being held open by now

        # When real clients ask for the task list and submit a job
        answers = [requests.get(f"{nginx}/tasks", timeout=ANSWER_WITHIN) for _ in range(5)]
        submitted = requests.post(f"{nginx}/tasks/add", json={"args": [1, 2]}, timeout=ANSWER_WITHIN)

        # Then they are answered
        assert [answer.status_code for answer in answers] == [200] * 5
        assert "add" in answers[0].text
        assert submitted.status_code == 202, submitted.text
    finally:
        attack.close()


def ask(url: str, path: str = "/tasks", *, headers: dict | None = None, source: str | None = None,
        timeout: float = ANSWER_WITHIN) -> tuple[int, str, str]:  # fmt: skip
    """GET ``path`` exactly as given (no Host or other header but ``headers``) from ``source``:
    (status, Content-Type, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(
        host, int(port), timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": "localhost", **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read().decode(errors="replace")
    finally:
        connection.close()


@needs_nginx
def test_one_address_cannot_take_every_connection_of_nginx(gunicorn, tmp_path):
    # Given the shipped server block in an nginx of 512 connections (the images' nginx.conf
    # has 1024: the test needs fewer sockets to use them all)
    process = start_nginx(gunicorn, tmp_path / "nginx", worker_connections=512)
    url = process.url  # type: ignore[attr-defined]
    try:
        # and one client, 127.0.0.1, holding 600 requests whose bodies drip a byte a second
        attack = Slowloris(url, partial_lines=0, partial_headers=0, slow_bodies=600, idle=0)
        try:
            time.sleep(2)

            # When another client, 127.0.0.2, asks for the task list
            status, _, body = ask(url, source="127.0.0.2")

            # Then it is answered (it timed out: all 512 were the first client's)
            assert status == 200, body
            assert "add" in body

            # And the first client's requests beyond its share are refused, in the API's format
            status, content_type, body = ask(url, source="127.0.0.1")
            assert (status, content_type) == (429, "application/json"), body
            assert json.loads(body)["error"]["code"] == "too_many_requests"
        finally:
            attack.close()
    finally:
        processes.stop(process)


@needs_nginx
def test_requests_too_large_for_nginx_get_json_and_others_reach_the_api(nginx):
    # A header of 12 KB, a request line of 9 KB: refused by nginx, in the API's format
    status, content_type, body = ask(nginx, headers={"X-Big": "a" * 12_000})
    assert (status, content_type) == (431, "application/json"), body
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    status, content_type, body = ask(nginx, "/jobs?q=" + "a" * 9_000)
    assert (status, content_type) == (414, "application/json"), body
    assert json.loads(body)["error"]["code"] == "uri_too_long"

    # A query of 700 parameters and 150 headers are within nginx's limits: gunicorn takes them
    # too (it answered 414 and 400 in HTML), and the API answers
    status, content_type, body = ask(nginx, "/tasks?" + "&".join(f"p{number}=1" for number in range(700)))
    assert content_type == "application/json", (status, body)
    status, content_type, body = ask(nginx, headers={f"X-Header-{number}": "1" for number in range(150)})
    assert (status, content_type) == (200, "application/json"), body

    # Around each limit, whoever answers, it is JSON: a request line (with "GET " and
    # " HTTP/1.1") of 8,180 to 8,200 bytes, a header line of 8,180 to 8,200 bytes
    for length in range(8180, 8201):
        path = "/tasks?q=" + "a" * (length - len("GET /tasks?q= HTTP/1.1"))
        status, content_type, body = ask(nginx, path)
        assert content_type == "application/json", (length, status, body)
        value = "a" * (length - len("X-Pad: "))
        status, content_type, body = ask(nginx, headers={"X-Pad": value})
        assert content_type == "application/json", (length, status, body)

    # Not HTTP at all: nginx's 400, as JSON
    host, port = nginx.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 400"), answer
    assert '"code": "bad_request"' in answer and "application/json" in answer


def test_the_same_slowloris_starves_gunicorn_alone(gunicorn):
    # The control: what the proxy is for. gunicorn's 2 x 4 threads each wait on a slow client.
    attack = Slowloris(gunicorn)
    try:
        time.sleep(2)
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(f"{gunicorn}/tasks", timeout=ANSWER_WITHIN)
    finally:
        attack.close()


@needs_nginx
def test_nginx_answers_the_api_json_413_and_drops_a_forged_client_address(nginx):
    # A body over MAX_CONTENT_LENGTH never reaches gunicorn: the API's own error format
    too_big = requests.post(
        f"{nginx}/tasks/add",
        data=b'{"args": ["' + b"x" * (MAX_CONTENT_LENGTH + 1) + b'"]}',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_entity_too_large"

    # nginx overwrites X-Forwarded-For with the address it saw (loopback here), so a client
    # cannot name its own address to the API: a loopback client stays served without keys
    answer = requests.get(f"{nginx}/tasks", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=ANSWER_WITHIN)
    assert answer.status_code == 200, answer.text


def test_the_sidecar_does_not_make_internet_clients_loopback(client):
    # Behind nginx in the same pod (or host), every request comes from 127.0.0.1; without API
    # keys the API serves loopback clients only, so it must go by what nginx forwarded
    behind_proxy = {"REMOTE_ADDR": "127.0.0.1"}
    internet = client.get("/jobs", headers={"X-Forwarded-For": "203.0.113.7"}, environ_base=behind_proxy)
    assert internet.status_code == 403, internet.get_json()
    assert internet.get_json()["error"]["code"] == "forbidden"

    # A local client with no proxy in between is still served
    assert client.get("/jobs", environ_base=behind_proxy).status_code == 200

    # And a client that reaches gunicorn directly cannot claim to be loopback
    forged = client.get("/jobs", headers={"X-Forwarded-For": "127.0.0.1"}, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert forged.status_code == 403


def test_forwarded_for_is_read_from_the_right_past_trusted_proxies():
    from backend.api.forwarded import TrustedProxies, parse_networks

    proxies = TrustedProxies(None, parse_networks("127.0.0.1,::1,10.0.0.0/8"))
    assert proxies.client("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    assert proxies.client("127.0.0.1", "127.0.0.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert proxies.client("::ffff:127.0.0.1", "203.0.113.7") == "203.0.113.7"
    assert proxies.client("127.0.0.1", "not-an-address") == "0.0.0.0"
    assert proxies.client("198.51.100.1", "127.0.0.1") is None
    assert proxies.client("127.0.0.1", None) is None
    assert parse_networks("none") == ()
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        parse_networks("proxy.example")
