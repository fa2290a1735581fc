"""One run's channels besides its result: progress and output events, captured log lines and
checkpoints, wired into the task's ``JobContext`` (``backend/tasks/context.py``).

- Events go straight to the job's Redis stream (``backend/broker/events.py``), best effort: a
  Redis error is logged once per job and swallowed, and appends pause for a few seconds after
  one (a task emitting tokens must not wait for a socket timeout on each).
- Log lines: while the task runs, a root ``logging`` handler captures the records of its level
  and above that the task's own thread logs, from any logger but the worker runtime's own (RQ,
  the reporter, Redis and HTTP clients), plus ``current_job().log()`` lines. Records of other
  threads are never a job's (a thread an earlier job left behind would leak its lines into
  whichever job runs now). Lines are buffered and flushed every ``FLUSH_SECONDS`` and at the
  run's end (which waits for a flush under way), as ``log`` reports first (the reporter's batch,
  or a forked work-horse's own post) and then ``log`` events, all of one flush in one Redis
  round trip. Per attempt, at most MAX_LOG_LINES_PER_JOB lines or MAX_LOG_BYTES_PER_JOB bytes
  are sent, and the first line past them, which the store replaces by its "[log cut: ...]"
  marker; so the buffer is bounded too.
- Checkpoints: synchronous calls through ``CheckpointClient``.

A task that uses none of these costs no Redis round trip and no HTTP call: everything here
happens only when the task reports, emits, logs or checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from datetime import UTC, datetime

from backend.broker.errors import BrokerError
from backend.broker.events import EventLog
from backend.core.long_tasks import (
    LOG_LEVELS,
    MAX_LOG_BYTES_PER_JOB,
    MAX_LOG_LINE_BYTES,
    MAX_LOG_LINES_PER_JOB,
    MAX_LOG_LINES_PER_REPORT,
)
from backend.core.protocol import LogLine
from backend.core.size_caps import text_size
from backend.runner.checkpoints import CheckpointClient
from backend.runner.reporter import Reporter
from backend.tasks.context import JobCancelled, JobContext
from backend.tasks.registry import task_for_path

log = logging.getLogger(__name__)

#: How often a run's captured lines are sent while it runs.
FLUSH_SECONDS = 0.5
#: After a failed append, events are dropped (not tried) for this long.
EVENTS_PAUSE_SECONDS = 5.0
#: The worker runtime's own loggers: their records are the worker's log, never a job's.
RUNTIME_LOGGERS = ("rq", "backend.runner", "backend.broker", "urllib3", "requests", "redis")
_LINE_MARK = "…"
#: The most JSON bytes of lines one ``log`` report carries (well under MAX_CONTENT_LENGTH's 1 MiB).
REPORT_BYTES = 256 * 1024


def level_name(levelno: int) -> str:
    """The LOG_LEVELS name of a record's level (a custom level counts as the standard one below)."""
    for name in reversed(LOG_LEVELS):
        if levelno >= logging.getLevelName(name):
            return name
    return "DEBUG"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shorten_line(message: str) -> str:
    """``message`` within MAX_LOG_LINE_BYTES: its beginning, marked as cut."""
    if text_size(message) <= MAX_LOG_LINE_BYTES:
        return message
    room = MAX_LOG_LINE_BYTES - len(_LINE_MARK.encode())
    return message.encode("utf-8", "replace")[:room].decode("utf-8", "ignore") + _LINE_MARK


def report_chunks(lines: list[LogLine]) -> list[list[LogLine]]:
    """``lines`` in reports of at most MAX_LOG_LINES_PER_REPORT lines and REPORT_BYTES of JSON: a
    line of control characters or non-ASCII text grows up to six times as JSON, and a report over
    the API's MAX_CONTENT_LENGTH would be refused whole."""
    chunks: list[list[LogLine]] = []
    size = 0
    for line in lines:
        line_size = len(json.dumps(line.message)) + 64  # + its time, level and the keys
        if not chunks or len(chunks[-1]) >= MAX_LOG_LINES_PER_REPORT or size + line_size > REPORT_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += line_size
    return chunks


class EventSender:
    """Best-effort appends to jobs' event streams: one per worker process, shared by its runs."""

    def __init__(self, connection, *, history: int = 500, ttl: int = 3600):
        self._log = EventLog(connection, history=history, ttl=ttl)
        self._paused_until = 0.0
        self._warned: str | None = None

    def append(self, job_id: str, kind: str, data_json: str) -> None:
        if self._paused_until and time.monotonic() < self._paused_until:
            return
        try:
            self._log.append(job_id, kind, _utf8(data_json))
        except BrokerError as exc:
            self._failed(job_id, kind, exc)
        else:
            self._paused_until = 0.0

    def append_many(self, job_id: str, events: list[tuple[str, str]]) -> None:
        """``append`` of each (kind, data json) pair, in order, in one Redis round trip."""
        if not events or self._paused_until and time.monotonic() < self._paused_until:
            return
        try:
            self._log.append_many(job_id, [(kind, _utf8(data_json)) for kind, data_json in events])
        except BrokerError as exc:
            self._failed(job_id, events[0][0], exc)
        else:
            self._paused_until = 0.0

    def _failed(self, job_id: str, kind: str, exc: Exception) -> None:
        self._paused_until = time.monotonic() + EVENTS_PAUSE_SECONDS
        if self._warned != job_id:  # once per job: a task emitting tokens would flood the log
            self._warned = job_id
            log.warning("job %s: %s event not sent, Redis failed (%s); events paused %.0f s", job_id, kind,
                        exc, EVENTS_PAUSE_SECONDS)  # fmt: skip


def _utf8(data_json: str) -> str:
    """A lone surrogate (a file name decoded with surrogateescape) is no UTF-8: Redis' client would
    raise on it, so it is sent as "?"."""
    return data_json if data_json.isascii() else data_json.encode("utf-8", "replace").decode("utf-8")


class RunLog:
    """One run's captured lines: capped, buffered, flushed every FLUSH_SECONDS and at the end."""

    def __init__(self, job_id: str, attempt: int, reporter: Reporter, events: EventSender):
        self.job_id, self.attempt = job_id, attempt
        self._reporter, self._events = reporter, events
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._buffer: list[LogLine] = []
        self._timer: threading.Timer | None = None
        self.lines = self.bytes = self.dropped = 0
        self._full = False

    def add(self, at: float, level: str, message: str) -> None:
        message = shorten_line(message)
        size = text_size(message)
        with self._lock:
            if self._full:
                self.dropped += 1
                return
            if self.lines >= MAX_LOG_LINES_PER_JOB or self.bytes + size > MAX_LOG_BYTES_PER_JOB:
                # The first line past either cap is still sent: the store, over the same caps, puts
                # its "[log cut: ...]" marker in its place. Nothing more is sent for this attempt.
                self._full = True
            self.lines += 1
            self.bytes += size
            self._buffer.append(LogLine(at, level, message))
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_SECONDS, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Send what is buffered: the reports first (the record), then the ``log`` events (the
        live copy) in one Redis round trip."""
        with self._sending:  # one flush at a time keeps the lines in order
            with self._lock:
                lines, self._buffer = self._buffer, []
                self._timer = None
            for chunk in report_chunks(lines):
                self._reporter.log_lines(self.job_id, self.attempt, chunk)
            events = []
            for line in lines:
                data = {"at": iso(line.at), "level": line.level, "message": line.message, "attempt": self.attempt}
                events.append(("log", json.dumps(data, separators=(",", ":"), ensure_ascii=False)))
            self._events.append_many(self.job_id, events)

    def close(self) -> None:
        """Send what is left, after waiting for a flush under way: the timer's flush may have taken
        the last lines and be sending them, and a work-horse exits (os._exit) once this returns."""
        if not self.lines:
            return  # nothing was ever logged: no flush to wait for
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()  # waits on ``_sending`` for the timer's flush, then sends the rest
        if self.dropped:
            log.info("job %s attempt %s: %d log lines over the per-job caps were not sent", self.job_id,
                     self.attempt, self.dropped)  # fmt: skip


class _Capture(logging.Handler):
    """The root handler of the running task: its records of its level and above become lines.

    One per process, pointed at each run's log in turn (a handler made and dropped per job costs
    more than the job's other bookkeeping here)."""

    def __init__(self):
        super().__init__()
        self.run_log: RunLog | None = None
        #: The thread running the task: only its records are the task's lines.
        self.thread: int | None = None
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if any(name == prefix or name.startswith(prefix + ".") for prefix in RUNTIME_LOGGERS):
            return
        run_log = self.run_log
        if run_log is None or getattr(self._inside, "active", False):
            return  # between runs, or a record logged while capturing one (never loops)
        if threading.get_ident() != self.thread:
            # Not the task's own thread: one an earlier job left behind (an SDK's background
            # thread, a pool, a timer) would otherwise write into this job's log, another
            # tenant's maybe. Handlers run in the logging thread, so its ident is the record's.
            return
        self._inside.active = True
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            run_log.add(record.created, level_name(record.levelno), message)
        except Exception:  # a task's logging must never fail the task
            pass
        finally:
            self._inside.active = False


_capture: _Capture | None = None


def capture_handler() -> _Capture:
    """This process's one capture handler, made at its first use (a forking worker's parent makes
    it with its first run's context, so that no work-horse builds one of its own)."""
    global _capture
    if _capture is None:
        _capture = _Capture()
    return _capture


def start_capture(run_log: RunLog, level: int) -> tuple:
    """Capture the records of ``level`` and above into ``run_log`` until ``stop_capture``.

    When the task's level is below the root logger's, the root is lowered for the run, and the
    worker's own handlers are raised to the root's old level: they print what they printed.
    (Only then is the root's level touched: setting it clears every logger's level cache.)
    """
    handler = capture_handler()
    root = logging.getLogger()
    old_level = root.level
    raised = []
    lowered = level < root.getEffectiveLevel()
    if lowered:
        for existing in root.handlers:
            if existing.level < root.getEffectiveLevel():
                raised.append((existing, existing.level))
                existing.setLevel(root.getEffectiveLevel())
        root.setLevel(level)
    handler.setLevel(level)
    handler.thread = threading.get_ident()  # start_capture runs in the task's thread
    handler.run_log = run_log
    root.addHandler(handler)
    return handler, (old_level, raised) if lowered else None


def stop_capture(started: tuple) -> None:
    handler, lowered = started
    root = logging.getLogger()
    root.removeHandler(handler)
    handler.run_log = None
    handler.thread = None
    if lowered is not None:
        old_level, raised = lowered
        root.setLevel(old_level)
        for existing, previous in raised:
            existing.setLevel(previous)


@contextlib.contextmanager
def capturing(run_log: RunLog, level: int):
    """``start_capture`` .. ``stop_capture`` around a block."""
    started = start_capture(run_log, level)
    try:
        yield
    finally:
        stop_capture(started)


class RunIO:
    """The runtime side of one run's ``JobContext`` (``backend.tasks.context.TaskIO``)."""

    def __init__(
        self,
        job_id: str,
        attempt: int,
        *,
        reporter: Reporter,
        events: EventSender,
        checkpoints: CheckpointClient,
        log_level: str = "INFO",
    ):
        self.job_id, self.attempt = job_id, attempt
        self.level = logging.getLevelName(log_level)
        self._reporter, self._events, self._checkpoints = reporter, events, checkpoints
        self.run_log = RunLog(job_id, attempt, reporter, events)
        self._attempt_json = f',"attempt":{int(attempt)}}}'

    def progress(self, percent: int, message: str | None) -> bool:
        """The context's progress: a coalesced report, and a ``progress`` event on every call."""
        if not self._reporter.progress(self.job_id, self.attempt, percent, message):
            return False
        if message is not None:
            message = self._reporter.caps.shorten_message(message)
        data = json.dumps({"progress": percent, "message": message}, separators=(",", ":"), ensure_ascii=False)
        self._events.append(self.job_id, "progress", data)
        return True

    def emit(self, data_json: str) -> None:
        self._events.append(self.job_id, "output", '{"data":' + data_json + self._attempt_json)

    def log(self, level: str, message: str, at: float) -> None:
        if logging.getLevelName(level) >= self.level:
            self.run_log.add(at, level, message)

    def load_checkpoint(self) -> object:
        with self._refusals():
            return self._checkpoints.load(self.job_id, self.attempt)

    def save_checkpoint(self, state: object) -> None:
        with self._refusals():
            self._checkpoints.save(self.job_id, self.attempt, state)

    @contextlib.contextmanager
    def _refusals(self):
        try:
            yield
        except JobCancelled:
            # As a refused progress report: the worker reports nothing more of this attempt.
            self._reporter.refused.add((self.job_id, self.attempt))
            raise

    def finish(self) -> None:
        """At the run's end, before its outcome is reported: its last lines and progress."""
        self.run_log.close()
        self._reporter.finish_progress()

    def call(self, perform):
        """The task's own call: its logging captured, then what it left sent."""
        started = start_capture(self.run_log, self.level)
        try:
            return perform()
        finally:
            stop_capture(started)
            self.finish()


class RunServices:
    """What every run of one worker process shares: its event sender and checkpoint client."""

    def __init__(self, events: EventSender, checkpoints: CheckpointClient):
        self.events, self.checkpoints = events, checkpoints

    def context(self, job, job_id: str, attempt: int, reporter: Reporter) -> JobContext:
        """The context of one run of the RQ job ``job``; its task's call is wrapped to capture
        its logging and send what it left before the run's outcome is recorded."""
        try:
            spec = task_for_path(job.func_name)
        except Exception:  # an undecodable job: RQ fails it when it calls the task, as before
            spec = None
        capture_handler()
        run = RunIO(job_id, attempt, reporter=reporter, events=self.events, checkpoints=self.checkpoints,
                    log_level=spec.log_level if spec is not None else "INFO")  # fmt: skip
        perform = job.perform
        job.perform = lambda: run.call(perform)
        return JobContext(job_id=job_id, attempt=attempt, _report=run.progress, _io=run)
