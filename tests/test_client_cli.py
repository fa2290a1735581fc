"""The command line (python -m jobservice_client) as a person and a script use it.

In a real terminal: tmux on a private socket runs the command in a pane; the test reads the
screen (capture-pane) while the job runs, sees the progress bar with the task's message, then
the result and the exit code the shell printed. Scripts' use (--json, exit codes, usage errors)
runs as plain subprocesses. The API is ``live_server`` and the workers real, as everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jobservice_client import Client, output
from tests.conftest import ROOT
from tests.test_client_scripted import scripted  # noqa: F401 (a fixture)

pytestmark = pytest.mark.one_pass(reason="the command line over HTTP; the routes it calls are tested on both stores")

TMUX = shutil.which("tmux")
CLI = [sys.executable, "-m", "jobservice_client"]
#: rich's bar is drawn with these (a finished part and the rest).
BAR = re.compile(r"[━╸╺]{5,}")
#: What the shell prints after the command (the typed command shows ``EXIT=$?``, never a digit).
EXITED = re.compile(r"EXIT=\d+")


class Pane:
    """One tmux pane on a private server (``tmux -L <unique>``): type commands, read the screen."""

    def __init__(self, env: dict[str, str]):
        self.socket = f"jobservice-cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        environment = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
        self.tmux("new-session", "-d", "-s", "cli", "-x", "132", "-y", "40", *environment, "bash --norc --noprofile")
        self.run(f"cd {shlex.quote(str(ROOT))} && PS1='$ '")

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def run(self, command: str) -> None:
        self.tmux("send-keys", "-t", "cli", "-l", command)
        self.tmux("send-keys", "-t", "cli", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "cli")

    def wait_for(self, check, timeout: float = 60) -> str:
        """The first screen for which ``check(screen)`` is true (read every 50 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            assert time.monotonic() < deadline, f"not seen in {timeout} s; the screen:\n{screen}"
            time.sleep(0.05)

    def clear(self) -> None:
        self.tmux("send-keys", "-t", "cli", "clear", "Enter")
        self.wait_for(lambda screen: not EXITED.search(screen))
        self.tmux("clear-history", "-t", "cli")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def pane(live_server):
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the terminal tests need it")
    made = Pane({"JOBSERVICE_URL": live_server, "PYTHONUNBUFFERED": "1"})
    yield made
    made.close()


def command(*args: str) -> str:
    return " ".join(shlex.quote(arg) for arg in (*CLI, *args)) + "; echo EXIT=$?"


def test_submit_wait_shows_a_live_progress_bar_then_the_result_and_exits_by_status(
    pane, live_server, start_worker, tmp_path
):
    # Given a worker
    start_worker()

    # When a person starts a job that reports progress, and waits for it
    pane.run(command("submit", "sleep", "--kwargs", '{"seconds": 2, "steps": 4}', "--wait"))

    # Then while it runs the terminal shows a bar with the task's progress message
    running = pane.wait_for(
        lambda s: "PROCESSING" in s and BAR.search(s) and re.search(r"step [1-3] of 4", s) and not EXITED.search(s)
    )
    bar_line = next(line for line in running.splitlines() if "PROCESSING" in line)
    assert BAR.search(bar_line) and re.search(r"\d+%", bar_line) and re.search(r"step [1-3] of 4", bar_line)
    # and then the end, the result and exit code 0 (the finished bar stays above them)
    done = pane.wait_for(EXITED.search)
    # (both screens kept for a person to look at: $CLI_SCREENS, else the test's tmp_path)
    shots = Path(os.environ.get("CLI_SCREENS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    (shots / "submit-wait.txt").write_text(f"-- while it runs --\n{running}\n-- at the end --\n{done}")
    assert "EXIT=0" in done, done
    assert re.search(r"COMPLETED\s+sleep \S+ in \d+\.\d s", done), done
    assert '"slept": 2' in done and "step 4 of 4" in done and "100%" in done

    # When a job fails: its error, and exit code 1
    pane.clear()
    pane.run(
        command("submit", "fail", "--kwargs", '{"message": "the printer is on fire"}', "--max-retries", "0", "--wait")
    )
    failed = pane.wait_for(EXITED.search)
    assert "EXIT=1" in failed and "FAILED" in failed and "the printer is on fire" in failed, failed

    # When a job is cancelled while the terminal waits for it: exit code 2
    pane.clear()
    pane.run(command("submit", "sleep", "--kwargs", '{"seconds": 60, "steps": 120}', "--wait"))
    pane.wait_for(lambda s: re.search(r"step \d+ of 120", s))
    client = Client(live_server)
    (job,) = client.jobs(task="sleep", status="PROCESSING")
    job.cancel()
    cancelled = pane.wait_for(EXITED.search)
    assert "EXIT=2" in cancelled and f"CANCELLED sleep {job.id}" in cancelled, cancelled

    # And the log of a job is followed live until it ends
    pane.clear()
    words = client.submit("summarise_stream", kwargs={"text": "Alpha beta gamma. Delta.", "delay": 0.2})
    pane.run(command("jobs", "logs", words.id, "--follow"))
    followed = pane.wait_for(EXITED.search)
    assert "EXIT=0" in followed and "INFO" in followed and "summary of 4 words ready" in followed, followed


def cli(live_server: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JOBSERVICE_URL": live_server}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_scripts_get_json_and_exit_codes(live_server):
    # A job whose task arguments are named like options: --json prints the job as the API answered
    started = cli(
        live_server, "submit", "echo", "--kwargs", '{"priority": "low", "n": 1}', "--priority", "high", "--json"
    )
    assert started.returncode == 0, started.stderr
    job = json.loads(started.stdout)
    assert (job["status"], job["priority"], job["kwargs"]) == ("QUEUED", "high", {"priority": "low", "n": 1})

    listed = cli(live_server, "jobs", "list", "--task", "echo", "--status", "queued", "--json")
    assert listed.returncode == 0 and [j["job_id"] for j in json.loads(listed.stdout)] == [job["job_id"]]
    by_kwarg = cli(live_server, "jobs", "list", "--kwarg", "n=1", "--kwarg", "priority=low", "--json")
    assert [j["job_id"] for j in json.loads(by_kwarg.stdout)] == [job["job_id"]], by_kwarg.stderr
    assert json.loads(cli(live_server, "jobs", "list", "--kwarg", "n=2", "--json").stdout) == []
    shown = cli(live_server, "jobs", "show", job["job_id"])
    assert shown.returncode == 0 and re.search(r"task\s+echo", shown.stdout) and job["job_id"] in shown.stdout
    table = cli(live_server, "jobs", "list")
    assert table.returncode == 0 and job["job_id"] in table.stdout and "QUEUED" in table.stdout

    cancelled = cli(live_server, "jobs", "cancel", job["job_id"])
    assert cancelled.returncode == 0 and f"cancelled: echo job {job['job_id']} CANCELLED" in cancelled.stdout
    # the service refusing (a second cancel, an unknown job): exit 3, its reason on stderr
    again = cli(live_server, "jobs", "cancel", job["job_id"])
    assert again.returncode == 3 and "HTTP 409" in again.stderr and again.stdout == ""
    assert cli(live_server, "jobs", "show", "no-such-job").returncode == 3


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("submit",), "the following arguments are required: task"),
        (("submit", "sleep", "--kwargs", "{bad"), "not valid JSON"),
        (("submit", "sleep", "--args", '{"a": 1}'), "must be a JSON list"),
        (("jobs", "list", "--limit", "0"), "at least 1"),
        (("jobs", "list", "--kwarg", "document_id"), "NAME=VALUE"),
        (("submit", "echo", "--kwargs", '{"x": NaN}'), "NaN is not JSON"),
        (("submit", "echo", "--args", "[-Infinity]"), "-Infinity is not JSON"),
        (("jobs",), "usage:"),
    ],
)
def test_a_usage_error_exits_2(args, says):
    result = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr, result.stderr


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"Content-Type": "text/html"}, b"<html>a proxy's login page</html>"),
        (301, {"Location": "https://example.invalid/jobs/x"}, b""),
        (307, {"Location": "https://example.invalid/jobs/x"}, b'{"job_id": "x", "status": "COMPLETED"}'),
    ],
    ids=["html-200", "redirect-301", "redirect-307-with-json"],
)
def test_an_answer_that_is_not_the_apis_exits_3_without_a_traceback(scripted, answer):  # noqa: F811
    server = scripted(answer)
    shown = cli(server.url, "jobs", "show", "x")
    assert "Traceback" not in shown.stderr and shown.stdout == "", shown.stderr
    assert shown.returncode == 3, (shown.returncode, shown.stderr[-300:])
    if answer[0] != 200:
        assert "redirects to https://example.invalid/jobs/x" in shown.stderr, shown.stderr


HOSTILE = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b1m\rspoofed"


def test_a_jobs_text_cannot_send_control_sequences_to_the_terminal(live_server, run_burst_worker, capsys):
    # Given a FAILED job whose error (a tenant's text) holds terminal control sequences
    client = Client(live_server)
    job = client.submit("fail", kwargs={"message": HOSTILE}, max_retries=0)
    run_burst_worker()
    assert job.refresh().status == "FAILED"

    # Then no command prints them raw: they show escaped, as text
    for args in (("jobs", "show", job.id), ("jobs", "list"), ("jobs", "wait", job.id)):
        shown = cli(live_server, *args)
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown.stdout), (args, repr(shown.stdout[-400:]))
        if args[1] != "list":  # (the list's NOTE column is folded too narrow in a pipe to read it whole)
            assert "\\x1b[2J" in shown.stdout, (args, shown.stdout)
    # and neither do log lines (written raw to stdout before)
    output.log_line({"at": "2026-01-01T00:00:00Z", "level": "INFO", "attempt": 1, "message": HOSTILE}, False)
    written = capsys.readouterr().out
    assert "\x1b" not in written and "\r" not in written and "\\x1b]0;owned" in written, repr(written)


def test_a_failed_jobs_error_is_not_rewrapped_in_a_pipe(live_server, run_burst_worker):
    # Given a FAILED job with an error longer than a terminal's 80 columns
    message = "E" * 30 + " " + "word " * 30 + "end-of-message"
    job = Client(live_server).submit("fail", kwargs={"message": message}, max_retries=0)
    run_burst_worker()

    # Then a script reading the output of --wait (and of show) finds the error on one line
    for args in (("jobs", "wait", job.id), ("jobs", "show", job.id)):
        ended = cli(live_server, *args)
        assert ended.returncode == (1 if args[1] == "wait" else 0), ended.stderr
        assert f"RuntimeError: {message}" in ended.stdout, ended.stdout


@pytest.fixture
def keyed(settings):
    """An API with one key (set before ``live_server`` builds it)."""
    settings["API_KEYS"] = "alice:alice-key-0123456789abcdef"


def test_the_key_comes_from_jobservice_api_key(keyed, live_server):
    env = {**os.environ, "JOBSERVICE_URL": live_server, "JOBSERVICE_API_KEY": "alice-key-0123456789abcdef"}
    run = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 60}

    with_key = subprocess.run([*CLI, "jobs", "list", "--json"], env=env, **run)
    without = subprocess.run([*CLI, "jobs", "list"], env={**env, "JOBSERVICE_API_KEY": ""}, **run)
    flag = subprocess.run([*CLI, "--api-key", "wrong", "jobs", "list"], env=env, **run)

    assert with_key.returncode == 0 and json.loads(with_key.stdout) == [], with_key.stderr
    assert without.returncode == 3 and "HTTP 401" in without.stderr
    assert flag.returncode == 3 and "unknown API key" in flag.stderr
