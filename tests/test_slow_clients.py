"""Slow clients cannot starve the API: a real slowloris of raw sockets against the shipped
serving stack (gunicorn with backend/gunicorn_conf.py behind nginx with
deploy/nginx/jobservice.conf), and, as the control, against gunicorn alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from backend import processes
from backend.redis_server import free_port
from tests.conftest import ROOT, TASK_MODULES, TOKEN

NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx)")

MAX_CONTENT_LENGTH = 1048576
# How long a real request may take while the slowloris runs: a functional deadline (a starved
# server never answers), far above what an answer takes.
ANSWER_WITHIN = 5.0


@pytest.fixture
def gunicorn(settings, tmp_path) -> Iterator[str]:
    """The API under gunicorn with the shipped configuration (2 processes x 4 threads)."""
    port = free_port()
    env = dict(
        os.environ,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        REDIS_URL=settings["REDIS_URL"],
        DATABASE_URL=settings["DATABASE_URL"],
        INTERNAL_SERVICE_TOKEN=TOKEN,
        TASK_MODULES=TASK_MODULES,
        RECONCILE_INTERVAL="0",
        WEBHOOK_INTERVAL="0",
        RATE_LIMIT_ENABLED="0",
        LOG_LEVEL="WARNING",
    )
    for name in ("API_KEYS", "GUNICORN_WORKERS", "GUNICORN_THREADS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    with open(tmp_path / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_http(f"{url}/openapi.json", process=process)
        yield url
    finally:
        processes.stop(process)


def render_nginx_conf(upstream: str, listen: str) -> str:
    """deploy/nginx/jobservice.conf with its three values filled in, as envsubst would."""
    text = (ROOT / "deploy/nginx/jobservice.conf").read_text()
    for name, value in (
        ("JOBSERVICE_UPSTREAM", upstream),
        ("JOBSERVICE_LISTEN", listen),
        ("MAX_CONTENT_LENGTH", str(MAX_CONTENT_LENGTH)),
    ):
        text = text.replace("${" + name + "}", value)
    assert "${" not in text
    return text


@pytest.fixture
def nginx(gunicorn, tmp_path) -> Iterator[str]:
    """nginx with the shipped server block in front of ``gunicorn``, on a free port."""
    port = free_port()
    prefix = tmp_path / "nginx"
    for sub in ("temp", "conf.d"):
        (prefix / sub).mkdir(parents=True)
    (prefix / "conf.d/jobservice.conf").write_text(
        render_nginx_conf(gunicorn.removeprefix("http://"), f"127.0.0.1:{port}")
    )
    # The main file is the distribution's part (nginx.conf of the image or the host); only its
    # paths are this test's. The server block under test is included unchanged.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""
        {user}
        daemon off;
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 4096; }}
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
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for_http(f"{url}/openapi.json", process=process)
        yield url
    finally:
        processes.stop(process)


class Slowloris:
    """Hundreds of raw sockets that never finish a request: some send part of a request line,
    some part of the headers, some whole headers and then a body a byte at a time, some
    nothing at all; every second each one that talks sends one more byte."""

    def __init__(self, url: str, *, partial_lines: int = 100, partial_headers: int = 200, slow_bodies: int = 30,
                 idle: int = 50):  # fmt: skip
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
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
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(opening)
            self.talking.append(sock)
            if number % 10 == 9:
                # Spread over about a second: gunicorn's processes race to accept, and one
                # that the scheduler keeps off the CPU for a burst would get none of them.
                time.sleep(0.03)
        for _ in range(idle):
            self.idle.append(socket.create_connection(self.address, timeout=5))
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
    from backend.forwarded import TrustedProxies, parse_networks

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
