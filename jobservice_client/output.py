"""What the command line prints: for people a live progress bar, tables and coloured ends (rich);
for scripts (``--json``) plain JSON on stdout and nothing else there.

Text that comes from a job (its progress message, error, log lines) is never read as rich markup:
a message holding ``[red]`` shows as typed, and cannot restyle or hide the rest of the screen.
Nor does it reach the terminal with control characters (``printable``): a tenant's error holding
ESC sequences could clear the operator's screen, retitle the window or fake output lines.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

#: Results, tables and JSON go to stdout; the live bar and errors to stderr, so that
#: ``... --wait > result.txt`` still shows the bar and keeps the file clean.
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

STYLES = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow", "PROCESSING": "cyan"}
#: C0 controls (but tab and newline), DEL and C1 controls, each shown as its ``\xNN`` escape.
CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code not in (0x09, 0x0A)}


def printable(value) -> str:
    """``value`` as text that only prints: control characters (ESC, CR, BEL, CSI ...) escaped."""
    return str(value).translate(CONTROLS)


class ProgressBar:
    """A job's live bar: status, bar, percent, its progress message, time elapsed; kept on screen
    after the end. Only drawn on a terminal (stderr): a pipe gets just the result."""

    def __init__(self, job):
        self.job = job
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[status]:<10}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.description}", markup=False),
            TimeElapsedColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        self.task = None

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        self.task = self.progress.add_task(_message(self.job), total=100, completed=0, status=self.job.status)
        self.update(self.job)
        return self

    def update(self, job) -> None:
        done = 100 if job.status == "COMPLETED" else job.progress
        self.progress.update(self.task, completed=done, description=_message(job), status=job.status)

    def __exit__(self, *exc) -> None:
        self.update(self.job)
        self.progress.stop()


def _message(job) -> str:
    """What the bar says beside it: the task's progress message, else why the job waits."""
    if job.progress_message:
        return printable(job.progress_message)
    if job.waiting_reason:
        return printable(f"waiting: {job.waiting_reason}")
    return printable(f"{job.task} {job.id}")


def ended(job, as_json: bool) -> None:
    """A job's end: its JSON, or a line saying how it ended and then its result or error."""
    if as_json:
        print_json(job.data)
        return
    took = _duration(job.data.get("started_at"), job.data.get("completed_at"))
    head = f"[{STYLES.get(job.status, 'bold')}]{job.status}[/] {_text(job.task)} {_text(job.id)}{took}"
    if job.status == "COMPLETED":
        out.print(head)
        out.print_json(json.dumps(job.result))
    elif job.status == "FAILED":
        out.print(head)
        _error_text(job.error or "(no error recorded)")
    else:
        by = job.data.get("cancelled_by")
        out.print(head + (f" (by {_text(by)})" if by else ""))


def job_line(job, as_json: bool, *, verb: str) -> None:
    if as_json:
        print_json(job.data)
        return
    style = STYLES.get(job.status, "bold")
    out.print(f"{verb}: {_text(job.task)} job {_text(job.id)} [{style}]{_text(job.status)}[/]")


def job_table(jobs: list, as_json: bool) -> None:
    if as_json:
        print_json([job.data for job in jobs])
        return
    if not jobs:
        err.print("no jobs match")
        return
    table = Table(box=None, header_style="bold")
    for name in ("ID", "TASK", "STATUS", "PROGRESS", "CREATED", "NOTE"):
        table.add_column(name, no_wrap=name in ("ID", "STATUS", "CREATED"), overflow="fold")
    for job in jobs:
        note = (job.error or "").strip().splitlines()[-1:] or [job.progress_message or job.waiting_reason or ""]
        table.add_row(
            _text(job.id),
            _text(job.task),
            f"[{STYLES.get(job.status, 'default')}]{_text(job.status)}[/]",
            f"{job.progress}%",
            _text((job.data.get("created_at") or "").replace("T", " ").removesuffix("Z")),
            _text(note[0][:120]),
        )
    out.print(table)


def job_detail(job, as_json: bool) -> None:
    if as_json:
        print_json(job.data)
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in job.data.items():
        if value is None or value == [] or name == "error":
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        table.add_row(_text(name), _text(text))
    out.print(table)
    if job.error:
        out.print("[bold]error[/]")
        _error_text(job.error)


def log_line(line: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(line) + "\n")
        return
    at = (line.get("at") or "").replace("T", " ").removesuffix("Z")
    text = f"{at} {line.get('level', ''):<7} #{line.get('attempt')} {line.get('message', '')}"
    sys.stdout.write(printable(text) + "\n")


def error(exc, url: str) -> None:
    """A refused or failed request, on stderr."""
    if exc.status is None:
        err.print(f"error: cannot reach the job service at {_text(url)} ({_text(exc.message)})", soft_wrap=True)
        return
    text = f"error: {_text(exc.message)} (HTTP {exc.status} {_text(exc.code)})"
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        text += f"; try again in {retry_after:g} s"
    err.print(text, soft_wrap=True)


def _text(value) -> str:
    """A job's value inside rich markup: printable, and its brackets not read as markup."""
    return escape(printable(value if value is not None else ""))


def _error_text(text: str) -> None:
    """A job's error as it was raised: not read as markup, and not re-wrapped at 80 columns
    when stdout is a pipe (a script greps for the whole line); the terminal wraps it instead."""
    out.print(printable(text), markup=False, soft_wrap=True)


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _duration(started: str | None, ended: str | None) -> str:
    if not started or not ended:
        return ""
    try:
        seconds = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return ""
    return f" in {seconds:.1f} s"
